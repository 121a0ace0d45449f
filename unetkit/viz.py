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
                 preds: Sequence[torch.Tensor], colors: Sequence[Color], gap: int = 4) -> np.ndarray:
    """Rows of ``image | truth overlay | prediction overlay`` as one uint8 RGB array."""
    rows = []
    for img, truth, pred in zip(images01, truths, preds):
        rgb = to_rgb8(img)
        sep = np.full((rgb.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([rgb, sep, overlay(rgb, truth, colors), sep, overlay(rgb, pred, colors)], 1))
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        r = np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        padded.append(r)
    return np.concatenate(padded, 0)[:-gap]
