"""What the ITK-read formats (MetaImage, DICOM) share: LPS <-> RAS geometry and ``(K, J, I)`` arrays.

ITK works in LPS and its arrays are ``(K, J, I)``; an ITK geometry is an origin, a spacing per index axis
and a row-major direction matrix whose columns are the index axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import Volume, as_3d_shape, native_byte_order

# ITK's world space is LPS: flipping x and y turns it into RAS (and back; the map is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_to_affine(origin: Any, spacing: Any, direction: Any) -> np.ndarray:
    """RAS affine of an ITK geometry (LPS origin, spacing per index axis, direction matrix)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ lps


def affine_to_itk(affine: np.ndarray) -> dict[str, tuple[float, ...]]:
    """ITK origin, spacing and direction (LPS, row-major 3x3) of a RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return {"origin": tuple(float(v) for v in lps[:3, 3]), "spacing": tuple(float(v) for v in spacing),
            "direction": tuple(float(v) for v in direction.ravel())}


def geometry_3d(dimension: int, origin: Any, spacing: Any, direction: Any) -> dict[str, tuple[float, ...]]:
    """ITK geometry of a 2D, 3D or 4D ITK image cut to (or completed to) its three spatial axes."""
    n = int(dimension)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)
    m = min(n, 3)
    o3, s3, d3 = np.zeros(3), np.ones(3), np.eye(3)
    o3[:m], s3[:m], d3[:m, :m] = np.asarray(origin)[:m], np.asarray(spacing)[:m], d[:m, :m]
    return {"origin": tuple(float(v) for v in o3), "spacing": tuple(float(v) for v in s3),
            "direction": tuple(float(v) for v in d3.ravel())}


def itk_shape(size: Any, components: int) -> tuple[int, int, int]:
    """The ``(I, J, K)`` shape of an ITK size (refusing what is not 3D, components included)."""
    shown = tuple(int(s) for s in size) + ((int(components),) if components != 1 else ())
    return as_3d_shape(shown)


def _itk_array(image: Any) -> np.ndarray:
    """Pixels of a SimpleITK image in index order (I, J, K[, T][, components])."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)  # (K, J, I) for 3D, components last
    spatial = image.GetDimension()
    order = list(range(spatial))[::-1] + list(range(spatial, array.ndim))
    return native_byte_order(array.transpose(order))


def volume_from_itk(image: Any, path: Path, fmt: str, extra: dict[str, Any] | None = None,
                    force_float: bool = False) -> Volume:
    """A :class:`Volume` of a SimpleITK image; its header keeps the ITK geometry for writing back."""
    shape = itk_shape(image.GetSize(), image.GetNumberOfComponentsPerPixel())
    array = _itk_array(image).reshape(shape, order="A")
    if force_float or array.dtype == np.float64:
        array = array.astype(np.float32)
    geo = geometry_3d(image.GetDimension(), image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return Volume(array, itk_to_affine(**geo), path, fmt, {**geo, **(extra or {})})
