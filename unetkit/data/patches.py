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

    def __init__(self, dataset: SegmentationDataset, patch_size: tuple[int, int], foreground_fraction: float = 1 / 3,
                 seed: int = 0, min_length: int = 0) -> None:
        self.dataset = dataset
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction = float(foreground_fraction)
        self.seed = seed
        area = self.patch_size[0] * self.patch_size[1]
        visits = [max(1, math.ceil(h * w / area)) for h, w in (dataset.image_size(i) for i in range(len(dataset)))]
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

    def _corner(self, index: int, mask: np.ndarray) -> tuple[int, int]:
        """Top-left corner of the patch in image coordinates (negative or past the edge where padded)."""
        (h, w), (ph, pw) = mask.shape, self.patch_size
        centre = None
        if self.foreground_fraction > 0 and torch.rand(()).item() < self.foreground_fraction:
            locations = self.class_locations(index, mask)
            if locations:
                classes = sorted(locations)
                pick = locations[classes[int(torch.randint(len(classes), ()).item())]]
                flat = int(pick[int(torch.randint(len(pick), ()).item())])
                centre = divmod(flat, w)
        corner = []
        for axis, (size, p) in enumerate(((h, ph), (w, pw))):
            if size >= p:  # the patch lies inside the image on this axis
                if centre is None:
                    start = int(torch.randint(size - p + 1, ()).item())
                else:
                    start = min(max(centre[axis] - p // 2, 0), size - p)
            else:  # the image lies inside the patch at a random offset
                start = -int(torch.randint(p - size + 1, ()).item())
            corner.append(start)
        return corner[0], corner[1]

    def crop(self, image: np.ndarray, mask: np.ndarray, corner: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The ``patch_size`` window at ``corner`` of a stored ``(C, H, W)`` image and ``(H, W)`` mask, padded."""
        (ph, pw), (h, w) = self.patch_size, mask.shape
        y, x = corner
        out_img = np.zeros((image.shape[0], ph, pw), dtype=image.dtype)
        out_mask = np.full((ph, pw), self.dataset.ignore_index, dtype=np.int64)
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + ph, h), min(x + pw, w)
        out_img[:, y0 - y:y1 - y, x0 - x:x1 - x] = image[:, y0:y1, x0:x1]
        out_mask[y0 - y:y1 - y, x0 - x:x1 - x] = mask[y0:y1, x0:x1]
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
