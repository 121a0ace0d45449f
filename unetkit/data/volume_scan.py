"""Volume folders: pairing, reading and checking the cases, and planning how they are sliced.

Layout (the folder layout of 2D data, with volumes in place of images)::

    DIR/images/case_001.nii.gz   DIR/masks/case_001.nii.gz     any of .nii .nii.gz .nrrd .seg.nrrd .mha
    DIR/images/case_002/         DIR/masks/case_002.nrrd       .mhd, or a folder holding a DICOM series
    DIR/val/images, DIR/val/masks                              explicit validation cases (optional)
    DIR/classes.yaml                                           class names and colours (optional)

Label volumes pair with images by case name (:mod:`unetkit.data.pairing`: ``case_001_seg.nii.gz`` pairs
with ``case_001.nii.gz``). Every case is read and checked up front: image and label geometry must agree
(shape, spacing, axes and origin), labels must be non-negative integers. Cases, not slices, are split into
training and validation, so no case is on both sides.

Intensities stay in stored units (Hounsfield units for CT, scanner units for MRI) as float32; the plan
normalises them (clip + z-score, see :mod:`unetkit.train.plan`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .classes import Color, default_colors, default_names, read_class_file
from .errors import DatasetError
from .pairing import Pairing, describe_rules, index_by_name, pair_by_name, rel
from .splits import split_items
from .volume_geometry import (
    VolumeSettings,
    check_slice_grid,
    plan_volume_settings,
    resize_slices,
    volume_slices,
)
from .volume_io import VolumeCheckError

if TYPE_CHECKING:
    from .volume_io import Volume

logger = logging.getLogger("unetkit.data")

#: Values at or below this in a volume mark it as CT (air is -1000 HU); the plan then normalises as for CT.
CT_MIN_HU = -500.0
#: Above this many bytes of decoded volumes, cases are read from disk when used instead of kept in memory.
CACHE_BYTES = 4 << 30


@dataclass
class VolumeCase:
    """One case: its files, and once read its slices (image and labels, ``(S, H, W)``) along ``axis``."""

    name: str
    image: Path
    mask: Path | None
    rel_image: str
    rel_mask: str | None
    axis: int = 2
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # of the slice grid (S, H, W)
    shape: tuple[int, int, int] = (0, 0, 0)  # the slice grid (S, H, W)
    inplane_spacing: tuple[float, float] = (1.0, 1.0)  # native, before any resampling
    image_data: np.ndarray | None = field(default=None, repr=False)
    mask_data: np.ndarray | None = field(default=None, repr=False)
    values: np.ndarray | None = field(default=None, repr=False)
    minimum: float = 0.0


@dataclass
class VolumeScan:
    """A checked volume folder: cases per split and what was learned about them."""

    root: Path
    train: list[VolumeCase]
    val: list[VolumeCase]
    num_classes: int
    class_names: list[str]
    class_colors: list[Color]
    ignore_index: int
    settings: VolumeSettings
    modality: str  # "ct" or "other"
    val_source: str
    cached: bool
    spacing_reason: str = ""
    pairing_rule: str = ""  # how label volumes were paired with images, e.g. "labels paired by the suffix _seg"


def _volume_entries(root: Path, folder: Path) -> dict[str, Path]:
    """Volumes directly inside ``folder`` (files and DICOM series folders) by (normalised) case name."""
    from .volume_io import is_dicom_folder, volume_stem

    def stem_of(p: Path) -> str | None:
        return volume_stem(p) if p.is_file() or is_dicom_folder(p) else None

    return index_by_name(root, [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")], stem_of,
                         "are both case", "rename or remove one so each case has exactly one image and one label "
                         "volume")


def is_volume_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` is laid out as a volume dataset (its ``images/`` hold volumes, not 2D images)."""
    root = Path(root)
    for sub in (root / "images", root / "train" / "images"):
        if sub.is_dir():
            return bool(_volume_entries(root, sub))
    return False


def _pair(root: Path, img_dir: Path, mask_dir: Path) -> tuple[list[VolumeCase], Pairing]:
    from .volume_io import volume_stem

    images = _volume_entries(root, img_dir)
    if not images:
        raise DatasetError(f"{rel(root, img_dir)}/ holds no volumes (.nii, .nii.gz, .nrrd, .mha, .mhd or DICOM "
                           "series folders); add them or point to the right folder")
    if not mask_dir.is_dir():
        raise DatasetError(f"{rel(root, mask_dir)}/ not found next to {rel(root, img_dir)}/; put one label volume "
                           "per case there with the same name (see docs/volumes.md)")
    pairing = pair_by_name(root, img_dir, mask_dir, images, _volume_entries(root, mask_dir),
                           image_noun="image volume", mask_noun="label volume",
                           mask_example=".nii.gz or another volume format", stem_of=volume_stem)
    return [VolumeCase(m.stem, m.image, m.mask, rel(root, m.image), rel(root, m.mask))
            for m in pairing.matches], pairing


