"""``UNetConfig``: every option of the model in one dataclass, the single source of truth.

``UNet(config)`` and ``UNet(**kwargs)`` build from it, ``model.config`` is it (with ``depth``,
``base_channels`` and ``decoder_channels`` resolved), a checkpoint stores ``config.to_dict()`` once,
``TrainConfig.model`` holds one, and the command line's model flags (``train``, ``info``, ``bench``) are
generated from its fields: their help text and choices live in each field's metadata below. Adding a model
option means adding a field here and using it in :class:`unetkit.UNet`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fields import option

UPSAMPLE_MODES = ("transpose", "bilinear", "pixelshuffle")
SKIP_MODES = ("crop", "pool", "interpolate", "pad")
PADDINGS = ("same", "valid")
NORMS = ("batch", "none")
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
    upsample: str = option("transpose", "how the decoder upsamples", UPSAMPLE_MODES)
    skip: str = option("interpolate", "how a skip and the upsampled map are matched at odd sizes", SKIP_MODES)
    padding: str = option("same", "same, or valid (unpadded convs, the 2015 paper; plain encoder only)",
                          PADDINGS)
    norm: str = option("batch", "normalisation layers", NORMS)
    attention: str | None = option(None, "self: self-attention at the bottleneck", ATTENTIONS)
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["decoder_channels"], tuple):
            d["decoder_channels"] = list(d["decoder_channels"])
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


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(UNetConfig)]
