"""Pictures of segmentations: label maps in class colours, overlays, sample panels, PNG writers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

Color = tuple[int, int, int]


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def colorize(labels: np.ndarray | torch.Tensor, colors: Sequence[Color]) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 in the class colours; labels without a colour
    (e.g. ``ignore_index`` 255) are white."""
    lab = _numpy(labels).astype(np.int64)
    lut = np.full((max(256, int(lab.max(initial=0)) + 1), 3), 255, dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return lut[lab]


def to_rgb8(image01: np.ndarray | torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image in [0, 1] -> ``(H, W, 3)`` uint8: grey for 1 channel, RGB for 3, else channel 0."""
    img = _numpy(image01).astype(np.float32)
    img = img[:3] if img.shape[0] == 3 else np.repeat(img[:1], 3, axis=0)
    return np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(image01: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, colors: Sequence[Color],
            alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8: the ``[0, 1]`` image ``(C, H, W)`` with the class colours blended in at ``alpha``.

    Background (label 0) is left unblended so the image stays visible.
    """
    lab = _numpy(labels)
    rgb = to_rgb8(image01).astype(np.float32)
    col = colorize(lab, colors).astype(np.float32)
    out = np.where((lab != 0)[..., None], (1 - alpha) * rgb + alpha * col, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def sample_panel(images01: Sequence[torch.Tensor], truths: Sequence[torch.Tensor],
                 preds: Sequence[torch.Tensor], colors: Sequence[Color], gap: int = 4,
                 min_size: int = 0, max_size: int | None = None) -> np.ndarray:
    """Rows of ``image | truth overlay | prediction overlay`` as one uint8 RGB array.

    Tiles smaller than ``min_size`` pixels are enlarged by an integer factor, tiles larger than
    ``max_size`` shrunk by one (nearest neighbour both ways, so label edges stay crisp).
    """
    rows = []
    for img, truth, pred in zip(images01, truths, preds):
        side = max(img.shape[-2:])
        if max_size and side > max_size:  # shrink first: overlays of a huge image cost seconds
            s = -(-side // max_size)
            img, truth, pred = img[..., ::s, ::s], truth[..., ::s, ::s], pred[..., ::s, ::s]
            side = max(img.shape[-2:])
        tiles = [to_rgb8(img), overlay(img, truth, colors, 0.45), overlay(img, pred, colors, 0.45)]
        k = max(1, min_size // side)
        tiles = [t.repeat(k, 0).repeat(k, 1) for t in tiles]
        sep = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], 1))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, 0)[:-gap]


def save_mask_png(labels: np.ndarray, colors: Sequence[Color], path: str | Path) -> None:
    """Write ``labels`` as a palette PNG: pixel value = class index, palette entry = class colour."""
    from PIL import Image

    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("palette PNG masks hold labels 0..255 only")
    im = Image.fromarray(labels.astype(np.uint8))
    flat = [0] * 768
    for i, c in enumerate(list(colors)[:256]):
        flat[3 * i:3 * i + 3] = [int(v) for v in c]
    im.putpalette(flat)
    im.save(path, format="PNG")


def save_rgb_png(rgb: np.ndarray, path: str | Path | BinaryIO) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path, format="PNG")
