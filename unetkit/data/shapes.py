"""The ``shapes`` dataset: procedurally generated circles, squares and triangles on a noisy background.

Class ``c >= 1`` is always the same shape kind (``(c - 1) % 3``: circle, square, triangle) with its own
colour (RGB) or brightness (grayscale), so a small network can learn it in seconds. Shapes are randomly
placed, sized and rotated and may occlude each other; later shapes are on top. Fully determined by
``seed``; :func:`unetkit.data.get_datasets` generates the validation split with a different seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import ArrayDataset, JointTransformFn
from .classes import default_colors

_KINDS = ("circle", "square", "triangle")


def shapes_class_names(num_classes: int) -> list[str]:
    """``background, circle, square, triangle, circle2, square2, ...``."""
    names = ["background"]
    for c in range(1, num_classes):
        k, rep = (c - 1) % 3, (c - 1) // 3
        names.append(_KINDS[k] + (str(rep + 1) if rep else ""))
    return names


def _class_appearance(num_classes: int, in_channels: int) -> np.ndarray:
    """Base value per class in [0, 1], shape ``(num_classes, in_channels)``."""
    if in_channels == 3:
        cols = np.asarray(default_colors(num_classes), dtype=np.float32) / 255.0
        return 0.25 + 0.75 * cols  # keep every class brighter than the background
    levels = np.linspace(0.45, 1.0, max(num_classes - 1, 1), dtype=np.float32)
    out = np.zeros((num_classes, in_channels), dtype=np.float32)
    out[1:] = levels[: num_classes - 1, None]
    return out


def generate_shapes(
    num_samples: int, size: int = 128, num_classes: int = 4, in_channels: int = 3, seed: int = 0,
    max_shapes: int = 4, noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, C, size, size)`` and masks ``uint8 (N, size, size)``, deterministic in ``seed``."""
    if num_classes < 2 or num_classes > 255:
        raise ValueError(f"shapes needs 2 <= num_classes <= 255, got {num_classes}")
    if in_channels < 1 or size < 8 or num_samples < 1 or max_shapes < 1:
        raise ValueError("shapes needs in_channels >= 1, size >= 8, num_samples >= 1, max_shapes >= 1")
    rng = np.random.default_rng(seed)
    base = _class_appearance(num_classes, 3 if in_channels == 3 else 1)
    if in_channels not in (1, 3):
        base = np.repeat(base[:, :1], in_channels, axis=1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((num_samples, in_channels, size, size), dtype=np.uint8)
    masks = np.zeros((num_samples, size, size), dtype=np.uint8)
    for n in range(num_samples):
        img = np.empty((in_channels, size, size), dtype=np.float32)
        img[:] = rng.uniform(0.05, 0.3, size=(in_channels, 1, 1))
        mask = masks[n]
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            c = int(rng.integers(1, num_classes))
            r = rng.uniform(0.08, 0.2) * size
            cx, cy = rng.uniform(r, size - r, size=2)
            theta = rng.uniform(0, 2 * np.pi)
            dx, dy = xx - cx, yy - cy
            kind = (c - 1) % 3
            if kind == 0:
                inside = dx * dx + dy * dy <= r * r
            elif kind == 1:
                u = np.cos(theta) * dx + np.sin(theta) * dy
                v = -np.sin(theta) * dx + np.cos(theta) * dy
                h = r * 0.85
                inside = (np.abs(u) <= h) & (np.abs(v) <= h)
            else:
                inside = np.ones_like(dx, dtype=bool)
                for k in range(3):  # inside all three edges of an equilateral triangle
                    a = theta + 2 * np.pi * k / 3
                    inside &= np.cos(a) * dx + np.sin(a) * dy <= r * 0.5
            mask[inside] = c
            shade = base[c] * rng.uniform(0.85, 1.0)
            img[:, inside] = shade[:, None]
        img += rng.normal(0.0, noise, size=img.shape).astype(np.float32)
        images[n] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return images, masks


class ShapesDataset(ArrayDataset):
    """A generated shapes split (see module doc): ``num_samples`` images of ``size x size``."""

    def __init__(
        self,
        num_samples: int = 64,
        size: int = 128,
        num_classes: int = 4,
        in_channels: int = 3,
        seed: int = 0,
        *,
        split: str = "train",
        max_shapes: int = 4,
        noise: float = 0.05,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: JointTransformFn | None = None,
    ) -> None:
        images, masks = generate_shapes(num_samples, size, num_classes, in_channels, seed, max_shapes, noise)
        self.seed = seed
        names = [f"{split}_{i:04d}" for i in range(num_samples)]
        super().__init__(
            list(images), list(masks), name="shapes", split=split, num_classes=num_classes,
            in_channels=in_channels, class_names=shapes_class_names(num_classes),
            class_colors=default_colors(num_classes), ignore_index=255, names=names,
            image_paths=[f"<shapes>/images/{n}" for n in names], mask_paths=[f"<shapes>/masks/{n}" for n in names],
            mean=mean, std=std, transform=transform,
        )