def _read(path: Path, rel: str, what: str) -> Volume:
    from .volume_io import read_volume

    label = what == "label"
    try:
        return read_volume(path, label=label)
    except VolumeCheckError as e:  # refused with its own fix
        raise DatasetError(f"{rel}: {e.detail}") from e
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        why = " ".join(str(e).split())[:200] or type(e).__name__
        fix = ("save the labels as an integer volume (e.g. uint8) of class indices" if label else
               "re-export it as NIfTI (.nii.gz)")
        raise DatasetError(f"{rel} cannot be read as a {what} volume ({why}); {fix}, or remove the case") from e


def check_geometry(image: Volume, labels: Volume, rel_image: str, rel_mask: str) -> None:
    """Refuse a label volume that is not on its image's voxel grid (shape, spacing, axes, origin)."""
    fix = "resample or re-export the labels on the image's grid (e.g. Slicer: export the segmentation " \
          "with the scan as reference geometry)"
    if image.array.shape != labels.array.shape:
        raise DatasetError(f"{rel_mask} has shape {labels.array.shape} but its image {rel_image} has "
                           f"{image.array.shape}; {fix}")
    si, sl = np.array(image.spacing), np.array(labels.spacing)
    if not np.allclose(si, sl, rtol=1e-3, atol=1e-4):
        raise DatasetError(f"{rel_mask} has spacing {_mm(sl)} mm but its image {rel_image} has {_mm(si)} mm; {fix}")
    di = image.affine[:3, :3] / si
    dl = labels.affine[:3, :3] / sl
    if not np.allclose(di, dl, atol=1e-3):
        raise DatasetError(f"{rel_mask} has other axis directions (orientation) than its image {rel_image}; {fix}")
    shift = np.abs(image.affine[:3, 3] - labels.affine[:3, 3])
    if (shift > 0.5 * si.min()).any():
        raise DatasetError(f"{rel_mask} has its origin {shift.max():.3g} mm away from its image {rel_image}'s; "
                           f"{fix}")


def _mm(v: np.ndarray) -> str:
    return " x ".join(f"{x:.4g}" for x in v)


def _labels_of(vol: Volume, rel: str) -> np.ndarray:
    """Class indices as uint8 (uint16 past 255) from an integer label volume; errors name the file."""
    arr = vol.array
    if arr.size and arr.min() < 0:
        raise DatasetError(f"{rel} has negative label {int(arr.min())}; class indices must be >= 0")
    if arr.size and arr.max() > 65535:
        raise DatasetError(f"{rel} has label {int(arr.max())} > 65535; class indices must fit 16 bits")
    return arr.astype(np.uint8 if not arr.size or arr.max() < 256 else np.uint16)


def _read_case(case: VolumeCase) -> tuple[Volume, np.ndarray | None]:
    image = _read(case.image, case.rel_image, "image")
    if image.array.dtype.kind == "f" and not np.isfinite(image.array).all():
        raise DatasetError(f"{case.rel_image} has NaN or infinite voxels; replace them with finite values and "
                           "re-save it, or remove the case")
    labels = None
    if case.mask is not None:
        assert case.rel_mask is not None
        mvol = _read(case.mask, case.rel_mask, "label")
        check_geometry(image, mvol, case.rel_image, case.rel_mask)
        labels = _labels_of(mvol, case.rel_mask)
    return image, labels


def load_case(case: VolumeCase, settings: VolumeSettings) -> None:
    """Read a case and keep its (resampled) slices in ``case.image_data`` / ``case.mask_data``."""
    image, labels = _read_case(case)
    try:
        shw, axis, grid = volume_slices(image, settings)
    except VolumeCheckError as e:
        raise DatasetError(f"{case.rel_image}: {e.detail}") from e
    case.axis, case.spacing = axis, grid
    case.inplane_spacing = tuple(float(image.spacing[a]) for a in range(3) if a != axis)  # type: ignore[assignment]
    case.shape = tuple(int(s) for s in shw.shape)  # type: ignore[assignment]
    case.image_data = shw
    case.minimum = float(shw.min()) if shw.size else 0.0
    if labels is not None:
        case.mask_data = resize_slices(np.moveaxis(labels, axis, 0), shw.shape[1:], labels=True)
        case.values = np.flatnonzero(np.bincount(case.mask_data.ravel()))


