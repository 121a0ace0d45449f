"""Reading and writing CT/MRI volumes with their geometry (NIfTI, NRRD, MetaImage, DICOM series).

Every reader returns a :class:`Volume`: the voxels in index order ``(I, J, K)`` whatever the format, and a
4x4 ``affine`` from voxel indices ``(i, j, k, 1)`` to world RAS+ millimetres (nibabel's convention), so
one physical scan gives the same array and affine from every format. :func:`write_label_volume` writes a
predicted label volume back with the reference scan's exact geometry, in the reference's format, so it
opens over the scan in 3D Slicer or ITK-SNAP.

Each format is one module of :mod:`unetkit.data.formats` (nibabel for NIfTI, pynrrd for NRRD, SimpleITK
for MetaImage and DICOM series), described by a :class:`VolumeFormat`; this module holds the convention
they all return and the dispatch by file ending (or DICOM folder). An affine column is one index axis:
``affine[:3, :3] = R @ diag(spacing)`` with ``R`` the direction cosines and ``affine[:3, 3]`` the world
position of voxel ``(0, 0, 0)``'s centre.

Readers raise :class:`VolumeError` (a ``ValueError``) with a one-line reason for unreadable or unsupported
files and :class:`FileNotFoundError` for missing ones; the caller adds the file name. A file that reads but
must be refused (a DICOM series with a missing slice) raises :class:`VolumeCheckError`, whose message
already names the file and the fix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write

if TYPE_CHECKING:
    from collections.abc import Sequence

#: File name endings of volume files (lower case; the longer ones first so ``.nii.gz`` wins over ``.nii``).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")

# DICOM files: the 4 bytes after the 128-byte preamble; how many files of a folder to look at.
_DICM_OFFSET, _DICM_MAGIC, _DICOM_PROBE_FILES = 128, b"DICM", 16


class VolumeError(ValueError):
    """A volume that cannot be read or written as asked; the one-line message says why (not which file)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class VolumeCheckError(VolumeError):
    """A readable volume refused by a check (missing slice, absurd geometry); ``str()`` names the file
    (``path``) and the fix, ``detail`` is the message without the file, for callers that name it their way."""

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        self.detail = " ".join(str(detail).split())
        super().__init__(f"{path}: {self.detail}")


@dataclass
class Volume:
    """A 3D scan or label volume with its geometry.

    ``array`` is in voxel index order ``(I, J, K)`` for every format (any memory layout). ``affine`` maps
    ``(i, j, k, 1)`` to world RAS+ millimetres. ``header`` holds what :func:`write_label_volume` needs to
    write the same geometry back in the same format: the nibabel header (NIfTI), the pynrrd header dict
    (NRRD), or a dict of ITK ``origin``/``spacing``/``direction`` in LPS (MetaImage, DICOM).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    format: str  # "nifti", "nrrd", "metaimage" or "dicom"
    header: Any = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along I, J, K (the lengths of the affine's columns)."""
        norms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


@dataclass(frozen=True)
class VolumeFormat:
    """One volume format: its reader, header-only geometry reader and label writer (see
    :mod:`unetkit.data.formats`). ``suffixes`` are lower-case file endings (none for a DICOM series folder,
    ``folder=True``); ``output_suffix(reference)`` is the ending of label volumes written for it."""

    name: str
    title: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], Volume]
    geometry: Callable[[Path], tuple[tuple[int, int, int], np.ndarray]]
    write: Callable[[Volume, np.ndarray, Path], None]
    output_suffix: Callable[[Volume], str]
    folder: bool = False


def volume_formats() -> Sequence[VolumeFormat]:
    """The registered formats (:data:`unetkit.data.formats.FORMATS`; imported on first use)."""
    from .formats import FORMATS

    return FORMATS


def _format_named(name: str) -> VolumeFormat:
    for fmt in volume_formats():
        if fmt.name == name:
            return fmt
    raise VolumeError(f"unknown volume format {name!r}")


# ---------------------------------------------------------------------------------------------- names


