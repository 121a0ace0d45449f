"""``UNetConfig``: every option of the model in one dataclass, the single source of truth.

``UNet(config)`` and ``UNet(**kwargs)`` build from it, ``model.config`` is it (with ``depth``,
``base_channels`` and ``decoder_channels`` resolved), a checkpoint stores ``config.to_dict()`` once,
``TrainConfig.model`` holds one, and the command line's model flags (``train``, ``info``, ``bench``) are
generated from its fields: their help text and choices live in each field's metadata below. Adding a model
option means adding a field here and using it in :class:`unetkit.UNet`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fields import option

UPSAMPLE_MODES = ("transpose", "bilinear", "pixelshuffle")
SKIP_MODES = ("crop", "pool", "interpolate", "pad")
PADDINGS = ("same", "valid")
NORMS = ("batch", "instance", "none")
SPATIAL_DIMS = (2, 3)
ATTENTIONS = (None, "self")
#: The plain encoder's first width when none is given (the paper's 64..1024).
DEFAULT_BASE_CHANNELS = 64


@dataclass
class UNetConfig:
    """The architecture of a :class:`unetkit.UNet` (weights are not part of it).

    ``depth=None`` means all of the encoder's stages (5 for the plain encoder); ``base_channels=None``
    means 64. Both are resolved in ``model.config``; ``unetkit train`` plans them from the data.
    ``decoder_channels`` is resolved there too, to the widths built (``"auto"``, ``"mirror"``, ``"light"``
    and ``None`` become numbers), so a checkpoint rebuilds the same network whatever a later default is.
    """

    num_classes: int = option(2, "output channels (1 for a binary model read through a sigmoid)")
    in_channels: int = option(3, "image channels")
    encoder: str = option("plain", "plain, vgg16, vgg16_bn, resnet18/34/50, resnext50_32x4d, "
                                   "mobilenet_v3_large/small, efficientnet_b0..b4, swin_t, convnext_tiny or "
                                   "timm:<name>")
    encoder_weights: str | None = option(None, "None, imagenet (torchvision's weights) or a local "
                                               ".pth/.safetensors file")
    freeze_encoder: bool = option(False, "no gradients into the encoder (train the decoder only)")
    base_channels: int | None = option(None, "width of the plain encoder's first stage, doubling each stage "
                                             "(64 when not planned)")
    depth: int | None = option(None, "number of encoder stages (all of the encoder's when not planned)")
    decoder_channels: tuple[int, ...] | str | None = option(
        "auto", "decoder widths, coarse to fine: mirror (or none): each stage as wide as its skip; light: 16 x "
                "each stage's reduction, at most 256 and at most mirror (smp's 256, 128, 64, 32, 16); auto "
                "(default): light for vgg16/vgg16_bn, mirror for the other encoders; or the widths")
    upsample: str = option("transpose", "how the decoder upsamples: transposed conv; bilinear (trilinear in "
                                        "3D) interpolation after a 1x1 conv; or pixelshuffle (voxel shuffle in "
                                        "3D) after a 1x1 conv", UPSAMPLE_MODES)
    skip: str = option("interpolate", "how a skip and the upsampled map are matched at odd sizes", SKIP_MODES)
    padding: str = option("same", "same, or valid (unpadded convs, the 2015 paper; plain encoder only)",
                          PADDINGS)
    norm: str = option("batch", "normalisation layers (instance: InstanceNorm with affine weights, as nnU-Net "
                                "uses for small batches)", NORMS)
    spatial_dims: int = option(2, "2: images (N, C, H, W); 3: volumes (N, C, D, H, W), plain encoder only",
                               SPATIAL_DIMS)
    strides: tuple[tuple[int, ...], ...] | None = option(
        None, "per-stage pool strides, one entry per encoder stage, each one int per spatial axis (D H W in 3D) "
              "joined by x, e.g. 1x1x1 1x2x2 1x2x2 2x2x2; the first must be all 1; none: 2 on every axis "
              "(plain encoder only; unetkit.models.stages.plan_stages plans them from voxel spacing)")
    kernel_sizes: tuple[tuple[int, ...], ...] | None = option(
        None, "per-stage conv kernel sizes (odd), one entry per encoder stage, each one int per spatial axis "
              "joined by x, e.g. 1x3x3 1x3x3 3x3x3 3x3x3; the decoder stage at the same resolution uses the "
              "same; none: 3 on every axis (plain encoder only)")
    attention: str | None = option(None, "none, or self: self-attention at the bottleneck (default: none)",
                                   ATTENTIONS)
    deep_supervision: bool = option(False, "auxiliary outputs (and losses) on every decoder stage")
    multiscale_fusion: bool = option(False, "fuse every decoder stage's prediction into the output")

    def __post_init__(self) -> None:
        if isinstance(self.encoder_weights, Path):
            self.encoder_weights = str(self.encoder_weights)
        for name in ("attention", "encoder_weights"):  # "none" from a flag or YAML means None
            v = getattr(self, name)
            if isinstance(v, str) and v.lower() in ("none", "null", ""):
                setattr(self, name, None)
        dc = self.decoder_channels
        if isinstance(dc, (list, tuple)) and len(dc) == 1 and isinstance(dc[0], str):  # a word from a flag
            dc = dc[0]
        if isinstance(dc, str):
            dc = None if dc.lower() in ("none", "null", "") else dc.lower()
            if dc not in (None, "auto", "mirror", "light"):
                raise ValueError(f"decoder_channels must be auto, mirror, light or a list of widths, not {dc!r}")
        elif dc is not None:
            try:
                dc = tuple(int(c) for c in dc) or None
            except (TypeError, ValueError):
                raise ValueError(f"decoder_channels must be auto, mirror, light or a list of widths, "
                                 f"not {dc!r}") from None
            if dc is not None and min(dc) < 1:
                raise ValueError(f"decoder_channels must be positive widths, not {list(dc)}")
        self.decoder_channels = dc
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                shown = ", ".join("None" if c is None else str(c) for c in choices)
                raise ValueError(f"{f.name} must be one of {shown}, not {value!r}")
        for name, low in (("num_classes", 1), ("in_channels", 1), ("base_channels", 1), ("depth", 1)):
            v = getattr(self, name)
            if v is None and name in ("base_channels", "depth"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, not {v!r}")
        for name in ("freeze_encoder", "deep_supervision", "multiscale_fusion"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.padding == "valid" and self.encoder != "plain":
            raise ValueError(f"padding 'valid' needs encoder 'plain'; {self.encoder!r} uses padded convs")
        if isinstance(self.spatial_dims, bool) or self.spatial_dims not in SPATIAL_DIMS:
            raise ValueError(f"spatial_dims must be 2 or 3, not {self.spatial_dims!r}")
        if self.spatial_dims == 3 and self.encoder != "plain":
            raise ValueError(f"encoder {self.encoder!r} is 2D only; spatial_dims=3 needs encoder 'plain'")
        self.strides = _per_stage("strides", self.strides, self.spatial_dims)
        self.kernel_sizes = _per_stage("kernel_sizes", self.kernel_sizes, self.spatial_dims)
        for name in ("strides", "kernel_sizes"):
            stages = getattr(self, name)
            if stages is None:
                continue
            if self.encoder != "plain":
                raise ValueError(f"{name} needs encoder 'plain'; {self.encoder!r} has fixed stages (set {name} "
                                 f"to none)")
            if self.depth is not None and len(stages) != self.depth:
                raise ValueError(f"{name} has {len(stages)} stages but depth is {self.depth}; give one entry "
                                 f"per stage or leave depth unset")
        if self.strides is not None:
            if any(v not in (1, 2) for s in self.strides for v in s):
                raise ValueError(f"strides must be 1 or 2 on every axis, not {_show(self.strides)}")
            if any(v != 1 for v in self.strides[0]):
                raise ValueError(f"strides' first stage must be 1 on every axis (it is full resolution), not "
                                 f"{_show(self.strides[:1])}")
        if self.kernel_sizes is not None and any(v < 1 or v % 2 == 0 for k in self.kernel_sizes for v in k):
            raise ValueError(f"kernel_sizes must be odd and positive, not {_show(self.kernel_sizes)}")
        if self.strides is not None and self.kernel_sizes is not None \
                and len(self.strides) != len(self.kernel_sizes):
            raise ValueError(f"strides ({len(self.strides)} stages) and kernel_sizes ({len(self.kernel_sizes)}) "
                             f"need the same number of stages")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["decoder_channels"], tuple):
            d["decoder_channels"] = list(d["decoder_channels"])
        for name in ("strides", "kernel_sizes"):
            if d[name] is not None:
                d[name] = [list(s) for s in d[name]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model config") -> UNetConfig:
        """Build from a mapping; unknown keys are an error naming them and ``where``."""
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown model option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(field_names())}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)


def _show(stages: Sequence[Sequence[int]]) -> str:
    return " ".join("x".join(str(v) for v in s) for s in stages)


def parse_axes(value: Any) -> tuple[int, ...]:
    """One stage of ``strides``/``kernel_sizes``: ``"1x2x2"``, ``"1,2,2"``, ``[1, 2, 2]`` or ``2`` (every axis,
    returned as a 1-tuple and repeated by :func:`_per_stage`)."""
    if isinstance(value, str):
        parts = value.replace(",", "x").replace(" ", "").lower().split("x")
        return tuple(int(p) for p in parts)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return tuple(int(v) for v in value)


def _per_stage(name: str, value: Any, spatial_dims: int) -> tuple[tuple[int, ...], ...] | None:
    """``strides``/``kernel_sizes`` as one tuple of ``spatial_dims`` ints per stage (``None`` stays ``None``)."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str) \
            and value[0].lower() in ("none", "null"):
        return None
    if isinstance(value, str):
        value = value.split()
    try:
        stages = [parse_axes(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be one entry per stage, each an int per spatial axis (e.g. 1x2x2 or "
                         f"[1, 2, 2]), not {value!r}") from None
    stages = [s * spatial_dims if len(s) == 1 else s for s in stages]
    bad = [s for s in stages if len(s) != spatial_dims]
    if bad or not stages:
        raise ValueError(f"{name} needs one int per spatial axis ({spatial_dims} with spatial_dims="
                         f"{spatial_dims}) in each stage, not {value!r}")
    return tuple(stages)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(UNetConfig)]
