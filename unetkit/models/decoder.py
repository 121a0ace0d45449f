"""The UNet decoder: upsample, match the skip connection's size, concatenate, double conv.

Built from an encoder's ``out_channels`` and ``reductions`` alone. Encoders whose shallowest stage is
already reduced (ResNet's stride-2 stem, Swin's stride-4 patches) get extra skip-less upsampling stages
so the decoder always ends at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv, as_axes, compact, conv_nd, conv_transpose_nd, interp_mode
from .config import SKIP_MODES, UPSAMPLE_MODES


def exporting() -> bool:
    """True while tracing or exporting: sizes are symbolic, so alignment must not branch on them."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def center_crop(x: torch.Tensor, *size: int) -> torch.Tensor:
    """Crop the centre window of ``size`` (one entry per trailing axis, no larger than ``x``'s)."""
    n = len(size)
    index = [slice(None)] * (x.dim() - n)
    for have, want in zip(x.shape[-n:], size):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


def match_skip(up: torch.Tensor, skip: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``up`` (the upsampled decoder map) and ``skip`` the same spatial size (2D or 3D).

    ``crop``: centre-crop the larger to the smaller (the 2015 paper). ``pool``: adaptive average pooling of
    the larger to the smaller. ``interpolate``: bilinear (trilinear in 3D) resize of ``up`` to the skip.
    ``pad``: zero-pad ``up`` to the skip (cropping it where it is larger). The last two keep the skip's full
    resolution.
    """
    nd = skip.dim() - 2
    if not exporting() and up.shape[-nd:] == skip.shape[-nd:]:
        return up, skip
    su, ss = tuple(up.shape[-nd:]), tuple(skip.shape[-nd:])
    if mode == "interpolate":
        return F.interpolate(up, size=ss, mode=interp_mode(nd), align_corners=False), skip
    if mode == "pad":
        up = center_crop(up, *(min(a, b) for a, b in zip(su, ss)))
        pads: list[int] = []
        for have, want in zip(reversed(up.shape[-nd:]), reversed(ss)):  # F.pad: last axis first
            d = want - have
            pads += [d // 2, d - d // 2]
        return F.pad(up, pads), skip
    size = tuple(min(a, b) for a, b in zip(su, ss))
    if mode == "crop":
        return center_crop(up, *size), center_crop(skip, *size)
    if mode == "pool":
        pool = F.adaptive_avg_pool2d if nd == 2 else F.adaptive_avg_pool3d
        return pool(up, size), pool(skip, size)
    raise ValueError(f"skip must be one of {SKIP_MODES}, not {mode!r}")


def make_upsample(in_ch: int, out_ch: int, factor: int | Sequence[int], mode: str,
                  spatial_dims: int = 2) -> nn.Module:
    """An upsampling layer by ``factor`` (an int, or one per axis) that also maps ``in_ch`` to ``out_ch``.

    ``transpose``: a ``factor``-sized transposed conv of stride ``factor`` (the paper's up-conv).
    ``bilinear``: a 1x1 conv then bilinear (trilinear in 3D) upsampling (the two commute, and the conv is
    cheaper first). ``pixelshuffle``: a 1x1 conv to ``out_ch * prod(factor)`` channels then ``PixelShuffle``
    (:class:`VoxelShuffle` in 3D or for per-axis factors), initialised so all sub-pixels start equal
    (ICNR), which avoids checkerboard artefacts at the start of training.
    """
    f = compact(as_axes(factor, spatial_dims))
    if f == 1:
        return conv_nd(spatial_dims)(in_ch, out_ch, 1)
    if mode == "transpose":
        return conv_transpose_nd(spatial_dims)(in_ch, out_ch, f, stride=f)
    if mode == "bilinear":
        scale = f if isinstance(f, int) else tuple(float(v) for v in f)
        return nn.Sequential(conv_nd(spatial_dims)(in_ch, out_ch, 1),
                             nn.Upsample(scale_factor=scale, mode=interp_mode(spatial_dims), align_corners=False))
    if mode == "pixelshuffle":
        shuffle = nn.PixelShuffle(f) if spatial_dims == 2 and isinstance(f, int) else VoxelShuffle(f, spatial_dims)
        return nn.Sequential((ICNRConv if spatial_dims == 2 else ICNRConv3d)(in_ch, out_ch, f), shuffle)
    raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {mode!r}")


class VoxelShuffle(nn.Module):
    """``PixelShuffle`` for any dimensionality and per-axis factors: ``(N, C*prod(r), *S)`` to ``(N, C, *S*r)``.

    Channel ``c * prod(r) + i`` goes to sub-position ``i`` (row-major over the factors) of channel ``c``, the
    layout ``nn.PixelShuffle`` uses in 2D. Written with ``reshape``/``permute`` only, so it exports to ONNX
    (``nn.PixelShuffle`` has no 3D form).
    """

    def __init__(self, factor: int | Sequence[int], spatial_dims: int = 3) -> None:
        super().__init__()
        self.factor = as_axes(factor, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, nd = self.factor, len(self.factor)
        n, c = x.shape[0], x.shape[1] // math.prod(r)
        sizes = x.shape[2:]
        x = x.reshape(n, c, *r, *sizes)
        # (N, C, r_1..r_nd, S_1..S_nd) -> (N, C, S_1, r_1, ..., S_nd, r_nd)
        order = [0, 1] + [i for a in range(nd) for i in (2 + nd + a, 2 + a)]
        x = x.permute(*order)
        return x.reshape(n, c, *(s * f for s, f in zip(sizes, r)))

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class _ICNR:
    """1x1 conv feeding a pixel shuffle by ``factor``; ``reset_parameters`` gives every sub-pixel the same kernel."""

    factor: int | tuple[int, ...]
    subpixels: int
    weight: nn.Parameter
    bias: nn.Parameter
    out_channels: int

    def reset_parameters(self) -> None:
        base = torch.empty(self.out_channels // self.subpixels, *self.weight.shape[1:])
        nn.init.kaiming_normal_(base, mode="fan_out", nonlinearity="relu")
        with torch.no_grad():
            self.weight.copy_(base.repeat_interleave(self.subpixels, dim=0))
            self.bias.zero_()


class ICNRConv(_ICNR, nn.Conv2d):
    """The 2D ICNR 1x1 conv (see :class:`_ICNR`)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int | Sequence[int]) -> None:
        self.factor = factor
        self.subpixels = math.prod(as_axes(factor, 2))
        super().__init__(in_ch, out_ch * self.subpixels, 1)


class ICNRConv3d(_ICNR, nn.Conv3d):
    """The 3D ICNR 1x1 conv (see :class:`_ICNR`)."""

    def __init__(self, in_ch: int, out_ch: int, factor: int | Sequence[int]) -> None:
        self.factor = factor
        self.subpixels = math.prod(as_axes(factor, 3))
        super().__init__(in_ch, out_ch * self.subpixels, 1)


class UpBlock(nn.Module):
    """One decoder stage: upsample, match and concatenate the skip (if any), double conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, factor: int | Sequence[int], upsample: str,
                 skip: str, padding: str, norm: str, spatial_dims: int = 2, kernel_size: int | Sequence[int] = 3) -> None:
        super().__init__()
        if skip not in SKIP_MODES:
            raise ValueError(f"skip must be one of {SKIP_MODES}, not {skip!r}")
        self.skip_mode = skip
        self.up = make_upsample(in_ch, out_ch, factor, upsample, spatial_dims)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch, padding, norm, spatial_dims, kernel_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x, skip = match_skip(x, skip, self.skip_mode)
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


def default_decoder_channels(encoder_channels: Sequence[int], reductions: Sequence[int]) -> list[int]:
    """Mirror the encoder: each stage gets its skip's width; extra full-resolution stages halve it."""
    chans = list(reversed(encoder_channels[:-1]))
    extra = int(math.log2(reductions[0]))
    for _ in range(extra):
        chans.append(max(chans[-1] // 2 if chans else encoder_channels[0] // 2, 16))
    return chans


def stage_reductions(reductions: Sequence[int]) -> list[int]:
    """The reduction of each decoder stage's output, coarse to fine: the skips', then halving down to 1."""
    n_skip, n_extra = len(reductions) - 1, int(math.log2(reductions[0]))
    return ([reductions[n_skip - 1 - i] for i in range(n_skip)]
            + [reductions[0] // 2 ** (j + 1) for j in range(n_extra)])


#: The light decoder's width per unit of a stage's reduction, and its cap: 16 at full resolution, 32 at
#: 1/2, ... 256 from 1/16 on (segmentation_models.pytorch's Unet: 256, 128, 64, 32, 16).
LIGHT_WIDTH_PER_REDUCTION, LIGHT_MAX_WIDTH = 16, 256


def light_decoder_channels(encoder_channels: Sequence[int], reductions: Sequence[int]) -> list[int]:
    """Each stage ``16 x`` its output's reduction (at most 256), never wider than the mirrored width."""
    mirror = default_decoder_channels(encoder_channels, reductions)
    return [min(m, LIGHT_WIDTH_PER_REDUCTION * r, LIGHT_MAX_WIDTH)
            for m, r in zip(mirror, stage_reductions(reductions))]


#: The named decoder widths: ``mirror`` (:func:`default_decoder_channels`) and ``light``
#: (:func:`light_decoder_channels`); ``auto`` is the one the encoder declares (``Encoder.decoder``).
DECODER_WIDTHS = {"mirror": default_decoder_channels, "light": light_decoder_channels}


def resolve_decoder_channels(spec: Sequence[int] | str | None, encoder_channels: Sequence[int],
                             reductions: Sequence[int], auto: str = "mirror") -> tuple[int, ...]:
    """The widths ``UNetConfig.decoder_channels`` stands for: ``"mirror"`` and ``None`` (what configs of
    earlier versions hold) :func:`default_decoder_channels`, ``"light"`` :func:`light_decoder_channels`,
    ``"auto"`` the one named by ``auto`` (the encoder's choice); a sequence is itself."""
    name = auto if spec == "auto" else "mirror" if spec is None else spec
    if isinstance(name, str):
        if name not in DECODER_WIDTHS:
            raise ValueError(f"decoder_channels must be auto, mirror, light or a list of widths, not {spec!r}")
        return tuple(DECODER_WIDTHS[name](encoder_channels, reductions))
    return tuple(int(c) for c in name)


class UNetDecoder(nn.Module):
    """Decoder stages from the deepest encoder feature back to full resolution.

    ``forward(features)`` returns every stage's output, coarse to fine, so heads can read any of them.
    In 3D (``spatial_dims=3``) each stage upsamples by the per-axis ratio of its skip's and its input's
    ``axis_reductions`` (default: ``reductions`` on every axis) and uses its skip stage's ``kernel_sizes``
    (default 3), as nnU-Net's decoder mirrors its encoder.
    """

    def __init__(self, encoder_channels: Sequence[int], reductions: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, upsample: str = "transpose",
                 skip: str = "interpolate", padding: str = "same", norm: str = "batch", spatial_dims: int = 2,
                 axis_reductions: Sequence[Sequence[int]] | None = None,
                 kernel_sizes: Sequence[int | Sequence[int]] | None = None) -> None:
        super().__init__()
        n_skip = len(encoder_channels) - 1
        n_extra = int(math.log2(reductions[0]))
        chans = list(decoder_channels or default_decoder_channels(encoder_channels, reductions))
        if len(chans) != n_skip + n_extra:
            raise ValueError(f"decoder_channels needs {n_skip + n_extra} entries for this encoder "
                             f"(stages at reductions {tuple(reductions)}), got {len(chans)}")
        nd = spatial_dims
        axis_red = [as_axes(r, nd) for r in (axis_reductions or reductions)]
        self.blocks = nn.ModuleList()
        prev = encoder_channels[-1]
        for i, out_ch in enumerate(chans):
            kernel: int | tuple[int, ...] = 3
            if i < n_skip:
                skip_idx = n_skip - 1 - i
                skip_ch = encoder_channels[skip_idx]
                factor = compact([a // b for a, b in zip(axis_red[skip_idx + 1], axis_red[skip_idx])])
                if kernel_sizes is not None:
                    kernel = compact(as_axes(kernel_sizes[skip_idx], nd))
            else:
                skip_ch, factor = 0, 2
            self.blocks.append(UpBlock(prev, skip_ch, out_ch, factor, upsample, skip, padding, norm, nd, kernel))
            prev = out_ch
        self.n_skip = n_skip
        self.out_channels = tuple(chans)
        self.reductions = tuple(stage_reductions(reductions))  # of each stage's output

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = features[-1]
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x, features[self.n_skip - 1 - i] if i < self.n_skip else None)
            outs.append(x)
        return outs
