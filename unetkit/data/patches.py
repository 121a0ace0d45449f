"""Patch-based training samples: fixed-size patches cut from images of any size, as nnU-Net trains.

:class:`PatchDataset` wraps a dataset of whole images. An epoch visits every image
``ceil(image area / patch area)`` times (at least once), so it covers the data's area about once. Each
visit cuts one patch of ``patch_size``: with probability ``foreground_fraction`` centred on a random
pixel of a randomly chosen foreground class present in that image (so small, rare structures are seen
often), otherwise at a uniformly random position. Where the image is smaller than the patch, it sits at a
random offset inside it and the rest is padded (image 0, mask ``ignore_index``, so padding never counts).
Augmentation runs on the patch, then the dataset's normalisation. Memory per step is therefore bounded by
the patch size, whatever the size of the largest image.

Randomness comes from torch's global generator, so seeded runs (and resumed runs) repeat exactly and
DataLoader workers get their own streams.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import SegmentationDataset
from .io import to_image_tensor, to_mask_tensor

#: At most this many pixel positions per class and image are kept for foreground sampling.
MAX_LOCATIONS = 10_000


class PatchDataset(Dataset):
    """Patches of ``patch_size`` from ``dataset`` (see the module docstring); ``len`` is one epoch.

    ``min_length``: an epoch has at least this many patches (the images are cycled), e.g. one batch.
    """

    def __init__(self, dataset: SegmentationDataset, patch_size: tuple[int, ...], foreground_fraction: float = 1 / 3,
                 seed: int = 0, min_length: int = 0) -> None:
        self.dataset = dataset
        self.patch_size = tuple(int(v) for v in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be two or three positive sizes, got {patch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction = float(foreground_fraction)
        self.seed = seed
        area = math.prod(self.patch_size)
        visits = [max(1, math.ceil(math.prod(size) / area))
                  for size in (dataset.image_size(i) for i in range(len(dataset)))]
        image_of = np.repeat(np.arange(len(dataset)), visits)
        if len(image_of) < min_length:  # e.g. a batch larger than the data's patches: cycle through them
            image_of = np.resize(image_of, min_length)
        self.image_of = image_of
        self._locations: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.image_of)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels

    def class_locations(self, index: int, mask: np.ndarray) -> dict[int, np.ndarray]:
        """Flat pixel indices of each foreground class in image ``index`` (a seeded subsample, cached)."""
        if index not in self._locations:
            flat = mask.ravel()
            rng = np.random.default_rng((self.seed, index))
            found: dict[int, np.ndarray] = {}
            for c in np.unique(flat).tolist():
                if c == 0 or c == self.dataset.ignore_index or c >= self.dataset.num_classes:
                    continue
                where = np.flatnonzero(flat == c)
                if len(where) > MAX_LOCATIONS:
                    where = np.sort(rng.choice(where, MAX_LOCATIONS, replace=False))
                found[int(c)] = where.astype(np.int64)
            self._locations[index] = found
        return self._locations[index]

    def _corner(self, index: int, mask: np.ndarray) -> tuple[int, ...]:
        """First corner of the patch in image (volume) coordinates (negative or past the edge where padded)."""
        centre = None
        if self.foreground_fraction > 0 and torch.rand(()).item() < self.foreground_fraction:
            locations = self.class_locations(index, mask)
            if locations:
                classes = sorted(locations)
                pick = locations[classes[int(torch.randint(len(classes), ()).item())]]
                flat = int(pick[int(torch.randint(len(pick), ()).item())])
                centre = np.unravel_index(flat, mask.shape)
        corner = []
        for axis, (size, p) in enumerate(zip(mask.shape, self.patch_size)):
            if size >= p:  # the patch lies inside the image on this axis
                if centre is None:
                    start = int(torch.randint(size - p + 1, ()).item())
                else:
                    start = min(max(int(centre[axis]) - p // 2, 0), size - p)
            else:  # the image lies inside the patch at a random offset
                start = -int(torch.randint(p - size + 1, ()).item())
            corner.append(start)
        return tuple(corner)

    def crop(self, image: np.ndarray, mask: np.ndarray, corner: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The ``patch_size`` window at ``corner`` of a stored ``(C, H, W)`` image and ``(H, W)`` mask (or
        ``(C, D, H, W)`` and ``(D, H, W)``), padded."""
        out_img = np.zeros((image.shape[0], *self.patch_size), dtype=image.dtype)
        out_mask = np.full(self.patch_size, self.dataset.ignore_index, dtype=np.int64)
        src = tuple(slice(max(c, 0), min(c + p, n)) for c, p, n in zip(corner, self.patch_size, mask.shape))
        dst = tuple(slice(s.start - c, s.stop - c) for s, c in zip(src, corner))
        out_img[(slice(None), *dst)] = image[(slice(None), *src)]
        out_mask[dst] = mask[src]
        return out_img, out_mask

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.image_of[k])
        image, mask = self.dataset.load_stored(index)
        corner = self._corner(index, mask)
        img, msk = self.crop(image, mask, corner)
        x, y = to_image_tensor(img), to_mask_tensor(msk)
        if self.dataset.transform is not None:
            x, y = self.dataset.transform(x, y)
        return self.dataset.normalize(x), y.as_subclass(torch.Tensor)
