"""VGG16 / VGG16-BN encoders over torchvision's ``features`` Sequential (keys ``features.N.*``).

The five stages are the five conv blocks of ``torchvision.models.vgg16().features``, tapped at the ReLU
before each max pool (the pool that starts a block belongs to that block; the final pool is dropped). For
a 256x256 input: 64x256x256, 128x128x128, 256x64x64, 512x32x32, 512x16x16.

Weights go through the shared machinery (:func:`load_weights`): ``"imagenet"`` is torchvision's
``VGG16_Weights.IMAGENET1K_V1`` / ``VGG16_BN_Weights.IMAGENET1K_V1``; a local file may be the whole
model's state dict (``features.N.*``, classifier ignored) or the ``features`` Sequential's alone (``N.*``).
The first conv and ``mean``/``std`` follow ``in_channels`` as for every torchvision backbone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

from . import register_encoder
from .torchvision_backbones import FeaturesEncoder, load_weights, register_imagenet

_ARCHS: dict[str, Callable[..., models.VGG]] = {"vgg16": models.vgg16, "vgg16_bn": models.vgg16_bn}
register_imagenet("vgg16", models.VGG16_Weights.IMAGENET1K_V1)
register_imagenet("vgg16_bn", models.VGG16_BN_Weights.IMAGENET1K_V1)


def torchvision_vgg(arch: str) -> models.VGG:
    """torchvision's VGG ``arch`` whose ``features`` are real and initialised as torchvision does.

    The classifier (about 120M parameters, 90% of the model) is never used by the encoder, so the model is
    built on the ``meta`` device and only ``features`` is materialised, on the caller's default device
    (``meta`` again when the caller builds under ``torch.device("meta")``): building stays cheap.
    """
    with torch.device("meta"):
        full = _ARCHS[arch](weights=None)
    full.features.to_empty(device=torch.empty(0).device)
    with torch.no_grad():
        for m in full.features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init: He (fan-out) weights, zero bias
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running statistics reset
    return full


class VGGEncoder(FeaturesEncoder):
    """torchvision's VGG ``arch`` features, returning the output of each conv block (before its pool).

    Its default decoder is the light one (128, 64, 32, 16 at full depth): the mirror (512..64) makes the
    whole network 2.1x the FLOPs and was not more accurate at equal training time (docs/performance.md).
    """

    stem_conv = "features.0"
    decoder = "light"

    def __init__(self, arch: str = "vgg16", in_channels: int = 3, depth: int | None = None) -> None:
        full = torchvision_vgg(arch)
        pools = [i for i, m in enumerate(full.features) if isinstance(m, nn.MaxPool2d)]
        taps = [p - 1 for p in pools]  # the ReLU ending each block
        super().__init__(arch, full, taps, (64, 128, 256, 512, 512), (1, 2, 4, 8, 16), in_channels, depth)


@register_encoder("vgg16")
def vgg16(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> VGGEncoder:
    """VGG16: channels (64, 128, 256, 512, 512); ``"imagenet"`` = ``VGG16_Weights.IMAGENET1K_V1``."""
    return load_weights(VGGEncoder("vgg16", in_channels, depth), weights, "vgg16")


@register_encoder("vgg16_bn")
def vgg16_bn(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> VGGEncoder:
    """VGG16 with BatchNorm: channels (64, 128, 256, 512, 512); ``"imagenet"`` = ``VGG16_BN_Weights``."""
    return load_weights(VGGEncoder("vgg16_bn", in_channels, depth), weights, "vgg16_bn")
