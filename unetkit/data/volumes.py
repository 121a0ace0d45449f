"""Volume folders: CT and MRI volumes with label volumes, trained as 2D slices (optionally 2.5D).

Layout (the folder layout of 2D data, with volumes in place of images)::

    DIR/images/case_001.nii.gz   DIR/masks/case_001.nii.gz     any of .nii .nii.gz .nrrd .seg.nrrd .mha
    DIR/images/case_002/         DIR/masks/case_002.nrrd       .mhd, or a folder holding a DICOM series
    DIR/val/images, DIR/val/masks                              explicit validation cases (optional)
    DIR/classes.yaml                                           class names and colours (optional)

Every case is read and checked up front: image and label geometry must agree (shape, spacing, axes and
origin), labels must be non-negative integers. Cases, not slices, are split into training and validation,
so no case is on both sides.

Each volume is cut into 2D slices along its **slice axis**: the axis with the coarsest spacing (nnU-Net's
2D configuration), or ``slice_axis`` when given. With ``context=k`` (2.5D) a sample is its slice and the k
slices on each side stacked as ``2k + 1`` input channels, edges replicated. When the cases' in-plane
spacings differ by more than :data:`RESAMPLE_TOLERANCE`, every case is resampled in-plane to the median
spacing (images linearly, labels by nearest neighbour), and prediction maps back to each scan's grid.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import SegmentationDataset
from .classes import Color, default_colors, default_names, read_class_file
from .errors import DatasetError
from .folder import split_items

if TYPE_CHECKING:
    from .volume_io import Volume

logger = logging.getLogger("unetkit.data")

#: In-plane spacings that differ from the median by more than this fraction make the cases resampled.
RESAMPLE_TOLERANCE = 0.1
#: Values at or below this in a volume mark it as CT (air is -1000 HU); the plan then normalises as for CT.
CT_MIN_HU = -500.0
#: Above this many bytes of decoded volumes, cases are read from disk when used instead of kept in memory.
CACHE_BYTES = 4 << 30
#: Cases kept in memory at once when the folder is too large to keep all of them.
RECENT_CASES = 3


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class VolumeSettings:
    """How volumes become network inputs; stored with the model so prediction slices scans the same way.

    ``slice_axis``: the voxel index axis (0, 1, 2) to slice along, ``None`` for each scan's coarsest axis;
    ``context``: neighbouring slices on each side (2.5D); ``spacing``: the in-plane spacing (mm) slices are
    resampled to, ``None`` to keep each scan's own.
    """

    slice_axis: int | None = None
    context: int = 0
    spacing: tuple[float, float] | None = None

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict[str, Any]:
        return {"slice_axis": self.slice_axis, "context": self.context,
                "spacing": None if self.spacing is None else list(self.spacing)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeSettings:
        sp = d.get("spacing")
        axis = d.get("slice_axis")
        return cls(None if axis is None else int(axis), int(d.get("context", 0)),
                   None if sp is None else (float(sp[0]), float(sp[1])))

    def describe(self) -> str:
        """E.g. ``coarsest axis, context 1 (3 channels), 0.8 x 0.8 mm``."""
        axis = "coarsest axis" if self.slice_axis is None else f"axis {self.slice_axis}"
        ctx = f", context {self.context} ({self.channels} channels)" if self.context else ""
        sp = f", {self.spacing[0]:.3g} x {self.spacing[1]:.3g} mm" if self.spacing else ", native spacing"
        return f"{axis}{ctx}{sp}"


def slice_axis_for(spacing: Sequence[float], given: int | None = None) -> int:
    """The axis to slice along: ``given``, else the one with the coarsest spacing (the last of equals)."""
    if given is not None:
        return int(given)
    sp = np.asarray(spacing, dtype=float)
    return int(np.flatnonzero(sp >= sp.max() * (1 - 1e-3))[-1])


def context_indices(num_slices: int, index: int, context: int) -> list[int]:
    """Slice indices ``index - context .. index + context``, clamped to the volume (edges replicated)."""
    return [min(max(index + d, 0), num_slices - 1) for d in range(-context, context + 1)]


def inplane_size(shape: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float] | None
                 ) -> tuple[int, int]:
    """In-plane size of a slice of ``shape`` at ``spacing`` once resampled to ``target`` (unchanged if None)."""
    if target is None:
        return shape
    return (max(1, round(shape[0] * spacing[0] / target[0])), max(1, round(shape[1] * spacing[1] / target[1])))


def resize_slices(shw: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    """``(S, H, W)`` slices resized in-plane to ``size``: linear for images, nearest for labels."""
    if tuple(shw.shape[1:]) == tuple(size):
        return shw
    out = []
    for start in range(0, shw.shape[0], 16):  # in chunks: one float copy of a whole CT is large
        t = torch.from_numpy(np.ascontiguousarray(shw[start:start + 16])).float()[:, None]
        if labels:
            r = F.interpolate(t, size=size, mode="nearest-exact")
        else:
            r = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        out.append(r[:, 0].numpy())
    res = np.concatenate(out)
    if shw.dtype.kind in "iu":
        info = np.iinfo(shw.dtype)
        res = np.clip(np.rint(res), info.min, info.max)
    return res.astype(shw.dtype)


def volume_slices(volume: Volume, settings: VolumeSettings) -> tuple[np.ndarray, int, tuple[float, float, float]]:
    """``(slices (S, H, W), slice axis, spacing of the slice grid (S, H, W) in mm)`` of a scan, resampled
    in-plane as ``settings`` say. The one path from a volume to slices, for training and prediction."""
    axis = slice_axis_for(volume.spacing, settings.slice_axis)
    shw = np.moveaxis(volume.array, axis, 0)
    sp = volume.spacing
    inplane = tuple(float(sp[a]) for a in range(3) if a != axis)
    size = inplane_size(shw.shape[1:], inplane, settings.spacing)  # type: ignore[arg-type]
    shw = resize_slices(shw, size, labels=False)
    grid = (float(sp[axis]), *(settings.spacing or inplane))
    return shw, axis, grid  # type: ignore[return-value]


def stack_context(shw: np.ndarray, index: int, context: int) -> np.ndarray:
    """The ``(2 * context + 1, H, W)`` float32 input of slice ``index`` (neighbours as channels)."""
    return shw[context_indices(shw.shape[0], index, context)].astype(np.float32)


# --------------------------------------------------------------------------------------------- scanning
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


def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _volume_entries(folder: Path) -> dict[str, Path]:
    """Volumes directly inside ``folder`` (files and DICOM series folders) by case name."""
    from .volume_io import is_dicom_folder, volume_stem

    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        stem = volume_stem(p) if p.is_file() or is_dicom_folder(p) else None
        if stem is None:
            continue
        if stem in found:
            raise DatasetError(f"{found[stem]} and {p} are both case '{stem}'; rename or remove one so each case "
                               "has exactly one image and one label volume")
        found[stem] = p
    return found


def is_volume_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` is laid out as a volume dataset (its ``images/`` hold volumes, not 2D images)."""
    root = Path(root)
    for sub in (root / "images", root / "train" / "images"):
        if sub.is_dir():
            return bool(_volume_entries(sub))
    return False


