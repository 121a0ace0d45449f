"""ConvNeXt-Tiny encoder over torchvision's ``features`` Sequential (keys ``features.N.*``).

``features`` alternates downsampling layers (even indices: the 4x4/4 stem, then LayerNorm + 2x2/2 convs)
and block stages (odd indices); the stages are ``features`` 1, 3, 5, 7: channels (96, 192, 384, 768) at
reductions (4, 8, 16, 32). There is no /1 or /2 stage: the UNet decoder adds skip-less upsampling stages.
"""

from __future__ import annotations

from torchvision import models

from . import register_encoder
from .torchvision_backbones import FeaturesEncoder, load_weights, register_imagenet

register_imagenet("convnext_tiny", models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1)


class ConvNeXtEncoder(FeaturesEncoder):
    """torchvision's ConvNeXt features, returning the output of each of its four stages."""

    def __init__(self, arch: str = "convnext_tiny", in_channels: int = 3, depth: int | None = None) -> None:
        full = getattr(models, arch)(weights=None)
        widths = tuple(full.features[i][-1].block[0].out_channels for i in (1, 3, 5, 7))  # depthwise convs
        super().__init__(arch, full, (1, 3, 5, 7), widths, (4, 8, 16, 32), in_channels, depth)


@register_encoder("convnext_tiny")
def convnext_tiny(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> ConvNeXtEncoder:
    """ConvNeXt-Tiny: channels (96, 192, 384, 768); ``"imagenet"`` = ``ConvNeXt_Tiny_Weights.IMAGENET1K_V1``."""
    return load_weights(ConvNeXtEncoder("convnext_tiny", in_channels, depth), weights, "convnext_tiny")
