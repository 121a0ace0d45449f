"""A ``DataLoader`` with sensible defaults for segmentation datasets."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
    seed: int | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader: persistent workers when ``num_workers > 0``, pinned memory when CUDA is available.

    ``seed`` fixes the shuffling order (augmentation randomness in workers follows torch's per-worker
    seeding, which derives from the same generator).
    """
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=generator,
    )
