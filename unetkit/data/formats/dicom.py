"""DICOM series (a folder of slice files) through SimpleITK/GDCM.

Before any pixel is decoded, every slice's header is read and the slice positions checked: projected on
the slice normal (the cross product of the ImageOrientationPatient row and column cosines), the
ImagePositionPatient values must be distinct and evenly spaced. ITK's series reader derives the slice
spacing from the end slices only, so a missing or duplicated slice would otherwise give a volume whose
spacing and anatomy silently disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import Volume, VolumeCheckError, VolumeError, VolumeFormat
from . import nifti
from .itk import geometry_3d, itk_shape, itk_to_affine, volume_from_itk

#: Slice steps may differ from the series' step by this fraction or by :data:`STEP_TOLERANCE_MM`,
#: whichever is larger (rounding in the written positions); slices closer than that are duplicates.
STEP_TOLERANCE = 0.01
STEP_TOLERANCE_MM = 0.01

_POSITION, _ORIENTATION = "0020|0032", "0020|0037"  # ImagePositionPatient, ImageOrientationPatient


def series_files(folder: Path) -> tuple[str, tuple[str, ...]]:
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


def _file_info(file: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _numbers(reader: Any, key: str, count: int) -> np.ndarray | None:
    """A multi-valued numeric tag (``count`` numbers separated by backslashes), ``None`` when absent or bad."""
    if not reader.HasMetaDataKey(key):
        return None
    try:
        values = np.array([float(v) for v in reader.GetMetaData(key).strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (count,) and np.all(np.isfinite(values)) else None


def slice_position_problem(positions: Sequence[float], names: Sequence[str]) -> str | None:
    """What is wrong with slice positions (mm along the slice normal, one per file in ``names``), or ``None``.

    Duplicates: two slices closer than the tolerance. Gaps: a step larger than the series' smallest step
    by more than :data:`STEP_TOLERANCE` (relative) and :data:`STEP_TOLERANCE_MM`.
    """
    if len(positions) < 2:
        return None
    order = np.argsort(np.asarray(positions, dtype=np.float64), kind="stable")
    z = np.asarray(positions, dtype=np.float64)[order]
    steps = np.diff(z)
    dup = np.flatnonzero(steps <= STEP_TOLERANCE_MM)
    if dup.size:
        i = int(dup[0])
        a, b = names[order[i]], names[order[i + 1]]
        return (f"two slices at {z[i]:.4g} mm along the slice normal ({Path(a).name} and {Path(b).name}); remove "
                "the duplicate or re-export the series complete")
    step = float(steps.min())
    tolerance = max(STEP_TOLERANCE * step, STEP_TOLERANCE_MM)
    bad = np.flatnonzero(steps - step > tolerance)
    if not bad.size:
        return None
    i = int(bad[0])
    where = f"between {z[i]:.4g} mm and {z[i + 1]:.4g} mm along the slice normal"
    missing = round(steps[i] / step) - 1
    what = f"{missing} slice(s) missing {where}" if missing >= 1 else f"uneven slice spacing {where}"
    return f"{what} (a {steps[i]:.4g} mm step; the others are {step:.4g} mm); re-export the series complete"


def check_series(folder: Path, files: Sequence[str]) -> list[Any]:
    """Refuse a series with a missing or duplicated slice (:class:`VolumeCheckError` naming ``folder``);
    return the files' header readers. Files without position or orientation tags are not checked."""
    infos = [_file_info(f) for f in files]
    positions, orientations = [], []
    for info in infos:
        ipp, iop = _numbers(info, _POSITION, 3), _numbers(info, _ORIENTATION, 6)
        if ipp is None or iop is None:
            return infos
        positions.append(ipp)
        orientations.append(iop)
    iop = orientations[0]
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 1e-6:
        raise VolumeCheckError(folder, "DICOM ImageOrientationPatient has parallel row and column directions; "
                                       "re-export the series")
    normal /= np.linalg.norm(normal)
    problem = slice_position_problem([float(p @ normal) for p in positions], list(files))
    if problem:
        raise VolumeCheckError(folder, f"DICOM series: {problem}")
    return infos


def geometry(folder: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Series geometry from the slice headers (no pixel decoding), as ITK's series reader computes it:
    the first slice's origin and direction, the slice step from the end positions."""
    _, files = series_files(folder)
    infos = check_series(folder, files)
    first = infos[0]
    size = list(first.GetSize())
    geo = geometry_3d(first.GetDimension(), first.GetOrigin(), first.GetSpacing(), first.GetDirection())
    if len(files) > 1:
        last = np.asarray(infos[-1].GetOrigin()[:3], dtype=np.float64)
        step = float(np.linalg.norm(last - np.asarray(geo["origin"]))) / (len(files) - 1)
        size = size[:2] + [len(files)]
        geo["spacing"] = (*geo["spacing"][:2], step if step > 0 else geo["spacing"][2])
    return itk_shape(size, first.GetNumberOfComponents()), itk_to_affine(**geo)


def _tag_number(reader: Any, slice_index: int, key: str, default: float) -> float:
    """A numeric DICOM tag of one slice of a series reader (``default`` when absent or not a number)."""
    if not reader.HasMetaDataKey(slice_index, key):
        return default
    try:
        return float(reader.GetMetaData(slice_index, key).strip() or default)
    except ValueError:
        return default


def read(folder: Path) -> Volume:
    """The series' voxels (rescale slope/intercept applied by GDCM: float32 when they are not 1/0)."""
    import SimpleITK as sitk

    uid, files = series_files(folder)
    check_series(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    rescaled = any(_tag_number(reader, n, key, identity) != identity for n in range(len(files))
                   for key, identity in (("0028|1053", 1.0), ("0028|1052", 0.0)))  # slope, intercept
    return volume_from_itk(image, folder, "dicom", {"series_uid": uid, "files": files}, force_float=rescaled)


#: Label volumes of a DICOM series are written as NIfTI with the series' RAS affine.
FORMAT = VolumeFormat("dicom", "DICOM series", (), read, geometry, nifti.write, lambda reference: ".nii.gz",
                      folder=True)
