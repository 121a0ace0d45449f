"""Self-attention over spatial positions (SAGAN, Zhang et al. 2019), used at the UNet bottleneck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_nd


class SelfAttention(nn.Module):
    """``x + gamma * attention(x)`` with 1x1-conv queries/keys of ``C // 8`` channels and values of ``C``.

    ``gamma`` starts at 0, so the block begins as the identity and the network learns how much global
    context to mix in. Attention weights are ``softmax(q^T k)`` without the sqrt(d) scaling, as in SAGAN;
    the product runs through ``scaled_dot_product_attention`` (memory-efficient kernels where available).
    Positions are pixels in 2D and voxels in 3D (``spatial_dims``).
    """

    def __init__(self, channels: int, reduction: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        conv = conv_nd(spatial_dims)
        self.query = conv(channels, inner, 1)
        self.key = conv(channels, inner, 1)
        self.value = conv(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C/8)
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.gamma * out.squeeze(1).transpose(1, 2).reshape(x.shape)