def volume_stem(path: Path | str) -> str | None:
    """Case name of a volume file (``case_001`` for ``case_001.nii.gz``, ``.seg.nrrd``, ``.mha`` ...) or of
    a DICOM series folder (the folder's name); ``None`` when ``path`` is not a volume.

    Hidden files (``.``-prefixed: macOS ``._`` companions, temporaries of interrupted writes) are not
    volumes, so folder scans skip them.
    """
    path = Path(path)
    name = path.name
    if not name or name.startswith("."):
        return None
    if path.is_dir():
        return name if is_dicom_folder(path) else None
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(_DICM_OFFSET)
            return f.read(len(_DICM_MAGIC)) == _DICM_MAGIC
    except OSError:
        return False


def is_dicom_folder(path: Path | str) -> bool:
    """Whether ``path`` is a folder holding DICOM files.

    A file counts when it has the ``DICM`` marker after the 128-byte preamble (DICOM files often have no
    extension) or is named ``*.dcm``. Only the first few files (by name) are opened, so asking about a
    large folder of other files stays cheap.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        names = sorted(entry.name for entry in os.scandir(path) if not entry.name.startswith("."))
    except OSError:
        return False
    probed = 0
    for name in names:
        file = path / name
        if not file.is_file():
            continue
        if file.suffix.lower() == ".dcm" or _has_dicm_magic(file):
            return True
        probed += 1
        if probed >= _DICOM_PROBE_FILES:
            break
    return False


def _format_of(path: Path) -> VolumeFormat:
    if path.is_dir():
        if is_dicom_folder(path):
            return next(f for f in volume_formats() if f.folder)
        raise VolumeError("folder holds no DICOM files; a volume is a file (" + ", ".join(VOLUME_SUFFIXES)
                          + ") or a folder of one DICOM series")
    lower = path.name.lower()
    matches = [(len(s), f) for f in volume_formats() for s in f.suffixes if lower.endswith(s)]
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if not matches:
        raise VolumeError("not a volume file; expected " + ", ".join(VOLUME_SUFFIXES) + " or a DICOM series folder")
    return max(matches, key=lambda m: m[0])[1]  # the longest ending: .seg.nrrd, .nii.gz


def _short_reason(e: BaseException) -> str:
    """One line of a library's error message (SimpleITK's carry a C++ source location first)."""
    text = str(e)
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1]
    text = " ".join(text.split())
    if not text:
        text = type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


# ------------------------------------------------------------------------------ shared by the formats


def as_3d_shape(shape: tuple[int, ...], shown: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """The (I, J, K) shape of a stored shape: trailing singleton axes dropped, a 2D image as one slice."""
    dims = [int(s) for s in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise VolumeError(f"volume has shape {tuple(shown or shape)}; only 3D volumes are supported")
    return dims[0], dims[1], dims[2]


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order (torch and some numpy paths refuse swapped bytes)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


# ----------------------------------------------------------------------------------------- public API


def _run(what: str, call: Any, *args: Any, os_errors: bool = True) -> Any:
    """Call a library; turn its errors (long, format specific) into a one-line :class:`VolumeError` that
    starts with ``what``. ``os_errors=False`` lets ``OSError`` through (a full disk while writing)."""
    try:
        return call(*args)
    except (VolumeError, MemoryError, FileNotFoundError):
        raise
    except OSError as e:
        if not os_errors:
            raise
        raise VolumeError(f"{what}: {_short_reason(e)}") from e
    except Exception as e:
        raise VolumeError(f"{what}: {_short_reason(e)}") from e


def _as_labels(array: np.ndarray) -> np.ndarray:
    """An integer label array: whole-valued floats (some tools store labels as float) become integers."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        return array
    if array.dtype.kind != "f":
        raise VolumeError(f"label volume has {array.dtype} voxels; expected integer class numbers")
    if array.size == 0:
        return array.astype(np.uint8)
    if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
        raise VolumeError("label volume holds non-integer values; expected whole class numbers")
    lo, hi = float(array.min()), float(array.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return array.astype(dtype)
    raise VolumeError(f"label volume values {lo:g}..{hi:g} do not fit an integer type")


def read_volume(path: Path | str, *, label: bool = False) -> Volume:
    """Read a volume file (NIfTI, NRRD, MetaImage) or a DICOM series folder into a :class:`Volume`.

    Image voxels keep their stored type (``int16`` CT in HU, ``uint16`` MRI, ``float32``) unless the file
    scales them (NIfTI ``scl_slope``/``scl_inter``, DICOM rescale slope/intercept other than 1/0): then
    the scaled values come back as ``float32``. With ``label=True`` the voxels are returned as integers
    (whole-valued float label files are converted; other values raise). Trailing singleton axes are
    dropped and a 2D image becomes one slice ``(I, J, 1)``; anything else that is not 3D raises
    :class:`VolumeError`, as do unreadable files.
    """
    path = Path(path)
    fmt = _format_of(path)
    volume = _run(f"cannot read this {fmt.title} volume", fmt.read, path)
    if label:
        volume.array = _as_labels(volume.array)
    return volume


def read_volume_geometry(path: Path | str) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of a volume, from its header only, without decoding the voxels.

    The same shape and affine as :func:`read_volume` gives, for checking a whole folder up front: NIfTI
    and NRRD headers, the MetaImage header (via ITK's image information), and for a DICOM series the file
    list and the first and last slice's header tags.
    """
    path = Path(path)
    fmt = _format_of(path)
    return _run(f"cannot read this {fmt.title} volume", fmt.geometry, path)


def write_label_volume(reference: Volume, labels: np.ndarray, out_dir: Path | str, *, stem: str | None = None
                       ) -> Path:
    """Write ``labels`` (an ``(I, J, K)`` integer array shaped like ``reference.array``) with the
    reference's geometry, so the result overlays the scan in 3D Slicer / ITK-SNAP; return its path.

    The format follows the reference: NIfTI keeps its extension and header (qform/sform codes and
    matrices) with datatype ``uint8`` (``uint16`` for labels >= 256) and no scaling; NRRD is written as
    ``.nrrd`` in the same space with the same space directions and origin; MetaImage as ``.mha`` with the
    same ITK origin, spacing and direction; a DICOM series as ``.nii.gz`` with the equivalent RAS affine.
    The file ``out_dir / f"{stem}{suffix}"`` (``stem`` defaults to the reference's case name) is written
    atomically: a half-written file never appears under that name.
    """
    labels = np.asarray(labels)
    expected = tuple(np.shape(reference.array))
    if labels.shape != expected:
        raise VolumeError(f"labels have shape {labels.shape} but the reference volume has shape {expected}")
    if labels.dtype.kind not in "biu":
        raise VolumeError(f"labels have dtype {labels.dtype}; expected an integer array of class numbers")
    hi = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise VolumeError(f"labels hold negative values ({int(labels.min())}); expected class numbers >= 0")
    if hi > np.iinfo(np.uint16).max:
        raise VolumeError(f"labels go up to {hi}; at most {np.iinfo(np.uint16).max} can be written")
    labels = labels.astype(np.uint8 if hi < 256 else np.uint16, copy=False)
    known = {f.name for f in volume_formats()}
    fmt = _format_named(reference.format if reference.format in known else "dicom")
    suffix = fmt.output_suffix(reference)
    stem = stem or volume_stem(reference.path) or reference.path.name
    target = Path(out_dir) / f"{stem}{suffix}"

    def write(tmp: Path) -> None:
        # The libraries pick the file format (and gzip) from the extension, and atomic_write's temporary
        # ends in '.tmp': write a sibling with the right extension, then move it onto the temporary.
        side = tmp.with_name(tmp.name + suffix)
        try:
            _run(f"cannot write {target.name}", fmt.write, reference, labels, side, os_errors=False)
            os.replace(side, tmp)
        finally:
            if side.exists():
                side.unlink()

    return atomic_write(target, write)
