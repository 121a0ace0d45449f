"""Reading and writing CT/MRI volumes with their geometry (NIfTI, NRRD, MetaImage, DICOM series).

Every reader returns a :class:`Volume`: the voxels in index order ``(I, J, K)`` whatever the format, and a
4x4 ``affine`` from voxel indices ``(i, j, k, 1)`` to world RAS+ millimetres (nibabel's convention), so
one physical scan gives the same array and affine from every format. :func:`write_label_volume` writes a
predicted label volume back with the reference scan's exact geometry, in the reference's format, so it
opens over the scan in 3D Slicer or ITK-SNAP.

Libraries: nibabel for NIfTI (its affine is the native geometry), pynrrd for NRRD, SimpleITK for
MetaImage and DICOM series (slice sorting, rescale slope/intercept, compressed transfer syntaxes).
Conventions bridged here:

* ITK (MetaImage, DICOM) works in LPS and its arrays are ``(K, J, I)``; NRRD states its ``space``
  (usually left-posterior-superior) and pynrrd's default ``'F'`` order is already ``(I, J, K)``.
* An affine column is one index axis: ``affine[:3, :3] = R @ diag(spacing)`` with ``R`` the direction
  cosines (ITK's ``Direction``, NRRD's ``space directions`` transposed) and ``affine[:3, 3]`` the
  world position of voxel ``(0, 0, 0)``'s centre.

Readers raise :class:`VolumeError` (a ``ValueError``) with a one-line reason for unreadable or unsupported
files and :class:`FileNotFoundError` for missing ones; the caller adds the file name.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write

#: File name endings of volume files (lower case; the longer ones first so ``.nii.gz`` wins over ``.nii``).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")

_FORMAT_OF_SUFFIX = {".nii.gz": "nifti", ".nii": "nifti", ".seg.nrrd": "nrrd", ".nrrd": "nrrd",
                     ".mha": "metaimage", ".mhd": "metaimage"}
_FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "dicom": "DICOM series"}

# ITK's world space is LPS: flipping x and y turns it into RAS (and back; the map is its own inverse).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# NRRD spaces we understand -> the signs that turn their coordinates into RAS.
_NRRD_SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
}
_NRRD_DEFAULT_SPACE = "left-posterior-superior"  # what ITK assumes for a NRRD without a named space
_NRRD_SPATIAL_KINDS = ("domain", "space")

# DICOM files: the 4 bytes after the 128-byte preamble; how many files of a folder to look at.
_DICM_OFFSET, _DICM_MAGIC, _DICOM_PROBE_FILES = 128, b"DICM", 16


class VolumeError(ValueError):
    """A volume that cannot be read or written as asked; the one-line message says why (not which file)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


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


def _format_of(path: Path) -> str:
    if path.is_dir():
        if is_dicom_folder(path):
            return "dicom"
        raise VolumeError("folder holds no DICOM files; a volume is a file (" + ", ".join(VOLUME_SUFFIXES)
                          + ") or a folder of one DICOM series")
    lower = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            return _FORMAT_OF_SUFFIX[suffix]
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    raise VolumeError("not a volume file; expected " + ", ".join(VOLUME_SUFFIXES) + " or a DICOM series folder")


def _short_reason(e: BaseException) -> str:
    """One line of a library's error message (SimpleITK's carry a C++ source location first)."""
    text = str(e)
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1]
    text = " ".join(text.split())
    if not text:
        text = type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


# ------------------------------------------------------------------------------------- shapes, affines


