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

from .blocks import DoubleConv
from .config import SKIP_MODES, UPSAMPLE_MODES


def exporting() -> bool:
    """True while tracing or exporting: sizes are symbolic, so alignment must not branch on them."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop the centre ``h x w`` window of ``x`` (``h, w`` no larger than ``x``'s)."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def match_skip(up: torch.Tensor, skip: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``up`` (the upsampled decoder map) and ``skip`` the same height and width.

    ``crop``: centre-crop the larger to the smaller (the 2015 paper). ``pool``: adaptive average pooling of
    the larger to the smaller. ``interpolate``: bilinear resize of ``up`` to the skip. ``pad``: zero-pad
    ``up`` to the skip (cropping it where it is larger). The last two keep the skip's full resolution.
    """
    if not exporting() and up.shape[-2:] == skip.shape[-2:]:
        return up, skip
    (hu, wu), (hs, ws) = up.shape[-2:], skip.shape[-2:]
    if mode == "interpolate":
        return F.interpolate(up, size=(hs, ws), mode="bilinear", align_corners=False), skip
    if mode == "pad":
        up = center_crop(up, min(hu, hs), min(wu, ws))
        dh, dw = hs - up.shape[-2], ws - up.shape[-1]
        return F.pad(up, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2]), skip
    h, w = min(hu, hs), min(wu, ws)
    if mode == "crop":
        return center_crop(up, h, w), center_crop(skip, h, w)
    if mode == "pool":
        return F.adaptive_avg_pool2d(up, (h, w)), F.adaptive_avg_pool2d(skip, (h, w))
    raise ValueError(f"skip must be one of {SKIP_MODES}, not {mode!r}")


def make_upsample(in_ch: int, out_ch: int, factor: int, mode: str) -> nn.Module:
    """An upsampling layer by ``factor`` that also maps ``in_ch`` to ``out_ch`` channels.

    ``transpose``: a ``factor x factor`` transposed conv of stride ``factor`` (the paper's up-conv).
    ``bilinear``: a 1x1 conv then bilinear upsampling (the two commute, and the conv is cheaper first).
    ``pixelshuffle``: a 1x1 conv to ``out_ch * factor**2`` channels then ``PixelShuffle``, initialised so
    all sub-pixels start equal (ICNR), which avoids checkerboard artefacts at the start of training.
    """
    if factor == 1:
        return nn.Conv2d(in_ch, out_ch, 1)
    if mode == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, factor, stride=factor)
    if mode == "bilinear":
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1),
                             nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False))
    if mode == "pixelshuffle":
        return nn.Sequential(ICNRConv(in_ch, out_ch, factor), nn.PixelShuffle(factor))
    raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, not {mode!r}")


class ICNRConv(nn.Conv2d):
    """1x1 conv feeding ``PixelShuffle(factor)``; ``reset_parameters`` gives every sub-pixel the same kernel."""

    def __init__(self, in_ch: int, out_ch: int, factor: int) -> None:
        self.factor = factor
        super().__init__(in_ch, out_ch * factor**2, 1)

    def reset_parameters(self) -> None:
        base = torch.empty(self.out_channels // self.factor**2, *self.weight.shape[1:])
        nn.init.kaiming_normal_(base, mode="fan_out", nonlinearity="relu")
        with torch.no_grad():
            self.weight.copy_(base.repeat_interleave(self.factor**2, dim=0))
            self.bias.zero_()


class UpBlock(nn.Module):
    """One decoder stage: upsample, match and concatenate the skip (if any), double conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, factor: int, upsample: str, skip: str,
                 padding: str, norm: str) -> None:
        super().__init__()
        if skip not in SKIP_MODES:
            raise ValueError(f"skip must be one of {SKIP_MODES}, not {skip!r}")
        self.skip_mode = skip
        self.up = make_upsample(in_ch, out_ch, factor, upsample)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch, padding, norm)

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
    """

    def __init__(self, encoder_channels: Sequence[int], reductions: Sequence[int],
                 decoder_channels: Sequence[int] | None = None, upsample: str = "transpose",
                 skip: str = "interpolate", padding: str = "same", norm: str = "batch") -> None:
        super().__init__()
        n_skip = len(encoder_channels) - 1
        n_extra = int(math.log2(reductions[0]))
        chans = list(decoder_channels or default_decoder_channels(encoder_channels, reductions))
        if len(chans) != n_skip + n_extra:
            raise ValueError(f"decoder_channels needs {n_skip + n_extra} entries for this encoder "
                             f"(stages at reductions {tuple(reductions)}), got {len(chans)}")
        self.blocks = nn.ModuleList()
        prev = encoder_channels[-1]
        for i, out_ch in enumerate(chans):
            if i < n_skip:
                skip_idx = n_skip - 1 - i
                skip_ch = encoder_channels[skip_idx]
                factor = reductions[skip_idx + 1] // reductions[skip_idx]
            else:
                skip_ch, factor = 0, 2
            self.blocks.append(UpBlock(prev, skip_ch, out_ch, factor, upsample, skip, padding, norm))
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
