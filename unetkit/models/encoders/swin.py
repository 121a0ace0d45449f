"""Swin-T encoder over torchvision's ``features`` Sequential (keys ``features.N.*`` and ``norm.*``).

``features`` alternates patch embedding / patch merging (even indices) and transformer stages (odd
indices); the stages are ``features`` 1, 3, 5, 7: channels (96, 192, 384, 768) at reductions (4, 8, 16,
32). torchvision's Swin works channels-last, so each stage is permuted from NHWC to NCHW; the deepest
stage also goes through the pretrained final ``norm`` (LayerNorm), which tames its scale.

Any input size works: torchvision pads the token grid to whole windows and odd grids before patch
merging. The stem (a 4x4 conv with stride 4) floors: a 67x75 input gives 16x18 tokens.
"""

from __future__ import annotations

import torch
from torchvision import models

from . import register_encoder
from .torchvision_backbones import FeaturesEncoder, load_weights, register_imagenet

register_imagenet("swin_t", models.Swin_T_Weights.IMAGENET1K_V1)


class SwinEncoder(FeaturesEncoder):
    """torchvision's Swin Transformer features as NCHW maps, one per stage."""

    def __init__(self, arch: str = "swin_t", in_channels: int = 3, depth: int | None = None) -> None:
        full = getattr(models, arch)(weights=None)
        widths = tuple(full.features[i][-1].norm1.normalized_shape[0] for i in (1, 3, 5, 7))
        super().__init__(arch, full, (1, 3, 5, 7), widths, (4, 8, 16, 32), in_channels, depth)
        # The final LayerNorm belongs to the last stage only: keep it when that stage is kept.
        self.norm = full.norm if len(self.taps) == 4 else None

    def _stage_output(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        if stage == 3 and self.norm is not None:
            x = self.norm(x)
        return x.permute(0, 3, 1, 2)


@register_encoder("swin_t")
def swin_t(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> SwinEncoder:
    """Swin-T: channels (96, 192, 384, 768); ``"imagenet"`` = ``Swin_T_Weights.IMAGENET1K_V1``."""
    return load_weights(SwinEncoder("swin_t", in_channels, depth), weights, "swin_t")