def _as_3d_shape(shape: tuple[int, ...], shown: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """The (I, J, K) shape of a stored shape: trailing singleton axes dropped, a 2D image as one slice."""
    dims = [int(s) for s in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise VolumeError(f"volume has shape {tuple(shown or shape)}; only 3D volumes are supported")
    return dims[0], dims[1], dims[2]


def _itk_to_affine(origin: Any, spacing: Any, direction: Any) -> np.ndarray:
    """RAS affine of an ITK geometry (LPS origin, spacing per index axis, direction matrix)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return _LPS_TO_RAS @ lps


def _affine_to_itk(affine: np.ndarray) -> dict[str, tuple[float, ...]]:
    """ITK origin, spacing and direction (LPS, row-major 3x3) of a RAS affine."""
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return {"origin": tuple(float(v) for v in lps[:3, 3]), "spacing": tuple(float(v) for v in spacing),
            "direction": tuple(float(v) for v in direction.ravel())}


def _itk_geometry_3d(dimension: int, origin: Any, spacing: Any, direction: Any) -> dict[str, tuple[float, ...]]:
    """ITK geometry of a 2D, 3D or 4D ITK image cut to (or completed to) its three spatial axes."""
    n = int(dimension)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)
    m = min(n, 3)
    o3, s3, d3 = np.zeros(3), np.ones(3), np.eye(3)
    o3[:m], s3[:m], d3[:m, :m] = np.asarray(origin)[:m], np.asarray(spacing)[:m], d[:m, :m]
    return {"origin": tuple(float(v) for v in o3), "spacing": tuple(float(v) for v in s3),
            "direction": tuple(float(v) for v in d3.ravel())}


def _native_byte_order(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------- NIfTI


def _nifti_load(path: Path) -> Any:
    import nibabel as nib

    img = nib.load(str(path), mmap=False)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"not a single-file NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _nifti_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    img = _nifti_load(path)
    return _as_3d_shape(img.shape), np.asarray(img.affine, dtype=np.float64)


def _read_nifti(path: Path) -> Volume:
    img = _nifti_load(path)
    shape = _as_3d_shape(img.shape)
    proxy = img.dataobj
    raw = _native_byte_order(np.asarray(proxy.get_unscaled()))
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0 or inter != 0.0:  # scl_slope / scl_inter: real values = stored * slope + inter
        array = (raw.astype(np.float32) * np.float32(slope) + np.float32(inter)).astype(np.float32, copy=False)
    else:
        array = raw
    return Volume(array.reshape(shape), np.asarray(img.affine, dtype=np.float64), path, "nifti",
                  img.header.copy())


def _write_nifti(reference: Volume, labels: np.ndarray, target: Path) -> None:
    import nibabel as nib

    hdr = reference.header
    if reference.format == "nifti" and isinstance(hdr, nib.Nifti1Header):  # Nifti2Header is a subclass
        # The reference's own header, with its qform/sform codes and matrices and its pixdim untouched
        # (set_data_shape keeps pixdim[1:4], which the qform uses even for a 2D image).
        hdr = hdr.copy()
        image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_shape(labels.shape)
    else:  # DICOM (or a header-less reference): the RAS affine, marked as scanner coordinates
        hdr = nib.Nifti1Header()
        image_class = nib.Nifti1Image
        hdr.set_data_shape(labels.shape)
        hdr.set_qform(reference.affine, code="scanner")
        hdr.set_sform(reference.affine, code="scanner")
        hdr.set_xyzt_units("mm")
    hdr.set_data_dtype(labels.dtype)
    hdr.set_slope_inter(1.0, 0.0)  # labels are stored exactly, not scaled
    hdr.set_intent("none")
    hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
    # affine=None: nibabel writes the header's geometry as it is instead of re-deriving it from an affine.
    image_class(labels, None, header=hdr).to_filename(str(target))


# ---------------------------------------------------------------------------------------------- NRRD


def _nrrd_layout(header: dict) -> tuple[list[int], list[bool]]:
    """Sizes of all axes and which of them are spatial (a 'space directions' row, or a spatial kind)."""
    sizes = [int(s) for s in np.atleast_1d(header["sizes"])]
    directions = header.get("space directions")
    if directions is not None:
        spatial = []
        for row in directions:
            values = None if row is None else np.asarray(row, dtype=np.float64)
            spatial.append(values is not None and values.size > 0 and bool(np.all(np.isfinite(values))))
    elif header.get("kinds") is not None:
        spatial = [str(k).lower() in _NRRD_SPATIAL_KINDS for k in header["kinds"]]
    else:
        spatial = [True] * len(sizes)
    if len(spatial) != len(sizes):
        raise VolumeError(f"NRRD header describes {len(spatial)} axes for {len(sizes)} sizes")
    return sizes, spatial


def _nrrd_space_signs(header: dict) -> tuple[float, float, float]:
    space = header.get("space")
    if space is None:
        return _NRRD_SPACE_SIGNS[_NRRD_DEFAULT_SPACE]
    signs = _NRRD_SPACE_SIGNS.get(str(space).lower())
    if signs is None:
        raise VolumeError(f"NRRD space {space!r} is not supported; expected left-posterior-superior, "
                          "right-anterior-superior or left-anterior-superior")
    return signs


def _nrrd_geometry_of_header(header: dict) -> tuple[tuple[int, int, int], np.ndarray, list[int]]:
    """(shape (I, J, K), RAS affine, the stored axes that hold the I, J, K dimensions) of a NRRD header."""
    sizes, spatial = _nrrd_layout(header)
    keep = [a for a in range(len(sizes)) if spatial[a] or sizes[a] != 1]  # drop singleton non-spatial axes
    if any(not spatial[a] for a in keep) or len(keep) not in (2, 3):
        raise VolumeError(f"volume has shape {tuple(sizes)}; only 3D volumes are supported")
    shape = _as_3d_shape(tuple(sizes[a] for a in keep))
    native = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        cols = [np.asarray(directions[a], dtype=np.float64) for a in keep]
        if any(c.shape != (3,) for c in cols):
            raise VolumeError("only NRRD volumes in a 3D space are supported")
    else:
        spacings = header.get("spacings")
        cols = []
        for n, a in enumerate(keep):
            step = float(spacings[a]) if spacings is not None and np.isfinite(float(spacings[a])) else 1.0
            cols.append(np.eye(3)[n] * step)
    if len(cols) == 2:  # a 2D image: one slice along the normal of its plane
        normal = np.cross(cols[0], cols[1])
        cols.append(normal / np.linalg.norm(normal) if np.linalg.norm(normal) > 0 else np.eye(3)[2])
    native[:3, :3] = np.stack(cols, axis=1)
    origin = header.get("space origin")
    if origin is not None:
        native[:3, 3] = np.asarray(origin, dtype=np.float64)
    affine = np.diag([*_nrrd_space_signs(header), 1.0]) @ native
    return shape, affine, keep


def _nrrd_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    import nrrd

    shape, affine, _ = _nrrd_geometry_of_header(nrrd.read_header(str(path)))
    return shape, affine


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    data, header = nrrd.read(str(path), index_order="F")  # 'F': axes in the header's order, i.e. (I, J, K)
    shape, affine, _ = _nrrd_geometry_of_header(header)
    array = _native_byte_order(np.asarray(data)).reshape(shape, order="A")
    return Volume(array, affine, path, "nrrd", header)


def _write_nrrd(reference: Volume, labels: np.ndarray, target: Path) -> None:
    import nrrd

    ref_header = reference.header if reference.format == "nrrd" and isinstance(reference.header, dict) else {}
    space = ref_header.get("space")
    if space is None or str(space).lower() not in _NRRD_SPACE_SIGNS:
        space = _NRRD_DEFAULT_SPACE
    native = np.diag([*_NRRD_SPACE_SIGNS[str(space).lower()], 1.0]) @ np.asarray(reference.affine, np.float64)
    header: dict[str, Any] = {
        "dimension": 3,
        "space": space,
        "space directions": native[:3, :3].T,  # one row per index axis
        "space origin": native[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    if ref_header.get("space units") is not None:
        header["space units"] = list(ref_header["space units"])
    nrrd.write(str(target), labels, header, index_order="F")


# ------------------------------------------------------------------------------ MetaImage and DICOM (ITK)


def _itk_array(image: Any) -> np.ndarray:
    """Pixels of a SimpleITK image in index order (I, J, K[, T][, components])."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (K, J, I) for 3D, components last
    spatial = image.GetDimension()
    order = list(range(spatial))[::-1] + list(range(spatial, array.ndim))
    return _native_byte_order(array.transpose(order))


def _itk_shape(size: Any, components: int) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    shown = tuple(int(s) for s in size) + ((int(components),) if components != 1 else ())
    return _as_3d_shape(shown), shown


def _metaimage_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    shape, _ = _itk_shape(reader.GetSize(), reader.GetNumberOfComponents())
    geo = _itk_geometry_3d(reader.GetDimension(), reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
    return shape, _itk_to_affine(**geo)


def _volume_from_itk(image: Any, path: Path, fmt: str, extra: dict[str, Any] | None = None,
                     force_float: bool = False) -> Volume:
    shape, _ = _itk_shape(image.GetSize(), image.GetNumberOfComponentsPerPixel())
    array = _itk_array(image).reshape(shape, order="A")
    if force_float or array.dtype == np.float64:
        array = array.astype(np.float32)
    geo = _itk_geometry_3d(image.GetDimension(), image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return Volume(array, _itk_to_affine(**geo), path, fmt, {**geo, **(extra or {})})


def _read_metaimage(path: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    _itk_shape(reader.GetSize(), reader.GetNumberOfComponents())  # refuse 4D before decoding
    return _volume_from_itk(reader.Execute(), path, "metaimage")


def _write_metaimage(reference: Volume, labels: np.ndarray, target: Path) -> None:
    import SimpleITK as sitk

    geo = reference.header if isinstance(reference.header, dict) and "direction" in reference.header \
        else _affine_to_itk(reference.affine)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    image.SetOrigin(tuple(geo["origin"]))
    image.SetSpacing(tuple(geo["spacing"]))
    image.SetDirection(tuple(geo["direction"]))
    sitk.WriteImage(image, str(target), True)  # True: compressed pixel data


def _dicom_series_files(folder: Path) -> tuple[str, tuple[str, ...]]:
    """(series UID, file names sorted by slice position) of the one DICOM series in ``folder``."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise VolumeError("folder holds no readable DICOM series")
    if len(ids) > 1:
        raise VolumeError(f"folder holds {len(ids)} DICOM series; put each series in a folder of its own")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    if not files:
        raise VolumeError("folder holds no readable DICOM series")
    return ids[0], tuple(files)


def _dicom_file_info(file: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _dicom_geometry(folder: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Series geometry from the headers of the first and last slice (no pixel decoding), as ITK's series
    reader computes it: the first slice's origin and direction, the slice step from the end positions."""
    _, files = _dicom_series_files(folder)
    first = _dicom_file_info(files[0])
    size = list(first.GetSize())
    geo = _itk_geometry_3d(first.GetDimension(), first.GetOrigin(), first.GetSpacing(), first.GetDirection())
    if len(files) > 1:
        last = np.asarray(_dicom_file_info(files[-1]).GetOrigin()[:3], dtype=np.float64)
        step = float(np.linalg.norm(last - np.asarray(geo["origin"]))) / (len(files) - 1)
        size = size[:2] + [len(files)]
        geo["spacing"] = (*geo["spacing"][:2], step if step > 0 else geo["spacing"][2])
    shape, _ = _itk_shape(size, first.GetNumberOfComponents())
    return shape, _itk_to_affine(**geo)


def _tag_number(reader: Any, slice_index: int, key: str, default: float) -> float:
    """A numeric DICOM tag of one slice of a series reader (``default`` when absent or not a number)."""
    if not reader.HasMetaDataKey(slice_index, key):
        return default
    try:
        return float(reader.GetMetaData(slice_index, key).strip() or default)
    except ValueError:
        return default


def _read_dicom(folder: Path) -> Volume:
    import SimpleITK as sitk

    uid, files = _dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()  # rescale slope/intercept applied by GDCM
    rescaled = any(_tag_number(reader, n, key, identity) != identity for n in range(len(files))
                   for key, identity in (("0028|1053", 1.0), ("0028|1052", 0.0)))  # slope, intercept
    return _volume_from_itk(image, folder, "dicom", {"series_uid": uid, "files": files}, force_float=rescaled)


# ----------------------------------------------------------------------------------------- public API


_READERS = {"nifti": _read_nifti, "nrrd": _read_nrrd, "metaimage": _read_metaimage, "dicom": _read_dicom}
_GEOMETRY = {"nifti": _nifti_geometry, "nrrd": _nrrd_geometry, "metaimage": _metaimage_geometry,
             "dicom": _dicom_geometry}


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
    volume = _run(f"cannot read this {_FORMAT_NAMES[fmt]} volume", _READERS[fmt], path)
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
    return _run(f"cannot read this {_FORMAT_NAMES[fmt]} volume", _GEOMETRY[fmt], path)


_WRITERS = {"nifti": _write_nifti, "nrrd": _write_nrrd, "metaimage": _write_metaimage, "dicom": _write_nifti}


def _output_suffix(reference: Volume) -> str:
    if reference.format == "nifti":
        return ".nii" if reference.path.name.lower().endswith(".nii") else ".nii.gz"
    return {"nrrd": ".nrrd", "metaimage": ".mha", "dicom": ".nii.gz"}.get(reference.format, ".nii.gz")


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
    fmt = reference.format if reference.format in _WRITERS else "dicom"
    suffix = _output_suffix(reference)
    stem = stem or volume_stem(reference.path) or reference.path.name
    target = Path(out_dir) / f"{stem}{suffix}"

    def write(tmp: Path) -> None:
        # The libraries pick the file format (and gzip) from the extension, and atomic_write's temporary
        # ends in '.tmp': write a sibling with the right extension, then move it onto the temporary.
        side = tmp.with_name(tmp.name + suffix)
        try:
            _run(f"cannot write {target.name}", _WRITERS[fmt], reference, labels, side, os_errors=False)
            os.replace(side, tmp)
        finally:
            if side.exists():
                side.unlink()

    return atomic_write(target, write)
