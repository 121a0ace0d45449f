"""MobileNetV3 encoders over torchvision's ``features`` Sequential (keys ``features.N.*``).

Stages are the output of the last layer at each stride (2, 4, 8, 16, 32). The /32 stage ends with the
final 1x1 expansion conv (960 / 576 channels), as in torchvision's LR-ASPP and timm's feature maps.

========================  =====================  =========================
encoder                   ``features`` taps      channels
========================  =====================  =========================
mobilenet_v3_large        1, 3, 6, 12, 16        16, 24, 40, 112, 960
mobilenet_v3_small        0, 1, 3, 8, 12         16, 16, 24, 48, 576
========================  =====================  =========================
"""

from __future__ import annotations

from torchvision import models

from . import register_encoder
from .torchvision_backbones import FeaturesEncoder, load_weights, register_imagenet

# arch -> (torchvision builder, feature taps, channels); every arch has reductions (2, 4, 8, 16, 32).
_ARCHS = {
    "mobilenet_v3_large": (models.mobilenet_v3_large, (1, 3, 6, 12, 16), (16, 24, 40, 112, 960)),
    "mobilenet_v3_small": (models.mobilenet_v3_small, (0, 1, 3, 8, 12), (16, 16, 24, 48, 576)),
}
register_imagenet("mobilenet_v3_large", models.MobileNet_V3_Large_Weights.IMAGENET1K_V2)
register_imagenet("mobilenet_v3_small", models.MobileNet_V3_Small_Weights.IMAGENET1K_V1)


class MobileNetV3Encoder(FeaturesEncoder):
    """torchvision's MobileNetV3 ``arch`` features, tapped at the last layer of each stride."""

    def __init__(self, arch: str = "mobilenet_v3_large", in_channels: int = 3, depth: int | None = None) -> None:
        builder, taps, channels = _ARCHS[arch]
        super().__init__(arch, builder(weights=None), taps, channels, (2, 4, 8, 16, 32), in_channels, depth)


@register_encoder("mobilenet_v3_large")
def mobilenet_v3_large(in_channels: int = 3, weights: str | None = None, depth: int | None = None
                       ) -> MobileNetV3Encoder:
    """MobileNetV3-Large; ``"imagenet"`` = ``MobileNet_V3_Large_Weights.IMAGENET1K_V2``."""
    return load_weights(MobileNetV3Encoder("mobilenet_v3_large", in_channels, depth), weights,
                        "mobilenet_v3_large")


@register_encoder("mobilenet_v3_small")
def mobilenet_v3_small(in_channels: int = 3, weights: str | None = None, depth: int | None = None
                       ) -> MobileNetV3Encoder:
    """MobileNetV3-Small; ``"imagenet"`` = ``MobileNet_V3_Small_Weights.IMAGENET1K_V1``."""
    return load_weights(MobileNetV3Encoder("mobilenet_v3_small", in_channels, depth), weights,
                        "mobilenet_v3_small")
