"""Augmentation of 3D training patches ``(C, D, H, W)`` with their labels ``(D, H, W)``, on the CPU in torch.

The same :class:`~unetkit.data.transforms.AugmentConfig` as 2D training, applied to volumes: flips along
the in-plane axes (``hflip``: W, ``vflip``: H), one affine resampling for an in-plane rotation
(``rotate``, about the slice axis, where thick-slice data keeps its geometry) and a zoom (``scale``, all
axes), for a share ``affine_p`` of the patches, trilinear for the image and nearest for the labels
(outside: image 0 in stored units, labels ``ignore_index``); then intensity on the image alone: brightness
and contrast (``color_jitter``, never clamped: CT keeps its Hounsfield units), and with the same strength a
gamma on the patch's own range and Gaussian noise of ``color_jitter / 10`` of its std, as nnU-Net's
intensity augmentation. Random draws come from torch's global generator, so seeded runs repeat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .transforms import AugmentConfig


class Augment3D:
    """``(image, labels) -> (image, labels)`` for 3D patches, as the module docstring says."""

    def __init__(self, cfg: AugmentConfig, ignore_index: int = 255) -> None:
        self.cfg = cfg
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        for axis, p in ((-1, cfg.hflip), (-2, cfg.vflip)):
            if p and float(torch.rand(())) < p:
                image, labels = image.flip(axis), labels.flip(axis)
        angle, zoom = 0.0, 1.0
        if (cfg.rotate or cfg.scale is not None) and (cfg.affine_p >= 1.0 or float(torch.rand(())) < cfg.affine_p):
            angle = math.radians(float(torch.empty(()).uniform_(-cfg.rotate, cfg.rotate))) if cfg.rotate else 0.0
            zoom = float(torch.empty(()).uniform_(*cfg.scale)) if cfg.scale is not None else 1.0
        if angle or zoom != 1.0:
            image, labels = self._affine(image, labels, angle, zoom)
        if cfg.color_jitter:
            image = self._intensity(image, cfg.color_jitter)
        return image, labels

    def _affine(self, image: torch.Tensor, labels: torch.Tensor, angle: float, zoom: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One resampling: rotation about the D axis and zoom (sampling grid in normalised coordinates)."""
        c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
        # affine_grid's coordinates are (x=W, y=H, z=D); the D axis keeps its place (scaled by the zoom only).
        theta = torch.tensor([[[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0 / zoom, 0.0]]],
                             dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, *labels.shape], align_corners=False)
        warped = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)[0]
        lab = F.grid_sample(labels[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[0, 0]
        inside = F.grid_sample(torch.ones(1, 1, *labels.shape), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[0, 0] > 0
        lab = torch.where(inside, lab, torch.full_like(lab, self.ignore_index))
        return warped.to(image.dtype), lab.to(labels.dtype)

    @staticmethod
    def _intensity(image: torch.Tensor, strength: float) -> torch.Tensor:
        lo, hi = 1.0 - strength, 1.0 + strength
        b, c, g = (float(torch.empty(()).uniform_(lo, hi)) for _ in range(3))
        x = image * b
        mean = x.mean()
        x = (x - mean) * c + mean
        x_min, x_max = x.amin(), x.amax()
        span = (x_max - x_min).clamp_min(1e-6)
        x = ((x - x_min) / span).pow(g) * span + x_min  # gamma on the patch's own range
        return x + torch.randn_like(x) * (strength / 10) * x.std().clamp_min(1e-6)


def build_transforms_3d(cfg: AugmentConfig | None, ignore_index: int = 255) -> Augment3D | None:
    """The 3D training augmentation for ``cfg`` (``None``: none)."""
    if cfg is None:
        return None
    if not (cfg.hflip or cfg.vflip or cfg.rotate or cfg.scale is not None or cfg.color_jitter):
        return None
    return Augment3D(cfg, ignore_index)
