"""Pictures of segmentations: label maps in class colours, overlays, side-by-side sample panels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Color = tuple[int, int, int]


def colorize(labels: np.ndarray | torch.Tensor, colors: Sequence[Color],
             ignore_index: int | None = 255) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB in the class colours (ignored pixels white)."""
    lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = 255
    return lut[np.clip(lab, 0, 255).astype(np.uint8)]


def to_rgb8(image01: np.ndarray | torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image in [0, 1] (1, 3 or more channels) -> ``(H, W, 3)`` uint8 for display."""
    img = image01.detach().cpu().float().numpy() if isinstance(image01, torch.Tensor) else np.asarray(image01)
    img = img[:1] if img.shape[0] != 3 else img
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def overlay(image_rgb8: np.ndarray, labels: np.ndarray | torch.Tensor, colors: Sequence[Color],
            alpha: float = 0.45) -> np.ndarray:
    """Blend the class colours over the image; background (class 0) pixels stay the plain image."""
    lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    col = colorize(lab, colors).astype(np.float32)
    out = image_rgb8.astype(np.float32)
    fg = (lab != 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * col, out)
    return (out + 0.5).astype(np.uint8)


def sample_panel(images01: Sequence[torch.Tensor], truths: Sequence[torch.Tensor],
                 preds: Sequence[torch.Tensor], colors: Sequence[Color], gap: int = 4,
                 min_size: int = 0) -> np.ndarray:
    """Rows of ``image | truth overlay | prediction overlay`` as one uint8 RGB array.

    Tiles smaller than ``min_size`` pixels are enlarged by an integer factor (nearest neighbour, so
    label edges stay crisp).
    """
    rows = []
    for img, truth, pred in zip(images01, truths, preds):
        rgb = to_rgb8(img)
        k = max(1, min_size // max(rgb.shape[:2]))
        tiles = [rgb, overlay(rgb, truth, colors), overlay(rgb, pred, colors)]
        tiles = [t.repeat(k, 0).repeat(k, 1) for t in tiles]
        sep = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], 1))
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        r = np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        padded.append(r)
    return np.concatenate(padded, 0)[:-gap]
