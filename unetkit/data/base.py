"""The common dataset base: raw loading, joint transform, then normalisation; plus image statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .classes import Color
from .io import convert_channels, to_image_tensor, to_mask_tensor
from .preprocess import Normalization

JointTransformFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Base of every unetkit dataset: ``dataset[i] -> (image, mask)``.

    ``image`` is float32 ``(C, H, W)``: pixels scaled to [0, 1] by bit depth, then the optional joint
    ``transform`` (augmentation, on [0, 1] values so fill values mean "black"), then ``(x - mean) / std``.
    ``mask`` is int64 ``(H, W)`` with class indices and ``ignore_index`` for pixels to ignore.

    Attributes: ``name``, ``split``, ``num_classes``, ``in_channels``, ``class_names``, ``class_colors``
    (RGB tuples), ``ignore_index``, ``mean``, ``std``, ``names`` (sample ids), ``image_paths`` and
    ``mask_paths`` (strings, for reporting; pseudo-paths such as ``<ct-chest>/slice_002`` for built-ins),
    ``transform``.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        num_classes: int,
        in_channels: int,
        class_names: Sequence[str],
        class_colors: Sequence[Color],
        ignore_index: int,
        names: Sequence[str],
        image_paths: Sequence[str],
        mask_paths: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: JointTransformFn | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.class_names = list(class_names)
        self.class_colors = [tuple(int(v) for v in c) for c in class_colors]
        self.ignore_index = int(ignore_index)
        self.names = list(names)
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self.transform = transform
        if len(self.class_names) != self.num_classes or len(self.class_colors) != self.num_classes:
            raise ValueError("class_names and class_colors must have num_classes entries")
        if mean is None or std is None:
            # Placeholder until set_normalization (the data layer always sets real statistics).
            mean, std = (0.0,) * self.in_channels, (1.0,) * self.in_channels
        self.set_normalization(mean, std)

    # ----------------------------------------------------------------- subclass interface
    def __len__(self) -> int:
        return len(self.names)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored sample ``index``: image ``(C, H, W)`` (uint8/uint16/float32) and mask ``(H, W)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- public API
    def load_stored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as stored: image ``(C, H, W)`` (uint8/uint16/float32, ``in_channels``), mask ``(H, W)``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask = self._load(index)
        if image.shape[0] != self.in_channels:
            image = np.ascontiguousarray(
                convert_channels(np.moveaxis(image, 0, -1), self.in_channels).transpose(2, 0, 1))
        return image, mask

    def load_raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` before augmentation and normalisation: float image in [0, 1], int64 mask."""
        image, mask = self.load_stored(index)
        return to_image_tensor(image), to_mask_tensor(mask)

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of sample ``index`` (subclasses answer without decoding when they can)."""
        h, w = self._load(index)[1].shape[-2:]
        return int(h), int(w)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_raw(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return self.normalize(image), mask.as_subclass(torch.Tensor)

    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        """Apply the dataset's :class:`Normalization` to a [0, 1] image ``(C, H, W)``."""
        return self.normalization.apply(image01.as_subclass(torch.Tensor))

    def set_normalization(self, mean: Sequence[float] | Normalization, std: Sequence[float] | None = None,
                          clip: Sequence[Sequence[float]] | None = None) -> None:
        """Use a :class:`Normalization`, or an optional per-channel ``clip`` then ``(x - mean) / std``
        (``x`` in [0, 1]); one value is broadcast to all channels."""
        if isinstance(mean, Normalization):
            norm = mean
        else:
            if std is None:
                raise ValueError("pass std together with mean")
            norm = Normalization(tuple(mean), tuple(std), None if clip is None else tuple(map(tuple, clip)))
        self.normalization = norm.broadcast(self.in_channels)
        self.mean, self.std = self.normalization.mean, self.normalization.std

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised ``(C, H, W)`` or ``(N, C, H, W)`` image back in [0, 1] for display (over its clip window)."""
        return self.normalization.display(image)

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class over all (un-augmented) masks, ``int64[num_classes]`` (ignore pixels skipped)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for i in range(len(self)):
            m = self._load(i)[1].ravel().astype(np.int64)
            m = m[(m != self.ignore_index) & (m < self.num_classes)]
            counts += np.bincount(m, minlength=self.num_classes)
        return counts

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
                f"num_classes={self.num_classes}, in_channels={self.in_channels})")


class ArrayDataset(SegmentationDataset):
    """A dataset held in memory: lists of ``(C, H, W)`` images and ``(H, W)`` masks (used by built-ins)."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], **kwargs: object) -> None:
        if len(images) != len(masks):
            raise ValueError("images and masks must have the same length")
        self._images = list(images)
        self._masks = list(masks)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._images[index], self._masks[index]


def describe_split(train: SegmentationDataset, val: SegmentationDataset | None) -> str:
    """``26 train / 8 val images``, or for volumes ``3 train / 1 val cases (26 / 8 slices)``."""
    n_val = len(val) if val is not None else 0
    cases = getattr(train, "cases", None)
    if cases is not None:
        v_cases = len(getattr(val, "cases", [])) if val is not None else 0
        if getattr(train, "spatial_dims", 2) == 3:  # the samples are the cases themselves
            return f"{len(cases)} train / {v_cases} val cases (whole volumes)"
        return f"{len(cases)} train / {v_cases} val cases ({len(train)} / {n_val} slices)"
    return f"{len(train)} train / {n_val} val images"


def compute_stats(
    dataset: SegmentationDataset, max_samples: int | None = 512
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the dataset's un-augmented images in [0, 1].

    Used to normalise when the encoder is not pretrained. Exact over all pixels of up to ``max_samples``
    images (evenly spaced indices when the dataset is larger, so it stays cheap and deterministic).
    A channel with zero variance gets std 1.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    if max_samples is not None and n > max_samples:
        indices = np.linspace(0, n - 1, max_samples).round().astype(int).tolist()
    else:
        indices = list(range(n))
    s = torch.zeros(dataset.in_channels, dtype=torch.float64)
    s2 = torch.zeros(dataset.in_channels, dtype=torch.float64)
    count = 0
    for i in indices:
        img = dataset.load_raw(i)[0].to(torch.float64).flatten(1)
        s += img.sum(1)
        s2 += (img * img).sum(1)
        count += img.shape[1]
    mean = s / count
    var = (s2 / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
