"""Sliding-window inference at any image size: Gaussian-blended tiles, optional flip TTA.

:func:`predict` takes a normalised image and a model (a PyTorch module or an :class:`OnnxModel`) and
returns class labels or probabilities at the image's full size. Large images are cut into overlapping
tiles whose predictions are blended with a Gaussian weight (centre pixels count most), the approach
of nnU-Net and MONAI: the tile borders, where a convolution sees zero padding instead of context, hardly
contribute, so the stitched result shows no seams. Memory stays bounded by ``batch_size`` tiles plus one
accumulator of the image's size. Most callers use :class:`unetkit.inference.Predictor`, which knows a
trained model's tile, padding and precision.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..models.outputs import logits_to_probs, probs_to_labels

#: Smallest blending weight relative to the tile centre, so every pixel has a usable weight.
MIN_WEIGHT = 1e-4
#: The flips averaged by ``tta=True``: none, horizontal, vertical, both (a group, so TTA is flip-equivariant).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class Model(Protocol):
    """What :func:`predict` needs: ``model(x) -> logits`` for ``x`` ``(N, C, H, W)``, and ``eval()``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...


def gaussian_weight(tile: tuple[int, ...], sigma_scale: float = 1 / 8, min_weight: float = MIN_WEIGHT,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Blending weights of a ``tile`` (``(h, w)`` or ``(d, h, w)``): a Gaussian with sigma ``tile * sigma_scale``
    per axis, peak 1.

    Clamped below at ``min_weight`` so border pixels covered by a single tile keep a finite weight.
    """
    axes = []
    for n in tile:
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(torch.exp(-0.5 * (pos / sigma) ** 2))
    w = axes[0]
    for k, axis in enumerate(axes[1:], start=1):  # the outer product, axis by axis
        w = w[..., None] * axis.view((1,) * k + (-1,))
    w = (w / w.max()).clamp_min(min_weight)
    return w.to(device=device, dtype=torch.float32)


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with about ``overlap`` overlap.

    Tiles are spread evenly from 0 to ``size - tile``: the last one ends exactly at the border (shifted
    inward rather than hanging over it), so every tile is full-size and nothing is padded. Inner starts
    are rounded down to multiples of ``align`` (the model's total stride), so a tile sees the same
    pooling grid as the whole image and its prediction matches the whole-image one away from its borders.
    """
    if tile >= size:
        return [0]
    align = align if 1 <= align < tile else 1
    step = max(1, int(tile * (1 - overlap)))
    span = size - tile
    n = math.ceil(span / step) + 1
    while True:  # rounding down can open a gap wider than a tile (at low overlap): add tiles until none
        exact = {round(i * span / (n - 1)) for i in range(n - 1)}
        starts = sorted({s - s % align for s in exact} | {span})
        if all(b - a <= tile for a, b in zip(starts, starts[1:])):
            return starts
        n += 1


def model_stride(model: Any) -> int | tuple[int, ...]:
    """The model's total downsampling factor (the encoder's deepest reduction; per axis for an anisotropic 3D
    network), 1 when unknown."""
    stride = getattr(model, "stride", None)
    if isinstance(stride, (int, tuple)):
        return stride
    encoder = getattr(model, "encoder", None)
    reductions = getattr(encoder, "axis_reductions", None) or getattr(encoder, "reductions", None)
    if not reductions:
        return 1
    last = reductions[-1]
    return tuple(int(v) for v in last) if isinstance(last, (tuple, list)) else int(last)


def model_spatial_dims(model: Any) -> int:
    """2 for an image model, 3 for a volume (3D) model (its config's ``spatial_dims``; 2 when unknown)."""
    config = getattr(model, "config", None)
    dims = config.get("spatial_dims") if isinstance(config, dict) else getattr(config, "spatial_dims", None)
    return int(dims or 2)


#: What ``tta`` may be: off (``False``), every spatial axis (``True``), or the axes to flip (``-1`` width,
#: ``-2`` height, ``-3`` depth), e.g. the ones the model was trained flipped along (``DataInfo.flip_axes``).
TTA = bool | Sequence[int]


def tta_flips(spatial_dims: int, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """The flips TTA averages: every combination of ``axes`` (default: every spatial axis), the identity
    first. A group, so TTA is equivariant to each of these flips; for 2D and every axis :data:`TTA_FLIPS`."""
    if axes is None:
        axes = [-(k + 1) for k in range(spatial_dims)]
    axes = sorted({int(a) for a in axes}, reverse=True)
    if any(not -spatial_dims <= a <= -1 for a in axes):
        raise ValueError(f"TTA flip axes must be in -1..-{spatial_dims} (width, height, depth), got {list(axes)}")
    return [tuple(sorted(a for i, a in enumerate(axes) if m >> i & 1)) for m in range(2 ** len(axes))]


def _flip_set(tta: TTA, spatial_dims: int) -> list[tuple[int, ...]]:
    """``tta`` as the list of flips to average (``[()]``: none)."""
    if isinstance(tta, bool) or tta is None:
        return tta_flips(spatial_dims) if tta else [()]
    return tta_flips(spatial_dims, tta)


def _device_of(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _forward_scores(model: Model, x: torch.Tensor, flips: list[tuple[int, ...]], probs: bool) -> torch.Tensor:
    """Probabilities (``probs``) or float logits for a batch, averaged over ``flips`` (:func:`tta_flips`)."""
    acc = None
    for dims in flips:
        xi = x.flip(dims) if dims else x
        out = _run(model, xi)
        p = logits_to_probs(out) if probs else out.float()
        p = p.flip(dims) if dims else p
        acc = p if acc is None else acc + p
    assert acc is not None
    return acc / len(flips) if len(flips) > 1 else acc


def _run(model: Model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (list, tuple)):  # deep supervision in training mode: the main output comes first
        out = out[0]
    if out.shape[2:] != x.shape[2:]:
        raise ValueError(f"the model maps a {tuple(x.shape[2:])} input to a {tuple(out.shape[2:])} output; "
                         "predict needs outputs at the input size (padding='same' models)")
    return out


def predict(model: Model, image: torch.Tensor, tile_size: int | tuple[int, ...] | None = None,
            overlap: float = 0.5, tta: TTA = False, output: str = "labels", batch_size: int = 4,
            align: int | tuple[int, ...] | None = None, pad_value: float | torch.Tensor | None = None,
            autocast_dtype: torch.dtype | None = None, spatial_dims: int | None = None,
            starts: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """Segment a normalised image ``(C, H, W)`` or batch ``(N, C, H, W)`` at its full size; for a 3D model a
    volume ``(C, D, H, W)`` or batch ``(N, C, D, H, W)``.

    * ``tile_size=None`` or an image no larger than the tile: one forward pass on the whole image.
      Otherwise sliding windows of ``tile_size`` (an int or one size per axis) overlapping by at least
      ``overlap`` (0 <= overlap < 1), run ``batch_size`` at a time and blended with :func:`gaussian_weight`.
      Tile starts are multiples of ``align`` (default: :func:`model_stride`) except the last, which ends at
      the border.
    * ``pad_value`` (a number or one value per channel, e.g. ``Normalization.pad_value()``): an image axis
      shorter than the tile is padded to the tile with it, as training pads its patches, and the result
      cropped back. Without it such an axis uses its own length, padded (with 0) only up to the model's
      stride, so even a 1x1 image goes through.
    * ``tta``: average the probabilities of the image and its flips: ``True`` along every spatial axis (2D:
      horizontal, vertical and both; 3D: the 8 combinations, as nnU-Net's mirroring), or a list of axes
      (``-1`` width, ``-2`` height, ``-3`` depth: every combination of those, e.g. ``[-1]`` for a model
      trained with horizontal flips only).
    * ``output``: ``"labels"`` (int64 ``(H, W)`` / ``(N, H, W)``: argmax, or ``p > 0.5`` for a one-channel
      model), ``"probs"`` (float32 ``(C, H, W)`` / ``(N, C, H, W)``: softmax, or sigmoid for one channel) or
      ``"logits"`` (float32, blended logits; what the evaluation's loss needs).
    * ``autocast_dtype`` (e.g. ``unetkit.device.resolve_amp("auto", device)``): the model's forward passes
      run under ``torch.autocast`` with it; its outputs are cast to float32 before softmax, blending and
      argmax, so only the network runs in reduced precision. ``None``: fp32. Ignored for an ONNX model.
    * ``spatial_dims``: 2 or 3 (default: the model's, :func:`model_spatial_dims`).
    * ``starts``: the tile starts per axis (default: :func:`tile_starts`); a band of a larger image passes the
      image's own tiling, so the band's scores equal the whole image's there.

    Runs under ``torch.inference_mode()`` on the model's device (CPU, CUDA, or ONNX Runtime for an
    :class:`OnnxModel`); the result is on ``image``'s device. A module in training mode is switched to
    eval for the call and back afterwards.
    """
    if output not in ("labels", "probs", "logits"):
        raise ValueError(f"output must be 'labels', 'probs' or 'logits', not {output!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sd = spatial_dims or model_spatial_dims(model)
    if image.ndim not in (sd + 1, sd + 2):
        axes = "H, W" if sd == 2 else "D, H, W"
        raise ValueError(f"image must be (C, {axes}) or (N, C, {axes}), got shape {tuple(image.shape)}")
    single = image.ndim == sd + 1
    batch = image[None] if single else image
    device = _device_of(model)
    stride = _per_axis(model_stride(model) if align is None else align, sd)
    size = tuple(batch.shape[2:])
    tile = None if tile_size is None else _per_axis(tile_size, sd)
    if tile is not None and pad_value is not None:
        want = tuple(max(n, t) for n, t in zip(size, tile))
    else:
        want = tuple(max(n, s) for n, s in zip(size, stride))
    if want != size:
        batch = _pad_to(batch, want, 0.0 if pad_value is None else pad_value)
    flips = _flip_set(tta, sd)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    net: Any = model
    if autocast_dtype is not None and isinstance(model, torch.nn.Module):
        net = _Autocast(model, device.type, autocast_dtype)
    try:
        with torch.inference_mode():
            scores = _predict_scores(net, batch.float(), tile, overlap, flips, batch_size, device, stride,
                                     output != "logits", starts)
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)
    scores = scores[(..., *(slice(0, n) for n in size))]
    result = probs_to_labels(scores) if output == "labels" else scores
    return result[0] if single else result


def _per_axis(value: int | tuple[int, ...] | list[int], dims: int) -> tuple[int, ...]:
    """``value`` repeated for every spatial axis, or its per-axis values (a 2D size given to a 3D model keeps
    the in-plane axes and adds the first)."""
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * dims
    if len(values) != dims:
        raise ValueError(f"expected {dims} sizes (one per spatial axis), got {list(values)}")
    return values


class _Autocast:
    """``model(x)`` under ``torch.autocast(device_type, dtype)``, the output cast back to float32."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def __call__(self, x: torch.Tensor) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(x)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return out.float()


def _pad_to(batch: torch.Tensor, size: tuple[int, ...], value: float | torch.Tensor) -> torch.Tensor:
    """``batch`` padded at the end of every spatial axis to ``size`` with ``value`` (a number or one per
    channel)."""
    n, c = batch.shape[:2]
    fill = torch.as_tensor(value, dtype=batch.dtype, device=batch.device).reshape(-1)
    out = fill.view(1, -1, *(1,) * len(size)).expand(n, c, *size).clone() if fill.numel() > 1 else \
        torch.full((n, c, *size), float(fill), dtype=batch.dtype, device=batch.device)
    out[(..., *(slice(0, k) for k in batch.shape[2:]))] = batch
    return out


def _predict_scores(model: Model, batch: torch.Tensor, tile_size: tuple[int, ...] | None, overlap: float,
                    flips: list[tuple[int, ...]], batch_size: int, device: torch.device, align: tuple[int, ...], probs: bool,
                    given_starts: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    n = batch.shape[0]
    size = tuple(batch.shape[2:])
    out_device = batch.device
    if tile_size is None:
        tile = size
    else:
        if min(tile_size) < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        tile = tuple(min(t, s) for t, s in zip(tile_size, size))
    if tile == size and given_starts is None:  # whole image: chunk the batch only
        parts = [_forward_scores(model, batch[i:i + batch_size].to(device), flips, probs).to(out_device)
                 for i in range(0, n, batch_size)]
        return torch.cat(parts)

    weight = gaussian_weight(tile, device=device)
    per_axis = ([list(a) for a in given_starts] if given_starts is not None else
                [tile_starts(s, t, overlap, a) for s, t, a in zip(size, tile, align)])
    starts = list(itertools.product(*per_axis))
    windows = [(i, start) for i in range(n) for start in starts]

    def region(start: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(s, s + t) for s, t in zip(start, tile))

    norm = torch.zeros(size, device=out_device)
    w_out = weight.to(out_device)
    for start in starts:
        norm[region(start)] += w_out
    acc: torch.Tensor | None = None
    for k in range(0, len(windows), batch_size):
        chunk = windows[k:k + batch_size]
        tiles = torch.stack([batch[(i, slice(None), *region(start))] for i, start in chunk]).to(device)
        p = (_forward_scores(model, tiles, flips, probs) * weight).to(out_device)
        if acc is None:
            acc = torch.zeros(n, p.shape[1], *size, device=out_device)
        for j, (i, start) in enumerate(chunk):
            acc[(i, slice(None), *region(start))] += p[j]
    assert acc is not None
    return acc.div_(norm)
