"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) through nibabel, whose affine is already voxel -> RAS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import Volume, VolumeError, VolumeFormat, as_3d_shape, native_byte_order


def _load(path: Path) -> Any:
    import nibabel as nib

    img = nib.load(str(path), mmap=False)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"not a single-file NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``(I, J, K)`` and RAS affine from the header."""
    img = _load(path)
    return as_3d_shape(img.shape), np.asarray(img.affine, dtype=np.float64)


def read(path: Path) -> Volume:
    """The voxels, scaled by ``scl_slope``/``scl_inter`` (then float32) when the header says so."""
    img = _load(path)
    shape = as_3d_shape(img.shape)
    proxy = img.dataobj
    raw = native_byte_order(np.asarray(proxy.get_unscaled()))
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0 or inter != 0.0:  # scl_slope / scl_inter: real values = stored * slope + inter
        array = (raw.astype(np.float32) * np.float32(slope) + np.float32(inter)).astype(np.float32, copy=False)
    else:
        array = raw
    return Volume(array.reshape(shape), np.asarray(img.affine, dtype=np.float64), path, "nifti",
                  img.header.copy())


def write(reference: Volume, labels: np.ndarray, target: Path) -> None:
    """Labels with the reference's NIfTI header (qform/sform kept), or its RAS affine for other formats."""
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


def _output_suffix(reference: Volume) -> str:
    return ".nii" if reference.path.name.lower().endswith(".nii") else ".nii.gz"


FORMAT = VolumeFormat("nifti", "NIfTI", (".nii.gz", ".nii"), read, geometry, write, _output_suffix)
