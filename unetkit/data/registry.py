"""Selecting a dataset by name (``ct-chest``, ``shapes``) or folder path, with normalisation and augmentation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .base import SegmentationDataset, compute_stats
from .ct_chest import CTChestDataset
from .errors import DatasetError
from .folder import load_folder
from .shapes import ShapesDataset
from .transforms import AugmentConfig, build_transforms
from .volumes import is_volume_folder, load_volumes

#: Built-in dataset names; ``ct-chest`` is the default.
BUILTIN_DATASETS: tuple[str, ...] = ("ct-chest", "shapes")
DEFAULT_DATASET = "ct-chest"


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_datasets` besides folder paths."""
    return list(BUILTIN_DATASETS)


def _builtin(name: str, *, seed: int, num_classes: int | None, in_channels: int | None,
             ignore_index: int, options: dict) -> tuple[SegmentationDataset, SegmentationDataset]:
    if ignore_index != 255:
        raise DatasetError(f"{name}: built-in datasets use ignore_index 255; drop --ignore-index {ignore_index}")
    if name == "ct-chest":
        unknown = set(options) - {"window"}
        if unknown:
            raise DatasetError(f"ct-chest: unknown data_options {sorted(unknown)}; it accepts only window: "
                              "[low, high] (Hounsfield units)")
        if num_classes not in (None, 8):
            raise DatasetError(f"ct-chest has 8 classes, not {num_classes}; drop --num-classes")
        ch = in_channels or 1
        return (CTChestDataset("train", in_channels=ch, **options),
                CTChestDataset("val", in_channels=ch, **options))
    allowed = {"num_samples", "val_samples", "size", "max_shapes", "noise"}
    unknown = set(options) - allowed
    if unknown:
        raise DatasetError(f"shapes: unknown data_options {sorted(unknown)}; it accepts {', '.join(sorted(allowed))}")
    opts = dict(options)
    n = int(opts.pop("num_samples", 64))
    n_val = int(opts.pop("val_samples", max(1, n // 4)))
    common = dict(num_classes=num_classes or 4, in_channels=in_channels or 3, **opts)
    # The validation split uses a different (derived) seed, so it never repeats training images.
    return (ShapesDataset(n, seed=seed, split="train", **common),
            ShapesDataset(n_val, seed=seed + 1_000_003, split="val", **common))


def get_datasets(
    name_or_dir: str | os.PathLike = DEFAULT_DATASET,
    *,
    augment: AugmentConfig | bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    ignore_index: int = 255,
    val_fraction: float = 0.2,
    seed: int = 0,
    binary: bool | None = None,
    cache: bool | None = None,
    context: int = 0,
    slice_axis: int | None = None,
    spacing: Sequence[float] | str | None = None,
    **options: object,
) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """``(train, val)`` for a built-in name (``"ct-chest"``, ``"shapes"``) or a dataset folder.

    * ``augment``: an :class:`AugmentConfig` (``True`` = defaults) applied to the training split only.
    * ``mean``/``std``: normalisation (e.g. :func:`imagenet_stats` for a pretrained encoder); when
      ``None`` both splits use :func:`compute_stats` of the training images.
    * Folder options: ``num_classes``, ``in_channels``, ``ignore_index``, ``val_fraction``, ``seed``,
      ``binary``, ``cache`` (see :func:`unetkit.data.folder.scan_folder`).
    * Volume folders (``images/`` holding CT/MRI volumes): ``context``, ``slice_axis``, ``spacing`` (see
      :func:`unetkit.data.volumes.scan_volumes`); the samples are slices, split by case.
    * Built-in options (``**options``): shapes ``num_samples``, ``val_samples``, ``size``,
      ``max_shapes``, ``noise`` (``seed``, ``num_classes``, ``in_channels`` apply too); ct-chest ``window``.

    ``val`` is ``None`` only for a folder without ``val/`` and ``val_fraction=0``. A string that is
    neither a built-in name nor an existing folder raises :class:`DatasetError`. A built-in name wins
    over a same-named folder in the working directory; write ``./shapes`` for the folder.
    """
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither (dataset statistics are then computed)")
    key = name_or_dir.lower() if isinstance(name_or_dir, str) else None
    train: SegmentationDataset
    val: SegmentationDataset | None
    if key in BUILTIN_DATASETS:
        train, val = _builtin(key, seed=seed, num_classes=num_classes, in_channels=in_channels,
                              ignore_index=ignore_index, options=dict(options))
    else:
        path = Path(name_or_dir)
        if not path.exists():
            raise DatasetError(f"'{name_or_dir}' is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
                               "nor an existing folder; pass one of those names or a folder with images/ and masks/")
        if options:
            raise DatasetError(f"{path}: data_options {sorted(options)} apply only to the built-in datasets; "
                               "remove data_options for a folder")
        if is_volume_folder(path):
            if in_channels is not None and in_channels != 2 * context + 1:
                raise DatasetError(f"{path}: volumes give 2 * context + 1 = {2 * context + 1} input channel(s), "
                                   f"not {in_channels}; drop --in-channels (set --context instead)")
            train, val = load_volumes(path, num_classes=num_classes, ignore_index=ignore_index,
                                      val_fraction=val_fraction, seed=seed, context=context,
                                      slice_axis=slice_axis, spacing=spacing)
        elif context or slice_axis is not None or spacing is not None:
            raise DatasetError(f"{path}: --context, --slice-axis and --spacing apply to volume folders (NIfTI, "
                               "NRRD, MetaImage, DICOM); this folder holds 2D images")
        else:
            train, val = load_folder(path, num_classes=num_classes, in_channels=in_channels,
                                     ignore_index=ignore_index, val_fraction=val_fraction, seed=seed,
                                     binary=binary, cache=cache)
    if mean is None or std is None:
        mean, std = compute_stats(train)
    train.set_normalization(mean, std)
    if val is not None:
        val.set_normalization(mean, std)
    if augment is True:
        augment = AugmentConfig()
    if isinstance(augment, AugmentConfig):
        train.transform = build_transforms(augment, True, in_channels=train.in_channels,
                                           ignore_index=train.ignore_index, unit_range=_unit_range(train))
    return train, val


def _unit_range(ds: SegmentationDataset) -> bool:
    """Whether the images come scaled to [0, 1] (8/16-bit files, built-ins), not in their own units (volumes,
    float images)."""
    dtype = getattr(ds, "dtype", None)
    return dtype is None or all(dtype(i) != "float32" for i in range(len(ds)))


def get_dataset(name_or_dir: str | os.PathLike = DEFAULT_DATASET, split: str = "train",
                **kwargs: object) -> SegmentationDataset:
    """One split (``"train"`` or ``"val"``) of :func:`get_datasets` (same arguments)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train, val = get_datasets(name_or_dir, **kwargs)  # type: ignore[arg-type]
    if split == "val":
        if val is None:
            raise DatasetError(f"{name_or_dir}: no validation split (no val/ folder and --val-fraction 0)")
        return val
    return train