def _header_geometry(case: VolumeCase) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The scan's shape and voxel spacing (mm, I J K), from its header alone."""
    from .volume_io import read_volume_geometry

    try:
        shape, affine = read_volume_geometry(case.image)
    except VolumeCheckError as e:
        raise DatasetError(f"{case.rel_image}: {e.detail}") from e
    except Exception as e:  # noqa: BLE001
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise DatasetError(f"{case.rel_image} cannot be read as an image volume ({why}); re-export it as NIfTI "
                           "(.nii.gz) or remove the case") from e
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return shape, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def scan_volumes(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    ignore_index: int = 255,
    context: int = 0,
    slice_axis: int | None = None,
    spacing: Sequence[float] | str | None = None,
    num_threads: int | None = None,
) -> VolumeScan:
    """Read and check a volume folder completely; cases are split (never slices) into train and val.

    ``spacing`` (two numbers, mm) fixes the in-plane spacing and ``"native"`` keeps each scan's; by default
    it is planned from the training cases' headers (:func:`~unetkit.data.volume_geometry.plan_volume_settings`),
    and every case's resampled grid is bounded (:func:`~unetkit.data.volume_geometry.check_slice_grid`)
    before any voxel is read.
    """
    root = Path(root)
    plan_volume_settings([], slice_axis=slice_axis, context=int(context), spacing=spacing)  # refuse bad options first
    if (root / "images").is_dir():
        img_dir, mask_dir = root / "images", root / "masks"
    elif (root / "train" / "images").is_dir():
        img_dir, mask_dir = root / "train" / "images", root / "train" / "masks"
    else:
        raise DatasetError(f"{root} has no images/ folder; expected {root}/images + {root}/masks with one "
                           "volume per case")
    train, pairing = _pair(root, img_dir, mask_dir)
    pairings = [pairing]
    val: list[VolumeCase] | None = None
    if (root / "val" / "images").is_dir():
        val, val_pairing = _pair(root, root / "val" / "images", root / "val" / "masks")
        pairings.append(val_pairing)
    train, val, val_source = split_items(train, val, val_fraction, seed)
    cases = train + val
    threads = num_threads or min(4, (os.cpu_count() or 1) + 1)

    with ThreadPoolExecutor(threads) as pool:  # headers only: plan and bound every case before reading voxels
        geometry = list(pool.map(_header_geometry, cases))
    planned_from = geometry[:len(train)] or geometry
    settings, reason = plan_volume_settings([sp for _, sp in planned_from], slice_axis=slice_axis,
                                            context=int(context), spacing=spacing)
    for c, (shape, sp) in zip(cases, geometry, strict=True):
        try:
            check_slice_grid(c.image, shape, sp, settings)
        except VolumeCheckError as e:
            raise DatasetError(f"{c.rel_image}: {e.detail}") from e
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda c: load_case(c, settings), cases):
            pass

    names_file, colors_file, class_file = read_class_file(root)
    union = np.zeros(65536, dtype=bool)
    for c in cases:
        if c.values is not None:
            union[c.values] = True
    present = np.flatnonzero(union)
    if names_file is not None:
        if num_classes is not None and num_classes != len(names_file):
            raise DatasetError(f"{class_file} lists {len(names_file)} classes but --num-classes is {num_classes}; "
                               f"make them agree")
        num_classes = len(names_file)
    elif num_classes is None:
        found = present[present != ignore_index]
        num_classes = max(2, int(found.max()) + 1 if found.size else 2)
    if 0 <= ignore_index < num_classes:
        raise DatasetError(f"ignore_index {ignore_index} is also a class index (num_classes {num_classes}); "
                           "choose an --ignore-index >= num_classes")
    for c in cases:
        if c.values is None:
            continue
        bad = c.values[(c.values >= num_classes) & (c.values != ignore_index)]
        if bad.size:
            raise DatasetError(f"{c.rel_mask}: label value {int(bad.max())} >= num_classes {num_classes}; fix the "
                               "labels, or list the classes in classes.yaml / pass --num-classes")
    nbytes = sum(c.image_data.nbytes + (c.mask_data.nbytes if c.mask_data is not None else 0)
                 for c in cases if c.image_data is not None)
    cached = nbytes <= CACHE_BYTES
    if not cached:
        logger.warning("%s: the volumes take %.1f GiB decoded; they are read from disk when used (slower, "
                       "fastest with uncompressed .nii)", root, nbytes / 2**30)
        for c in cases:
            c.image_data = c.mask_data = None
    modality = "ct" if train and min(c.minimum for c in train) <= CT_MIN_HU else "other"
    return VolumeScan(root=root, train=train, val=val, num_classes=num_classes,
                      class_names=list(names_file or default_names(num_classes, binary=False)),
                      class_colors=list(colors_file or default_colors(num_classes)), ignore_index=ignore_index,
                      settings=settings, modality=modality, val_source=val_source, cached=cached,
                      spacing_reason=reason, pairing_rule=describe_rules(pairings, "labels"))
