"""Selecting a dataset by name (``ct-chest``, ``shapes``) or folder path, with normalisation and augmentation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import SegmentationDataset, compute_stats
from .config import DataConfig
from .config import field_names as data_field_names
from .ct_chest import CTChestDataset
from .errors import DatasetError
from .folder import load_folder
from .preprocess import Normalization
from .shapes import ShapesDataset
from .transforms import AugmentConfig, build_transforms
from .volumes import VolumeSettings, is_volume_folder, load_volumes

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


def open_datasets(data: DataConfig, *, seed: int = 0, normalization: Normalization | None = None,
                  augment: AugmentConfig | None = None, volume: VolumeSettings | None = None
                  ) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """``(train, val)`` as ``data`` describes them: the one place a data set is opened, for training,
    ``plan``, ``evaluate``, ``predict --data`` and ``export``'s calibration.

    The validation split is drawn with ``data.split_seed`` (``None``: ``seed``, the run's). Both splits are
    normalised by ``normalization`` (``None``: left as read, [0, 1] pixels, until a plan says otherwise);
    ``augment`` applies to the training split only. ``volume``: the slicing a plan or a checkpoint fixed,
    which wins over ``data``'s volume options. ``val`` is ``None`` only for a folder without ``val/``
    and ``val_fraction=0``. A source that is neither a built-in name nor an existing folder raises
    :class:`DatasetError`; a built-in name wins over a same-named folder in the working directory (write
    ``./shapes`` for the folder).
    """
    seed = seed if data.split_seed is None else data.split_seed
    key = data.source.lower()
    volume_options = volume_kwargs(data, volume)
    train: SegmentationDataset
    val: SegmentationDataset | None
    if key in BUILTIN_DATASETS:
        if volume_options or data.binary is not None or data.cache is not None:
            raise DatasetError(f"{key}: --context, --slice-axis, --spacing, --binary and --cache apply to folders; "
                               "drop them for a built-in dataset")
        train, val = _builtin(key, seed=seed, num_classes=data.num_classes, in_channels=data.in_channels,
                              ignore_index=data.ignore_index, options=dict(data.options))
    else:
        path = Path(data.source)
        if not path.exists():
            raise DatasetError(f"'{data.source}' is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
                               "nor an existing folder; pass one of those names or a folder with images/ and masks/")
        if data.options:
            raise DatasetError(f"{path}: data options {sorted(data.options)} apply only to the built-in datasets; "
                               "remove them for a folder")
        if is_volume_folder(path):
            context = volume_options.get("context", 0)
            if data.in_channels is not None and data.in_channels != 2 * context + 1:
                raise DatasetError(f"{path}: volumes give 2 * context + 1 = {2 * context + 1} input channel(s), "
                                   f"not {data.in_channels}; drop --in-channels (set --context instead)")
            train, val = load_volumes(path, num_classes=data.num_classes, ignore_index=data.ignore_index,
                                      val_fraction=data.val_fraction, seed=seed, **volume_options)
        elif volume_options:
            raise DatasetError(f"{path}: --context, --slice-axis and --spacing apply to volume folders (NIfTI, "
                               "NRRD, MetaImage, DICOM); this folder holds 2D images")
        else:
            train, val = load_folder(path, num_classes=data.num_classes, in_channels=data.in_channels,
                                     ignore_index=data.ignore_index, val_fraction=data.val_fraction, seed=seed,
                                     binary=data.binary, cache=data.cache)
    for ds in (train, val):  # the identity until a plan says otherwise: no statistics pass here
        if ds is not None:
            ds.set_normalization(normalization or Normalization((0.0,), (1.0,)))
    if augment is not None:
        train.transform = build_transforms(augment, True, in_channels=train.in_channels,
                                           ignore_index=train.ignore_index, unit_range=_unit_range(train))
    return train, val


def volume_kwargs(data: DataConfig, volume: VolumeSettings | None = None) -> dict[str, Any]:
    """The slicing options for :func:`unetkit.data.volumes.scan_volumes`: ``volume``'s when a plan or a
    checkpoint fixed them (its spacing ``None`` keeps each scan's native spacing), else those ``data`` gives."""
    if volume is None:
        return data.volume_options
    opts: dict[str, Any] = {"context": volume.context, "spacing": volume.spacing or "native"}
    if volume.slice_axis is not None:
        opts["slice_axis"] = volume.slice_axis
    return opts


def open_test_set(data: DataConfig, normalization: Normalization | None = None,
                  volume: VolumeSettings | None = None) -> SegmentationDataset:
    """Every image (every case) of the folder ``data.source`` as one dataset: a test set scored whole."""
    from .folder import FolderDataset
    from .volumes import VolumeSliceDataset, scan_volumes

    if data.source.lower() in BUILTIN_DATASETS:
        raise DatasetError(f"{data.source}: built-in datasets have fixed splits; score its val or train split")
    path = Path(data.source)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder; pass a folder with images/ and masks/")
    ds: SegmentationDataset
    if is_volume_folder(path):
        scan = scan_volumes(path, num_classes=data.num_classes, ignore_index=data.ignore_index, val_fraction=0.0,
                            **volume_kwargs(data, volume))
        ds = VolumeSliceDataset(scan, "all")
    else:
        ds = FolderDataset(path, split="all", num_classes=data.num_classes, in_channels=data.in_channels,
                           ignore_index=data.ignore_index, val_fraction=0.0, binary=data.binary, cache=data.cache)
    if normalization is not None:
        ds.set_normalization(normalization)
    return ds


def get_datasets(
    name_or_dir: str | os.PathLike = DEFAULT_DATASET,
    *,
    augment: AugmentConfig | bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    **options: Any,
) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """``(train, val)`` for a built-in name (``"ct-chest"``, ``"shapes"``) or a dataset folder: the
    Python shortcut to :func:`open_datasets`.

    * ``augment``: an :class:`AugmentConfig` (``True`` = defaults) applied to the training split only.
    * ``mean``/``std``: normalisation (e.g. :func:`imagenet_stats` for a pretrained encoder); when
      ``None`` both splits use :func:`compute_stats` of the training images.
    * ``seed``: the validation split's seed.
    * ``**options``: the fields of :class:`DataConfig` (``num_classes``, ``in_channels``, ``ignore_index``,
      ``val_fraction``, ``binary``, ``cache``; for volume folders ``context``, ``slice_axis``, ``spacing``);
      any other keyword goes to a built-in dataset (shapes ``num_samples``, ``val_samples``, ``size``,
      ``max_shapes``, ``noise``; ct-chest ``window``).
    """
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither (dataset statistics are then computed)")
    fields = set(data_field_names()) - {"source", "options"}
    given = {k: v for k, v in options.items() if k in fields}
    volume = None
    if given.get("spacing") == "native":  # each scan's own spacing, resampled nowhere
        volume = VolumeSettings(context=given.get("context", 0), slice_axis=given.get("slice_axis"), spacing=None)
        given.pop("spacing")
    data = DataConfig(source=os.fspath(name_or_dir), **given,
                      options={k: v for k, v in options.items() if k not in fields}).validate("get_datasets")
    train, val = open_datasets(data, seed=seed, augment=AugmentConfig() if augment is True else augment or None,
                               volume=volume)
    if mean is None or std is None:
        mean, std = compute_stats(train)
    for ds in (train, val):
        if ds is not None:
            ds.set_normalization(mean, std)
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
