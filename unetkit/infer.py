"""Inference at any image size: whole-image or Gaussian-blended sliding windows, optional flip TTA.

:func:`predict` takes a normalised image and a model (a PyTorch module or an :class:`OnnxModel`) and
returns class labels or probabilities at the image's full size. Large images are cut into overlapping
tiles whose predictions are blended with a Gaussian weight (centre pixels count most), the approach
of nnU-Net and MONAI: the tile borders, where a convolution sees zero padding instead of context, hardly
contribute, so the stitched result shows no seams. Memory stays bounded by ``batch_size`` tiles plus one
accumulator of the image's size.

The rest of the module turns files into model inputs and predictions into pictures:
:func:`load_predictor`, :func:`image_to_tensor`, :func:`palette`, :func:`colorize`, :func:`overlay`,
:func:`save_mask_png`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .checkpoint import DataInfo, load_model
from .data.io import convert_channels, to_image_tensor
from .export.runtime import OnnxModel  # re-exported: predict takes one like a module

#: Smallest blending weight relative to the tile centre, so every pixel has a usable weight.
MIN_WEIGHT = 1e-4
#: The flips averaged by ``tta=True``: none, horizontal, vertical, both (a group, so TTA is flip-equivariant).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class Model(Protocol):
    """What :func:`predict` needs: ``model(x) -> logits`` for ``x`` ``(N, C, H, W)``, and ``eval()``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, DataInfo]:
    """``(model, data_info)`` from a checkpoint (``.pt`` or run directory) or an exported ``.onnx`` file."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        gpu = torch.device(device).type != "cpu"
        onnx_model = OnnxModel(p, providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else None)
        return onnx_model, onnx_model.data_info
    model, info, _ = load_model(p, device)
    return model, info


# --------------------------------------------------------------------------------------------- tiling
def gaussian_weight(tile: tuple[int, int], sigma_scale: float = 1 / 8, min_weight: float = MIN_WEIGHT,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``(h, w)`` blending weights: a Gaussian with sigma ``tile * sigma_scale`` per axis, peak 1.

    Clamped below at ``min_weight`` so border pixels covered by a single tile keep a finite weight.
    """
    axes = []
    for n in tile:
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(torch.exp(-0.5 * (pos / sigma) ** 2))
    w = axes[0][:, None] * axes[1][None, :]
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


def model_stride(model: Any) -> int:
    """The model's total downsampling factor (the encoder's deepest reduction), 1 when unknown."""
    stride = getattr(model, "stride", None)
    if isinstance(stride, int):
        return stride
    reductions = getattr(getattr(model, "encoder", None), "reductions", None)
    return int(reductions[-1]) if reductions else 1


def _device_of(model: Any) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _activate(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes, or sigmoid for a one-channel (binary) model."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _forward_probs(model: Model, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Probabilities for a batch, averaged over :data:`TTA_FLIPS` when ``tta``."""
    if not tta:
        return _activate(_run(model, x))
    acc = None
    for dims in TTA_FLIPS:
        xi = x.flip(dims) if dims else x
        p = _activate(_run(model, xi))
        p = p.flip(dims) if dims else p
        acc = p if acc is None else acc + p
    assert acc is not None
    return acc / len(TTA_FLIPS)


def _run(model: Model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (list, tuple)):  # deep supervision in training mode: the main output comes first
        out = out[0]
    if out.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the model maps a {tuple(x.shape[-2:])} input to a {tuple(out.shape[-2:])} output; "
                         "predict needs outputs at the input size (padding='same' models)")
    return out


