"""VGG16 / VGG16-BN encoders in torchvision's layout, so torchvision's checkpoints load as they are.

The five stages are the five conv blocks of ``torchvision.models.vgg16().features``, split at its max-pool
layers (the pool that starts a block belongs to that block; the final pool is dropped). For a 256x256
input: 64x256x256, 128x128x128, 256x64x64, 512x32x32, 512x16x16.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from . import register_encoder
from .base import IMAGENET_MEAN, IMAGENET_STD, Encoder, adapt_input_conv
from .weights import load_state_dict_file, strip_prefix, torchvision_state_dict

_BUILDERS = {
    "vgg16": (models.vgg16, models.VGG16_Weights.IMAGENET1K_V1),
    "vgg16_bn": (models.vgg16_bn, models.VGG16_BN_Weights.IMAGENET1K_V1),
}


class VGGEncoder(Encoder):
    """``self.features`` is torchvision's ``features`` Sequential (same keys); forward slices it at the pools."""

    def __init__(self, arch: str = "vgg16", in_channels: int = 3, depth: int = 5) -> None:
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"VGG encoders have 5 stages; depth must be 1..5, not {depth}")
        features = _BUILDERS[arch][0](weights=None).features
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        # Stage k runs features[bounds[k]:bounds[k+1]]: the pool before block k, then block k's convs.
        self.bounds = [0, *pools[: depth]]
        self.features = features[: self.bounds[-1]]
        if in_channels != 3:
            old = self.features[0]
            self.features[0] = nn.Conv2d(in_channels, old.out_channels, 3, padding=1)
        self.out_channels = (64, 128, 256, 512, 512)[:depth]
        self.reductions = (1, 2, 4, 8, 16)[:depth]
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for start, end in zip(self.bounds, self.bounds[1:]):
            x = self.features[start:end](x)
            feats.append(x)
        return feats

    def load_torchvision_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a whole-model (``features.N.*``) or features-only (``N.*``) torchvision state dict.

        Classifier keys and the layers beyond ``depth`` are ignored; a first conv with other than 3 input
        channels gets the pretrained kernels adapted (see :func:`adapt_input_conv`), not dropped.
        """
        sd = strip_prefix(sd, "features.")
        own = self.features.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}
        if "0.weight" in sd:
            sd["0.weight"] = adapt_input_conv(sd["0.weight"], self.in_channels)
        missing = sorted(set(own) - set(sd))
        if missing:
            raise ValueError(f"VGG weights lack {len(missing)} keys, e.g. {missing[:3]}; is this a "
                             "torchvision vgg16 (or vgg16_bn) state dict?")
        self.features.load_state_dict(sd)


def _build(arch: str, in_channels: int, weights: str | None, depth: int | None) -> VGGEncoder:
    enc = VGGEncoder(arch, in_channels, depth or 5)
    if weights is not None:
        sd = torchvision_state_dict(_BUILDERS[arch][1]) if weights == "imagenet" else load_state_dict_file(weights)
        enc.load_torchvision_state_dict(sd)
        enc.mean, enc.std = IMAGENET_MEAN, IMAGENET_STD
    return enc


@register_encoder("vgg16")
def vgg16(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> VGGEncoder:
    """VGG16 (torchvision layout); ``weights="imagenet"`` uses ``VGG16_Weights.IMAGENET1K_V1``."""
    return _build("vgg16", in_channels, weights, depth)


@register_encoder("vgg16_bn")
def vgg16_bn(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> VGGEncoder:
    """VGG16 with BatchNorm (torchvision layout); ``weights="imagenet"`` uses ``VGG16_BN_Weights``."""
    return _build("vgg16_bn", in_channels, weights, depth)
