"""Joint image/mask augmentation built on ``torchvision.transforms.v2``.

The image is wrapped as ``tv_tensors.Image`` and the mask as ``tv_tensors.Mask``, so every geometric
transform moves both with the same parameters and resamples the mask with nearest neighbour (labels stay
integers and aligned). Colour transforms touch the image only. Augmentation runs on [0, 1] images *before*
normalisation, so padding fills are "black" (0) for the image and ``ignore_index`` for the mask: padded
pixels never count in the loss or metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

_INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


@dataclass
class AugmentConfig:
    """Training augmentation settings (validation is never augmented).

    Attributes:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotate: maximum rotation in degrees (uniform in ``[-rotate, rotate]``); 0 disables.
        scale: zoom factor range for the random affine, e.g. ``(0.8, 1.2)``; ``None`` disables.
        translate: maximum shift as a fraction of width/height; 0 disables.
        affine_p: probability that a sample gets the random affine (rotation, zoom, shift) at all; nnU-Net
            rotates and scales a fifth of its patches.
        crop_size: random crop to this ``int`` or ``(height, width)`` after the geometric transforms
            (padded with fill when the image is smaller); ``None`` keeps the full image.
        elastic: probability of an elastic deformation (smooth random displacement field).
        elastic_magnitude: displacement standard deviation as a fraction of the image size.
        elastic_grid: control points per side of the displacement field (smaller = smoother).
        color_jitter: brightness and contrast strength (saturation too for RGB); 0 disables.
        hue: hue jitter for RGB images (0..0.5); ignored for other channel counts.
        interpolation: image resampling, ``"bilinear"`` or ``"nearest"`` (masks are always nearest).
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 15.0
    scale: tuple[float, float] | None = (0.8, 1.2)
    translate: float = 0.0
    affine_p: float = 1.0
    crop_size: int | tuple[int, int] | None = None
    elastic: float = 0.0
    elastic_magnitude: float = 0.02
    elastic_grid: int = 5
    color_jitter: float = 0.2
    hue: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for field in ("hflip", "vflip", "elastic", "affine_p"):
            p = getattr(self, field)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{field} is a probability in [0, 1], got {p}")
        if self.rotate < 0:
            raise ValueError(f"AugmentConfig.rotate must be >= 0 degrees, got {self.rotate}")
        if self.scale is not None:
            lo, hi = self.scale
            if not 0 < lo <= hi:
                raise ValueError(f"AugmentConfig.scale must be (low, high) with 0 < low <= high, got {self.scale}")
            self.scale = (float(lo), float(hi))
        if not 0.0 <= self.translate < 1.0:
            raise ValueError(f"AugmentConfig.translate must be in [0, 1), got {self.translate}")
        if self.color_jitter < 0 or not 0.0 <= self.hue <= 0.5:
            raise ValueError("AugmentConfig.color_jitter must be >= 0 and hue in [0, 0.5]")
        if self.elastic_magnitude < 0 or self.elastic_grid < 2:
            raise ValueError("AugmentConfig.elastic_magnitude must be >= 0 and elastic_grid >= 2")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"AugmentConfig.interpolation must be one of {sorted(_INTERPOLATIONS)}")
        if isinstance(self.crop_size, list):
            self.crop_size = tuple(self.crop_size)  # type: ignore[assignment]

    @classmethod
    def none(cls) -> AugmentConfig:
        """A config that changes nothing (every augmentation off)."""
        return cls(hflip=0.0, vflip=0.0, rotate=0.0, scale=None, translate=0.0, crop_size=None,
                   elastic=0.0, color_jitter=0.0, hue=0.0)