def _pair(root: Path, img_dir: Path, mask_dir: Path) -> list[VolumeCase]:
    images = _volume_entries(img_dir)
    rel_img = _rel(root, img_dir)
    if not images:
        raise DatasetError(f"{rel_img}/ holds no volumes (.nii, .nii.gz, .nrrd, .mha, .mhd or DICOM series "
                           "folders); add them or point to the right folder")
    if not mask_dir.is_dir():
        raise DatasetError(f"{_rel(root, mask_dir)}/ not found next to {rel_img}/; put one label volume per case "
                           "there with the same name (see docs/volumes.md)")
    masks = _volume_entries(mask_dir)
    rel_mask = _rel(root, mask_dir)
    for stem, p in images.items():
        if stem not in masks:
            raise DatasetError(f"{_rel(root, p)} has no label volume in {rel_mask}/ (expected {rel_mask}/{stem}"
                               ".nii.gz or another volume format); add it or remove the image")
    for stem, p in masks.items():
        if stem not in images:
            raise DatasetError(f"{_rel(root, p)} has no image volume in {rel_img}/; add it or remove the label")
    return [VolumeCase(s, images[s], masks[s], _rel(root, images[s]), _rel(root, masks[s])) for s in images]


def _read(path: Path, rel: str, what: str) -> Volume:
    from .volume_io import read_volume

    label = what == "label"
    try:
        return read_volume(path, label=label)
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


