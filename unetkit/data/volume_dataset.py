"""The slice dataset of a volume folder: each sample is one 2D slice (with 2.5D context) of a case."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import SegmentationDataset
from .volume_geometry import stack_context
from .volume_scan import VolumeCase, VolumeScan, load_case, scan_volumes

#: Cases kept in memory at once when the folder is too large to keep all of them.
RECENT_CASES = 3


class VolumeSliceDataset(SegmentationDataset):
    """The slices of one split of a volume folder: ``dataset[i]`` is slice ``i`` as a 2D sample.

    Images are ``(2 * context + 1, H, W)`` float32 in stored units (HU for CT); masks ``(H, W)``.
    Extra attributes: ``cases`` (:class:`VolumeCase` list), ``case_of`` (case index per sample),
    ``slice_of`` (slice index per sample), ``settings``, ``modality``, ``spacing_reason``, ``pairing_rule``.
    """

    def __init__(self, scan: VolumeScan, split: str = "train", *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        cases = {"train": scan.train, "val": scan.val,
                 "all": sorted(scan.train + scan.val, key=lambda c: c.name)}[split]
        self.cases = cases
        self.settings = scan.settings
        self.spacing_reason = scan.spacing_reason
        self.pairing_rule = scan.pairing_rule
        self.modality = scan.modality
        self.root = scan.root
        self.cached = scan.cached
        self._recent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.case_of = [ci for ci, c in enumerate(cases) for _ in range(c.shape[0])]
        self.slice_of = [s for c in cases for s in range(c.shape[0])]
        names = [f"{c.name}:{s:04d}" for c in cases for s in range(c.shape[0])]
        super().__init__(
            name=str(scan.root), split=split, num_classes=scan.num_classes, in_channels=scan.settings.channels,
            class_names=scan.class_names, class_colors=scan.class_colors, ignore_index=scan.ignore_index,
            names=names, image_paths=[f"{c.rel_image}#{s}" for c in cases for s in range(c.shape[0])],
            mask_paths=[f"{c.rel_mask}#{s}" for c in cases for s in range(c.shape[0])], mean=mean, std=std)

    def _case_data(self, case: VolumeCase) -> tuple[np.ndarray, np.ndarray]:
        if case.image_data is not None and case.mask_data is not None:
            return case.image_data, case.mask_data
        if case.name not in self._recent:  # not kept in memory: read it, keep the last few read
            probe = VolumeCase(case.name, case.image, case.mask, case.rel_image, case.rel_mask)
            load_case(probe, self.settings)
            assert probe.image_data is not None and probe.mask_data is not None
            self._recent[case.name] = (probe.image_data, probe.mask_data)
            while len(self._recent) > RECENT_CASES:
                self._recent.pop(next(iter(self._recent)))
        return self._recent[case.name]

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[self.case_of[index]]
        image, mask = self._case_data(case)
        s = self.slice_of[index]
        return stack_context(image, s, self.settings.context), mask[s]

    def image_size(self, index: int) -> tuple[int, int]:
        case = self.cases[self.case_of[index]]
        return case.shape[1], case.shape[2]

    def dtype(self, index: int) -> str:
        return "float32"

    def case_slices(self, case_index: int) -> range:
        """Sample indices of case ``case_index`` (consecutive, in slice order)."""
        start = sum(c.shape[0] for c in self.cases[:case_index])
        return range(start, start + self.cases[case_index].shape[0])


def load_volumes(root: str | os.PathLike, **options: Any) -> tuple[VolumeSliceDataset, VolumeSliceDataset | None]:
    """``(train, val)`` slice datasets of a volume folder (``val`` is ``None`` when there is none)."""
    scan = scan_volumes(root, **options)
    train = VolumeSliceDataset(scan, "train")
    val = VolumeSliceDataset(scan, "val") if scan.val else None
    return train, val


class VolumeCaseDataset(VolumeSliceDataset):
    """The cases of one split of a volume folder as 3D samples, for a 3D UNet: ``dataset[i]`` is case ``i``.

    Images are ``(1, S, H, W)`` float32 in stored units on the slice grid (slices along the planned axis,
    resampled in-plane as for 2D training), masks ``(S, H, W)``; ``image_size`` is ``(S, H, W)``, so
    :class:`~unetkit.data.patches.PatchDataset` cuts 3D patches from it. ``case_of``/``slice_of`` map each
    sample to its case (itself) and ``slice_of`` to 0, so per-case metrics see whole cases.
    """

    spatial_dims = 3

    def __init__(self, scan: VolumeScan, split: str = "train") -> None:
        if scan.settings.context:
            raise ValueError(f"{scan.root}: a 3D network sees neighbouring slices itself; drop --context "
                             f"{scan.settings.context} (2.5D context is for 2D networks)")
        super().__init__(scan, split)
        self.case_of = list(range(len(self.cases)))
        self.slice_of = [0] * len(self.cases)
        self.names = [c.name for c in self.cases]
        self.image_paths = [c.rel_image for c in self.cases]
        self.mask_paths = [c.rel_mask for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self._case_data(self.cases[index])
        return image[None], mask

    def image_size(self, index: int) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(self.cases[index].shape)  # type: ignore[return-value]

    def normalize(self, image01: Any) -> Any:
        """The normalisation of a ``(C, S, H, W)`` case or patch."""
        return self.normalization.apply(image01.as_subclass(type(image01))[None])[0]

    def case_slices(self, case_index: int) -> range:
        return range(case_index, case_index + 1)


def as_cases(dataset: VolumeSliceDataset) -> VolumeCaseDataset:
    """The same split's cases as 3D samples, sharing the slice dataset's scan, normalisation and transform."""
    if dataset.settings.context:
        raise ValueError(f"{dataset.root}: a 3D network sees neighbouring slices itself; drop --context "
                         f"{dataset.settings.context} (2.5D context is for 2D networks)")
    cases = VolumeCaseDataset.__new__(VolumeCaseDataset)
    cases.__dict__.update(dataset.__dict__)
    cases.in_channels = 1
    cases.case_of = list(range(len(dataset.cases)))
    cases.slice_of = [0] * len(dataset.cases)
    cases.names = [c.name for c in dataset.cases]
    cases.image_paths = [c.rel_image for c in dataset.cases]
    cases.mask_paths = [c.rel_mask for c in dataset.cases]
    return cases
