"""The encoder contract every backbone follows.

An encoder maps an image ``(N, C_in, H, W)`` to a list of feature maps, shallow to deep. It declares,
before any forward pass, how many channels each stage has (``out_channels``) and by how much each stage
has reduced the input's height and width (``reductions``, e.g. ``(1, 2, 4, 8, 16)`` for the plain UNet
encoder, ``(2, 4, 8, 16, 32)`` for a ResNet, ``(4, 8, 16, 32)`` for Swin). The decoder is built from
these two tuples alone, so any encoder that honours them plugs into :class:`unetkit.UNet`.

A 3D encoder (``spatial_dims = 3``, input ``(N, C_in, D, H, W)``) may reduce its axes differently (e.g. no
pooling along a thick-slice axis): ``reductions`` then holds each stage's largest reduction over the axes
(so code that pads inputs to a multiple of ``reductions[-1]`` stays right) and ``axis_reductions`` one
tuple per stage with the reduction of every axis, ``(D, H, W)`` order (see :func:`axis_reductions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Encoder(nn.Module):
    """Base class: subclasses set ``out_channels`` and ``reductions`` and implement ``forward``.

    Attributes:
        out_channels: channels of each returned stage, shallow to deep.
        reductions: spatial reduction factor of each stage relative to the input (powers of two,
            non-decreasing).
        mean, std: the input normalisation the encoder's pretrained weights expect (``None`` when it is
            trained from scratch); it travels with the model into checkpoints and the data pipeline.
        spatial_dims: 2 for images, 3 for volumes.
        axis_reductions: per stage, the reduction of each spatial axis (``None``: ``reductions`` on every
            axis).
        decoder: the decoder widths ``decoder_channels="auto"`` builds on it: ``"mirror"`` (each stage as
            wide as its skip) or ``"light"`` (see :func:`unetkit.models.decoder.light_decoder_channels`).
    """

    out_channels: tuple[int, ...]
    reductions: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    spatial_dims: int = 2
    axis_reductions: tuple[tuple[int, ...], ...] | None = None
    std: tuple[float, ...] | None = None
    decoder: str = "mirror"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_contract(encoder: Encoder) -> None:
    """Raise ``ValueError`` if an encoder's declared stages are inconsistent."""
    oc, red = tuple(encoder.out_channels), tuple(encoder.reductions)
    if len(oc) != len(red) or not oc:
        raise ValueError(f"{type(encoder).__name__}: out_channels {oc} and reductions {red} differ in length")
    if any(r2 < r1 for r1, r2 in zip(red, red[1:])):
        raise ValueError(f"{type(encoder).__name__}: reductions {red} must be non-decreasing")
    if any(r & (r - 1) for r in red):
        raise ValueError(f"{type(encoder).__name__}: reductions {red} must be powers of two")
    per_axis = axis_reductions(encoder)
    if len(per_axis) != len(red) or any(max(a) != r or any(v & (v - 1) for v in a) for a, r in zip(per_axis, red)):
        raise ValueError(f"{type(encoder).__name__}: axis_reductions {per_axis} must be powers of two whose "
                         f"largest per stage is reductions {red}")


def axis_reductions(encoder: Encoder) -> tuple[tuple[int, ...], ...]:
    """Each stage's reduction per spatial axis: ``encoder.axis_reductions``, or ``reductions`` on every axis."""
    if encoder.axis_reductions is not None:
        return tuple(tuple(int(v) for v in r) for r in encoder.axis_reductions)
    return tuple((int(r),) * encoder.spatial_dims for r in encoder.reductions)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained first-conv weight ``(O, 3, k, k)`` to ``in_channels`` without discarding it.

    One channel: the RGB kernels are summed, so a grey image gives the response a grey RGB image (the
    same value in all three channels) gave. More channels: the RGB kernels are repeated cyclically and
    scaled by ``3 / in_channels`` so activations keep their magnitude.
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = [weight[:, i % c] for i in range(in_channels)]
    return torch.stack(reps, dim=1) * (c / in_channels)


def freeze(module: nn.Module) -> None:
    """Stop gradients through ``module``'s parameters (BatchNorm eval mode is kept by ``UNet.train``)."""
    for p in module.parameters():
        p.requires_grad_(False)


def as_tuple(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)