def predict(model: Model, image: torch.Tensor, tile_size: int | tuple[int, int] | None = None,
            overlap: float = 0.5, tta: bool = False, output: str = "labels", batch_size: int = 4,
            align: int | None = None) -> torch.Tensor:
    """Segment a normalised image ``(C, H, W)`` or batch ``(N, C, H, W)`` at its full size.

    * ``tile_size=None`` or an image no larger than the tile: one forward pass on the whole image.
      Otherwise sliding windows of ``tile_size`` (an int or ``(h, w)``; an image axis shorter than the
      tile uses its own length, so nothing is padded) overlapping by at least ``overlap`` (0 <= overlap < 1),
      run ``batch_size`` at a time and blended with :func:`gaussian_weight`. Tile starts are multiples of
      ``align`` (default: :func:`model_stride`) except the last, which ends at the border.
    * ``tta``: average the probabilities of the image and its horizontal, vertical and double flips.
    * ``output``: ``"labels"`` (int64 ``(H, W)`` / ``(N, H, W)``: argmax, or ``p > 0.5`` for a one-channel
      model) or ``"probs"`` (float32 ``(C, H, W)`` / ``(N, C, H, W)``: softmax, or sigmoid for one channel).

    Runs under ``torch.inference_mode()`` on the model's device (CPU, CUDA, or ONNX Runtime for an
    :class:`OnnxModel`); the result is on ``image``'s device. A module in training mode is switched to
    eval for the call and back afterwards.
    """
    if output not in ("labels", "probs"):
        raise ValueError(f"output must be 'labels' or 'probs', not {output!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (N, C, H, W), got shape {tuple(image.shape)}")
    single = image.ndim == 3
    batch = image[None] if single else image
    device = _device_of(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            probs = _predict_probs(model, batch.float(), tile_size, overlap, tta, batch_size, device,
                                   model_stride(model) if align is None else align)
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)
    if output == "labels":
        result = (probs[:, 0] > 0.5).long() if probs.shape[1] == 1 else probs.argmax(1)
    else:
        result = probs
    return result[0] if single else result


def _predict_probs(model: Model, batch: torch.Tensor, tile_size: int | tuple[int, int] | None, overlap: float,
                   tta: bool, batch_size: int, device: torch.device, align: int) -> torch.Tensor:
    n, _, h, w = batch.shape
    out_device = batch.device
    if tile_size is None:
        th, tw = h, w
    else:
        th, tw = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
        if th < 1 or tw < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}")
        th, tw = min(th, h), min(tw, w)
    if (th, tw) == (h, w):  # whole image: chunk the batch only
        parts = [_forward_probs(model, batch[i:i + batch_size].to(device), tta).to(out_device)
                 for i in range(0, n, batch_size)]
        return torch.cat(parts)

    weight = gaussian_weight((th, tw), device=device)
    starts = [(y, x) for y in tile_starts(h, th, overlap, align) for x in tile_starts(w, tw, overlap, align)]
    windows = [(i, y, x) for i in range(n) for y, x in starts]
    norm = torch.zeros(h, w, device=out_device)
    w_out = weight.to(out_device)
    for y, x in starts:
        norm[y:y + th, x:x + tw] += w_out
    acc: torch.Tensor | None = None
    for k in range(0, len(windows), batch_size):
        chunk = windows[k:k + batch_size]
        tiles = torch.stack([batch[i, :, y:y + th, x:x + tw] for i, y, x in chunk]).to(device)
        p = (_forward_probs(model, tiles, tta) * weight).to(out_device)
        if acc is None:
            acc = torch.zeros(n, p.shape[1], h, w, device=out_device)
        for j, (i, y, x) in enumerate(chunk):
            acc[i, :, y:y + th, x:x + tw] += p[j]
    assert acc is not None
    return acc / norm


# --------------------------------------------------------------------------------------------- files
def image_to_tensor(image: np.ndarray, info: DataInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalised (C, H, W), [0, 1] (C, H, W))`` from a :func:`~unetkit.data.read_image` array ``(H, W, C)``.

    Channels are matched to ``info.in_channels`` the way the datasets do it, but only where that is
    meaningful: RGB -> grey (luma) and grey -> RGB (replicated); anything else raises ``ValueError``.
    Pixels are scaled to [0, 1] by bit depth (8-bit / 255, 16-bit / 65535, float as is), then normalised
    with the model's mean/std.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    c, want = image.shape[-1], info.in_channels
    if c != want and (c, want) not in ((3, 1), (1, 3)):
        raise ValueError(f"{c}-channel image, but the model takes {want} channel(s); only grey <-> RGB is "
                         "converted: save the images with the model's channel count")
    chw = np.ascontiguousarray(convert_channels(image, want).transpose(2, 0, 1))
    raw = to_image_tensor(chw)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
    return (raw - mean) / std, raw


def palette(info: DataInfo) -> list[tuple[int, int, int]]:
    """One RGB colour per label value: the class colours (a one-channel model's labels 0/1 get two)."""
    from .data.classes import default_colors

    n = max(info.num_classes, 2)
    colors = [tuple(int(v) for v in c) for c in info.class_colors[:n]]
    if len(colors) < n:
        colors = ([(0, 0, 0)] + colors)[:n] if info.num_classes == 1 else colors + default_colors(n)[len(colors):]
    return colors  # type: ignore[return-value]
