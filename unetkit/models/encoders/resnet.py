"""ResNet / ResNeXt encoders in torchvision's layout (``conv1``, ``bn1``, ``layer1``..``layer4``).

Five stages, the stride-2 stem included so the decoder gets a /2 skip:

====================  ======================  =====================
stage                 modules                 reduction
====================  ======================  =====================
0 (stem)              conv1, bn1, relu        2
1                     maxpool, layer1         4
2, 3, 4               layer2, layer3, layer4  8, 16, 32
====================  ======================  =====================

Channels: ``(64, 64, 128, 256, 512)`` for the basic-block nets (ResNet-18/34), ``(64, 256, 512, 1024,
2048)`` for the bottleneck nets (ResNet-50, ResNeXt-50). ``avgpool`` and ``fc`` are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from . import register_encoder
from .torchvision_backbones import TorchvisionEncoder, check_depth, load_weights, register_imagenet

_ARCHS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnext50_32x4d": models.resnext50_32x4d,
}
register_imagenet("resnet18", models.ResNet18_Weights.IMAGENET1K_V1)
register_imagenet("resnet34", models.ResNet34_Weights.IMAGENET1K_V1)
register_imagenet("resnet50", models.ResNet50_Weights.IMAGENET1K_V2)
register_imagenet("resnext50_32x4d", models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2)


class ResNetEncoder(TorchvisionEncoder):
    """torchvision's ResNet ``arch`` without its head, returning the stem and ``layer1..4`` outputs."""

    stem_conv = "conv1"

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, depth: int | None = None) -> None:
        super().__init__()
        self.arch = arch
        full = _ARCHS[arch](weights=None)
        depth = check_depth(depth, 5, arch)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        # Stage k >= 1 is ``layer{k}``; kept under torchvision's attribute names for its state dicts.
        self.layer_names = [f"layer{k}" for k in range(1, depth)]
        for layer_name in self.layer_names:
            setattr(self, layer_name, getattr(full, layer_name))
        expansion = full.fc.in_features // 512  # 1 for basic blocks, 4 for bottlenecks
        self.out_channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)[:depth]
        self.reductions = (2, 4, 8, 16, 32)[:depth]
        self._finish(full, in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        if self.layer_names:
            x = self.maxpool(x)
        for layer_name in self.layer_names:
            layer: nn.Module = getattr(self, layer_name)
            x = layer(x)
            feats.append(x)
        return feats


def _build(arch: str, in_channels: int, weights: str | Path | None, depth: int | None) -> ResNetEncoder:
    return load_weights(ResNetEncoder(arch, in_channels, depth), weights, arch)


@register_encoder("resnet18")
def resnet18(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> ResNetEncoder:
    """ResNet-18: channels (64, 64, 128, 256, 512); ``"imagenet"`` = ``ResNet18_Weights.IMAGENET1K_V1``."""
    return _build("resnet18", in_channels, weights, depth)


@register_encoder("resnet34")
def resnet34(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> ResNetEncoder:
    """ResNet-34: channels (64, 64, 128, 256, 512); ``"imagenet"`` = ``ResNet34_Weights.IMAGENET1K_V1``."""
    return _build("resnet34", in_channels, weights, depth)


@register_encoder("resnet50")
def resnet50(in_channels: int = 3, weights: str | None = None, depth: int | None = None) -> ResNetEncoder:
    """ResNet-50: channels (64, 256, 512, 1024, 2048); ``"imagenet"`` = ``ResNet50_Weights.IMAGENET1K_V2``."""
    return _build("resnet50", in_channels, weights, depth)


@register_encoder("resnext50_32x4d")
def resnext50_32x4d(in_channels: int = 3, weights: str | None = None, depth: int | None = None
                    ) -> ResNetEncoder:
    """ResNeXt-50 32x4d: channels (64, 256, 512, 1024, 2048); ``"imagenet"`` = ``IMAGENET1K_V2``."""
    return _build("resnext50_32x4d", in_channels, weights, depth)