class RandomElastic(v2.Transform):
    """Elastic deformation from a coarse random displacement grid, upsampled bicubically.

    torchvision's ``ElasticTransform`` blurs a full-resolution noise field (about 100 ms per 256x256
    sample on one core); a coarse grid gives the same kind of smooth warp in about 2 ms. The warp itself
    is ``F.elastic``, so masks are resampled with nearest neighbour and filled with ``ignore_index``.
    """

    def __init__(self, magnitude: float, grid: int, fill_image: float, fill_mask: int,
                 interpolation: InterpolationMode) -> None:
        super().__init__()
        self.magnitude = float(magnitude)
        self.grid = int(grid)
        self.fill_image = float(fill_image)
        self.fill_mask = int(fill_mask)
        self.interpolation = interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        # Normalised grid coordinates span 2 units, so a displacement of m*size pixels is 2*m units.
        coarse = torch.randn(1, 2, self.grid, self.grid) * (2.0 * self.magnitude)
        disp = nnf.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        return {"displacement": disp.permute(0, 2, 3, 1).contiguous()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.elastic(inpt, params["displacement"], fill=self.fill_mask)
        return F.elastic(inpt, params["displacement"], interpolation=self.interpolation, fill=self.fill_image)


class JointTransform:
    """Applies a v2 pipeline to ``(image, mask)``: image ``(C, H, W)`` float in [0, 1], mask ``(H, W)`` int64.

    Returns plain tensors; the mask keeps dtype int64 and only ever gains ``ignore_index`` (padding).
    """

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


class IntensityJitter(v2.Transform):
    """Brightness and contrast jitter for images in their own units (HU, scanner values, unscaled floats).

    ``x * b``, then ``(x - mean) * c + mean`` (``mean`` over the whole image), with ``b`` and ``c`` drawn
    from ``[1 - strength, 1 + strength]``, the same for every channel (2.5D context channels are slices of
    one scan and must stay consistent). Unlike torchvision's ``ColorJitter`` nothing is clamped to [0, 1]:
    that would erase intensities stored in other ranges.
    """

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = float(strength)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = 1.0 - self.strength, 1.0 + self.strength
        b = float(torch.empty(1).uniform_(lo, hi))
        c = float(torch.empty(1).uniform_(lo, hi))
        x = image.as_subclass(torch.Tensor) * b
        m = x.mean()
        return tv_tensors.wrap((x - m) * c + m, like=image), mask  # type: ignore[arg-type]


def build_transforms(
    cfg: AugmentConfig | None, train: bool, *, in_channels: int = 3, ignore_index: int = 255,
    unit_range: bool = True,
) -> JointTransform | None:
    """The joint augmentation for ``cfg``; ``None`` for validation (``train=False``) or when nothing is on.

    Order: flips, one random affine (rotation + zoom + shift, a single resampling, with probability
    ``affine_p``), elastic warp,
    random crop, then brightness/contrast(/saturation/hue) on the image only. Fills: 0 for the image
    and ``ignore_index`` for the mask. ``unit_range=False`` (volumes in HU, unscaled float images): the
    intensity jitter is :class:`IntensityJitter`, which keeps values outside [0, 1].
    """
    if not train or cfg is None:
        return None
    interp = _INTERPOLATIONS[cfg.interpolation]
    fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: ignore_index}
    steps: list[v2.Transform] = []
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=cfg.vflip))
    if (cfg.rotate > 0 or cfg.scale is not None or cfg.translate > 0) and cfg.affine_p > 0:
        affine = v2.RandomAffine(
            degrees=cfg.rotate,
            translate=(cfg.translate, cfg.translate) if cfg.translate > 0 else None,
            scale=cfg.scale,
            interpolation=interp,
            fill=fill,
        )
        steps.append(affine if cfg.affine_p == 1.0 else v2.RandomApply([affine], p=cfg.affine_p))
    if cfg.elastic > 0 and cfg.elastic_magnitude > 0:
        steps.append(v2.RandomApply(
            [RandomElastic(cfg.elastic_magnitude, cfg.elastic_grid, 0.0, ignore_index, interp)], p=cfg.elastic))
    if cfg.crop_size is not None:
        steps.append(v2.RandomCrop(cfg.crop_size, pad_if_needed=True, fill=fill))
    if not unit_range:
        if cfg.color_jitter > 0:
            steps.append(IntensityJitter(cfg.color_jitter))
    elif cfg.color_jitter > 0 or (cfg.hue > 0 and in_channels == 3):
        cj = cfg.color_jitter
        if in_channels == 3:
            steps.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=cfg.hue))
        elif in_channels == 1:
            steps.append(v2.ColorJitter(brightness=cj, contrast=cj))
        elif cj > 0:
            # Contrast needs a grayscale conversion, defined only for 1 or 3 channels.
            steps.append(v2.ColorJitter(brightness=cj))
    if not steps:
        return None
    return JointTransform(v2.Compose(steps))
