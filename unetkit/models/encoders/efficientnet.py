"""EfficientNet-B0..B4 encoders over torchvision's ``features`` Sequential (keys ``features.N.*``).

Stages are the output of the last MBConv stage at each stride: ``features`` 1, 2, 3, 5, 7 at reductions
2, 4, 8, 16, 32. The 1x1 head conv (``features.8``, 1280..1792 channels) exists only to feed the
classifier, so it is dropped, as timm's feature maps do: the /32 stage is the 320..448-channel MBConv.

=================  ======================================
encoder            channels
=================  ======================================
efficientnet_b0    16, 24, 40, 112, 320
efficientnet_b1    16, 24, 40, 112, 320
efficientnet_b2    16, 24, 48, 120, 352
efficientnet_b3    24, 32, 48, 136, 384
efficientnet_b4    24, 32, 56, 160, 448
=================  ======================================
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision import models

from . import register_encoder
from .torchvision_backbones import FeaturesEncoder, load_weights, register_imagenet

_TAPS = (1, 2, 3, 5, 7)
_REDUCTIONS = (2, 4, 8, 16, 32)
# arch -> (torchvision builder, ImageNet weights, stage channels)
_ARCHS: dict[str, tuple[Callable[..., models.EfficientNet], models.WeightsEnum, tuple[int, ...]]] = {
    "efficientnet_b0": (models.efficientnet_b0, models.EfficientNet_B0_Weights.IMAGENET1K_V1,
                        (16, 24, 40, 112, 320)),
    "efficientnet_b1": (models.efficientnet_b1, models.EfficientNet_B1_Weights.IMAGENET1K_V1,
                        (16, 24, 40, 112, 320)),
    "efficientnet_b2": (models.efficientnet_b2, models.EfficientNet_B2_Weights.IMAGENET1K_V1,
                        (16, 24, 48, 120, 352)),
    "efficientnet_b3": (models.efficientnet_b3, models.EfficientNet_B3_Weights.IMAGENET1K_V1,
                        (24, 32, 48, 136, 384)),
    "efficientnet_b4": (models.efficientnet_b4, models.EfficientNet_B4_Weights.IMAGENET1K_V1,
                        (24, 32, 56, 160, 448)),
}


class EfficientNetEncoder(FeaturesEncoder):
    """torchvision's EfficientNet ``arch`` features without the head conv, tapped at each stride."""

    def __init__(self, arch: str = "efficientnet_b0", in_channels: int = 3, depth: int | None = None) -> None:
        builder, _, channels = _ARCHS[arch]
        super().__init__(arch, builder(weights=None), _TAPS, channels, _REDUCTIONS, in_channels, depth)


def _register(arch: str) -> None:
    register_imagenet(arch, _ARCHS[arch][1])

    def build(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> EfficientNetEncoder:
        return load_weights(EfficientNetEncoder(arch, in_channels, depth), weights, arch)

    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (f"EfficientNet-{arch[-2:].upper()}: channels {_ARCHS[arch][2]}; ``\"imagenet\"`` = "
                     f"``{_ARCHS[arch][1]}``.")
    register_encoder(arch)(build)


for _arch in _ARCHS:
    _register(_arch)