def _load_case(case: VolumeCase, settings: VolumeSettings) -> None:
    """Read a case and keep its (resampled) slices in ``case.image_data`` / ``case.mask_data``."""
    image, labels = _read_case(case)
    shw, axis, grid = volume_slices(image, settings)
    case.axis, case.spacing = axis, grid
    case.inplane_spacing = tuple(float(image.spacing[a]) for a in range(3) if a != axis)  # type: ignore[assignment]
    case.shape = tuple(int(s) for s in shw.shape)  # type: ignore[assignment]
    case.image_data = shw
    case.minimum = float(shw.min()) if shw.size else 0.0
    if labels is not None:
        case.mask_data = resize_slices(np.moveaxis(labels, axis, 0), shw.shape[1:], labels=True)
        case.values = np.flatnonzero(np.bincount(case.mask_data.ravel()))


def _native_inplane(case: VolumeCase, given_axis: int | None) -> tuple[float, float]:
    """The scan's in-plane spacing, from its header alone."""
    from .volume_io import read_volume_geometry

    try:
        _, affine = read_volume_geometry(case.image)
    except Exception as e:  # noqa: BLE001
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise DatasetError(f"{case.rel_image} cannot be read as an image volume ({why}); re-export it as NIfTI "
                           "(.nii.gz) or remove the case") from e
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    axis = slice_axis_for(spacing, given_axis)
    return tuple(float(spacing[a]) for a in range(3) if a != axis)  # type: ignore[return-value]


def plan_spacing(spacings: Sequence[tuple[float, float]]) -> tuple[tuple[float, float] | None, str]:
    """The in-plane spacing to resample to (``None``: keep each scan's) and why."""
    arr = np.asarray(spacings, dtype=float)
    median = np.median(arr, axis=0)
    spread = np.abs(arr / median - 1).max()
    if spread <= RESAMPLE_TOLERANCE:
        return None, (f"in-plane spacings within {100 * RESAMPLE_TOLERANCE:.0f} % of each other: not resampled; "
                      "slices along the coarsest axis (nnU-Net's 2D)")
    return (round(float(median[0]), 4), round(float(median[1]), 4)), (
        f"in-plane spacings differ by up to {100 * spread:.0f} %: resampled to their median")


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
    it is planned from the training cases (:func:`plan_spacing`).
    """
    root = Path(root)
    if context < 0:
        raise DatasetError(f"--context must be >= 0, not {context}")
    if slice_axis is not None and slice_axis not in (0, 1, 2):
        raise DatasetError(f"--slice-axis must be 0, 1 or 2 (a voxel index axis), not {slice_axis}")
    if (root / "images").is_dir():
        img_dir, mask_dir = root / "images", root / "masks"
    elif (root / "train" / "images").is_dir():
        img_dir, mask_dir = root / "train" / "images", root / "train" / "masks"
    else:
        raise DatasetError(f"{root} has no images/ folder; expected {root}/images + {root}/masks with one "
                           "volume per case")
    train = _pair(root, img_dir, mask_dir)
    val: list[VolumeCase] | None = None
    if (root / "val" / "images").is_dir():
        val = _pair(root, root / "val" / "images", root / "val" / "masks")
    train, val, val_source = split_items(train, val, val_fraction, seed)
    cases = train + val
    threads = num_threads or min(4, (os.cpu_count() or 1) + 1)

    if isinstance(spacing, str):
        if spacing != "native":
            raise DatasetError(f"spacing must be two numbers (mm) or 'native', not {spacing!r}")
        target: tuple[float, float] | None = None
        reason = "each scan's own in-plane spacing"
    elif spacing is not None:
        target = (float(spacing[0]), float(spacing[1]))
        reason = "given"
    else:
        with ThreadPoolExecutor(threads) as pool:
            native = list(pool.map(lambda c: _native_inplane(c, slice_axis), train or cases))
        target, reason = plan_spacing(native)
    settings = VolumeSettings(slice_axis, int(context), target)
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda c: _load_case(c, settings), cases):
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
                      spacing_reason=reason)


# --------------------------------------------------------------------------------------------- dataset
class VolumeSliceDataset(SegmentationDataset):
    """The slices of one split of a volume folder: ``dataset[i]`` is slice ``i`` as a 2D sample.

    Images are ``(2 * context + 1, H, W)`` float32 in stored units (HU for CT); masks ``(H, W)``.
    Extra attributes: ``cases`` (:class:`VolumeCase` list), ``case_of`` (case index per sample),
    ``slice_of`` (slice index per sample), ``settings``, ``modality``.
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
            _load_case(probe, self.settings)
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
