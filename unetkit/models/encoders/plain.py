"""The from-scratch UNet encoder of Ronneberger et al. (2015): double convs separated by 2x2 max pools."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import DoubleConv, init_kaiming
from . import register_encoder
from .base import Encoder


class PlainEncoder(Encoder):
    """``depth`` stages of widths ``base_channels * 2**i``; stage ``i`` is reduced ``2**i`` times."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 5, padding: str = "same",
                 norm: str = "batch") -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth}")
        widths = [base_channels * 2**i for i in range(depth)]
        self.stages = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            block = DoubleConv(prev, w, padding, norm)
            self.stages.append(block if i == 0 else nn.Sequential(nn.MaxPool2d(2), block))
            prev = w
        self.out_channels = tuple(widths)
        self.reductions = tuple(2**i for i in range(depth))
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@register_encoder("plain")
def plain(in_channels: int = 3, weights: str | None = None, depth: int | None = None, base_channels: int = 64,
          padding: str = "same", norm: str = "batch") -> PlainEncoder:
    """The plain encoder; ``weights`` may be a local state dict of a plain encoder (no ImageNet weights)."""
    enc = PlainEncoder(in_channels, base_channels, depth or 5, padding, norm)
    if weights == "imagenet":
        raise ValueError("the plain encoder has no ImageNet weights; use encoder='vgg16' or a backbone")
    if weights is not None:
        from .weights import load_state_dict_file, strip_prefix

        enc.load_state_dict(strip_prefix(load_state_dict_file(weights), "encoder."))
    return enc
