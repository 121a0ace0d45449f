"""MetaImage volumes (``.mha``, ``.mhd`` + raw) through SimpleITK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import Volume, VolumeFormat
from .itk import affine_to_itk, geometry_3d, itk_shape, itk_to_affine, volume_from_itk


def _info(path: Path) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``(I, J, K)`` and RAS affine from the header (ITK's image information)."""
    reader = _info(path)
    shape = itk_shape(reader.GetSize(), reader.GetNumberOfComponents())
    geo = geometry_3d(reader.GetDimension(), reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
    return shape, itk_to_affine(**geo)


def read(path: Path) -> Volume:
    """The voxels (4D and multi-component images refused before decoding)."""
    reader = _info(path)
    itk_shape(reader.GetSize(), reader.GetNumberOfComponents())  # refuse 4D before decoding
    return volume_from_itk(reader.Execute(), path, "metaimage")


def write(reference: Volume, labels: np.ndarray, target: Path) -> None:
    """Labels as compressed ``.mha`` with the reference's ITK origin, spacing and direction."""
    import SimpleITK as sitk

    geo = reference.header if isinstance(reference.header, dict) and "direction" in reference.header \
        else affine_to_itk(reference.affine)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    image.SetOrigin(tuple(geo["origin"]))
    image.SetSpacing(tuple(geo["spacing"]))
    image.SetDirection(tuple(geo["direction"]))
    sitk.WriteImage(image, str(target), True)  # True: compressed pixel data


FORMAT = VolumeFormat("metaimage", "MetaImage", (".mha", ".mhd"), read, geometry, write, lambda reference: ".mha")
