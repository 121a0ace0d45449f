"""The from-scratch UNet encoder of Ronneberger et al. (2015): double convs separated by max pools.

In 2D or 3D (``spatial_dims``), with the paper's isotropic 2x pools and 3x3 convs by default, or per-stage
pool strides and kernel sizes (anisotropic, e.g. ``(1, 2, 2)`` pools and ``(1, 3, 3)`` kernels on thick
slices, see :func:`unetkit.models.stages.plan_stages`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..blocks import DoubleConv, MaxPool, as_axes, compact, init_kaiming
from . import register_encoder
from .base import Encoder

Stages = Sequence[int | Sequence[int]] | None


class PlainEncoder(Encoder):
    """``depth`` stages of widths ``base_channels * 2**i``; stage ``i > 0`` starts with a max pool.

    ``strides[i]`` is stage ``i``'s pool stride per axis (``strides[0]`` must be 1: the first stage is at
    full resolution), ``kernel_sizes[i]`` its convs' kernel; ``None`` means 2 and 3 on every axis.
    ``reductions`` holds each stage's largest per-axis reduction (powers of two, as the encoder contract
    asks); ``axis_reductions`` holds the reduction of every axis.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 5, padding: str = "same",
                 norm: str = "batch", spatial_dims: int = 2, strides: Stages = None,
                 kernel_sizes: Stages = None) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, not {depth}")
        nd = spatial_dims
        strides_ = [as_axes(s, nd) for s in strides] if strides is not None else \
            [(1,) * nd] + [(2,) * nd] * (depth - 1)
        kernels = [as_axes(k, nd) for k in kernel_sizes] if kernel_sizes is not None else [(3,) * nd] * depth
        if len(strides_) != depth or len(kernels) != depth:
            raise ValueError(f"strides and kernel_sizes need one entry per stage (depth {depth}), got "
                             f"{len(strides_)} and {len(kernels)}")
        if any(s != 1 for s in strides_[0]):
            raise ValueError(f"strides[0] must be 1 on every axis (the first stage is full resolution), "
                             f"not {list(strides_[0])}")
        widths = [base_channels * 2**i for i in range(depth)]
        self.stages = nn.ModuleList()
        prev = in_channels
        axis_red = [(1,) * nd]
        for i, w in enumerate(widths):
            block = DoubleConv(prev, w, padding, norm, nd, compact(kernels[i]))
            if i == 0:
                self.stages.append(block)
            else:
                s = compact(strides_[i])
                self.stages.append(nn.Sequential(MaxPool(s, nd) if s != 1 else nn.Identity(), block))
                axis_red.append(tuple(r * t for r, t in zip(axis_red[-1], strides_[i])))
            prev = w
        self.spatial_dims = nd
        self.kernel_sizes = tuple(kernels)
        self.out_channels = tuple(widths)
        self.axis_reductions = tuple(axis_red)
        self.reductions = tuple(max(r) for r in axis_red)
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@register_encoder("plain")
def plain(in_channels: int = 3, weights: str | None = None, depth: int | None = None, base_channels: int = 64,
          padding: str = "same", norm: str = "batch", spatial_dims: int = 2, strides: Stages = None,
          kernel_sizes: Stages = None) -> PlainEncoder:
    """The plain encoder; ``weights`` may be a local state dict of a plain encoder (no ImageNet weights)."""
    if depth is None:
        depth = len(strides) if strides is not None else len(kernel_sizes) if kernel_sizes is not None else 5
    enc = PlainEncoder(in_channels, base_channels, depth, padding, norm, spatial_dims, strides, kernel_sizes)
    if weights == "imagenet":
        raise ValueError("the plain encoder has no ImageNet weights; use encoder='vgg16' or a backbone")
    if weights is not None:
        from .weights import load_state_dict_file, strip_prefix

        enc.load_state_dict(strip_prefix(load_state_dict_file(weights), "encoder."))
    return enc
