"""Splitting a dataset's items (images, or whole cases of a volume folder) into training and validation."""

from __future__ import annotations

import numpy as np


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) index lists for ``n`` samples: a seeded permutation, both sorted.

    ``round(n * val_fraction)`` validation samples, at least 1 when ``val_fraction > 0`` and ``n >= 2``,
    and always at least one training sample.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def split_items(items: list, val: list | None, val_fraction: float, seed: int) -> tuple[list, list, str]:
    """``(train, val, source)``: an explicit ``val`` list as it is (source ``"folder"``), else a seeded
    :func:`split_indices` of ``items`` (``"fraction"``, or ``"none"`` when nothing is held out)."""
    if val is not None:
        return items, val, "folder"
    tr, va = split_indices(len(items), val_fraction, seed)
    held = [items[i] for i in va]
    return [items[i] for i in tr], held, "fraction" if held else "none"
