"""Volume I/O: NIfTI, NRRD, MetaImage and DICOM series keep their geometry through read and write.

Every file is built here from one known oblique, anisotropic geometry, with each library used directly
(nibabel, pynrrd, SimpleITK) following that format's own convention, so reading them all back to the
same array and RAS affine checks the axis-order and LPS<->RAS conversions of ``unetkit.data.volume_io``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from unetkit.data.volume_io import (
    VOLUME_SUFFIXES,
    Volume,
    VolumeError,
    is_dicom_folder,
    read_volume,
    read_volume_geometry,
    volume_stem,
    write_label_volume,
)

SHAPE = (12, 10, 6)  # (I, J, K)
SPACING = (0.7, 0.9, 2.5)
ORIGIN_RAS = (-30.5, 12.25, 40.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ras_affine(flip_i: bool = False) -> np.ndarray:
    """Voxel -> RAS: oblique rotation, anisotropic spacing, non-zero origin (optionally left-handed)."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(20, -15, 30) * np.asarray(SPACING)
    affine[:3, 3] = ORIGIN_RAS
    if flip_i:
        affine[:3, 0] *= -1
    return affine


AFFINE = _ras_affine()


def _itk_geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """ITK origin, spacing, direction (LPS, row-major) of a RAS affine."""
    lps = LPS_TO_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return tuple(lps[:3, 3]), tuple(spacing), tuple((lps[:3, :3] / spacing).ravel())


def _image() -> np.ndarray:
    """A CT-like int16 volume in HU whose every voxel differs along every axis."""
    i, j, k = np.indices(SHAPE)
    return (i * 60 + j * 7 + k * 100 - 1000).astype(np.int16)


def _labels() -> np.ndarray:
    i, j, k = np.indices(SHAPE)
    return ((i // 4 + j // 5 + k // 3) % 4).astype(np.uint8)


# ------------------------------------------------------------------------ writers, one per format


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)  # scanner
    img.set_sform(affine, code=2)  # aligned: distinct codes, to see them kept
    img.to_filename(str(path))
    return path


def _write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray, space: str = "left-posterior-superior") -> Path:
    native = (LPS_TO_RAS if space == "left-posterior-superior" else np.eye(4)) @ affine
    header = {"space": space, "space directions": native[:3, :3].T, "space origin": native[:3, 3],
              "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(path), array, header, index_order="F")
    return path


def _write_mha(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (K, J, I)
    origin, spacing, direction = _itk_geometry(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _write_dicom_series(folder: Path, array: np.ndarray, affine: np.ndarray, *, intercept: int = 0,
                        extension: str = "") -> Path:
    """One CT slice file per K index, with SimpleITK's GDCM writer and the geometry tags set by hand:
    ImagePositionPatient per slice, ImageOrientationPatient, SliceThickness (PixelSpacing comes from the
    slice image's spacing). A non-zero rescale intercept makes GDCM store ``value - intercept``."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    origin, spacing, direction = _itk_geometry(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    d = direction
    iop = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))  # row (I) and column (J) cosines
    uid = "1.2.826.0.1.3680043.8.498.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # named explicitly: the files may have no extension
    for k in range(array.shape[2]):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0010|0010": "Test^Volume", "0020|000d": uid + ".1", "0020|000e": uid + ".2",
                "0008|0018": f"{uid}.3.{k + 1}", "0020|0013": str(k + 1), "0020|0037": iop,
                "0020|0032": "\\".join(f"{v:.10g}" for v in position), "0018|0050": f"{spacing[2]:.10g}",
                "0028|1052": str(intercept), "0028|1053": "1"}
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k:04d}{extension}"))
        writer.Execute(slice_k)
    return folder


def _assert_geometry(volume: Volume, affine: np.ndarray, shape: tuple[int, int, int] = SHAPE) -> None:
    assert volume.array.shape == shape
    assert volume.affine.shape == (4, 4) and volume.affine.dtype == np.float64
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    assert read_volume_geometry(volume.path)[0] == shape
    np.testing.assert_allclose(read_volume_geometry(volume.path)[1], volume.affine, atol=1e-6)


# --------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_header_geometry(tmp_path, suffix):
    affine = _ras_affine(flip_i=True)  # left-handed, as most scanner NIfTIs are (qfac = -1)
    ref = read_volume(_write_nifti(tmp_path / f"case_001{suffix}", _image(), affine))
    assert ref.format == "nifti" and ref.array.dtype == np.int16
    np.testing.assert_array_equal(ref.array, _image())
    _assert_geometry(ref, affine)
    np.testing.assert_allclose(ref.spacing, SPACING, atol=1e-5)

    out = write_label_volume(ref, _labels().astype(np.int64), tmp_path / "pred")
    assert out == tmp_path / "pred" / f"case_001{suffix}"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporaries left
    back = read_volume(out, label=True)
    np.testing.assert_array_equal(back.array, _labels())
    _assert_geometry(back, affine)

    img = nib.load(str(out))
    hdr = img.header
    assert hdr.get_data_dtype() == np.uint8
    assert hdr.get_qform(coded=True)[1] == 1 and hdr.get_sform(coded=True)[1] == 2
    np.testing.assert_allclose(hdr.get_sform(), ref.header.get_sform(), atol=1e-6)
    np.testing.assert_allclose(hdr.get_qform(), ref.header.get_qform(), atol=1e-6)
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asarray(img.dataobj.get_unscaled()), _labels())

    many = _labels().astype(np.int32) * 100  # up to 300: needs uint16
    out16 = write_label_volume(ref, many, tmp_path / "pred", stem="many")
    assert out16.name == f"many{suffix}" and nib.load(str(out16)).get_data_dtype() == np.uint16
    np.testing.assert_array_equal(read_volume(out16).array, many)


def _round_trip(ref_path: Path, fmt: str) -> tuple[Volume, Path]:
    """Read a written scan (checking its array and geometry), write labels for it, check their geometry."""
    ref = read_volume(ref_path)
    assert ref.format == fmt and ref.array.dtype == np.int16
    np.testing.assert_array_equal(ref.array, _image())
    _assert_geometry(ref, AFFINE)
    out = write_label_volume(ref, _labels(), ref_path.parent / "pred")
    assert out.name == ref_path.name
    _assert_geometry(read_volume(out), AFFINE)
    return ref, out


def test_nrrd_round_trip_keeps_space_directions_origin(tmp_path):
    ref_path = _write_nrrd(tmp_path / "case_002.nrrd", _image(), AFFINE)
    _, out = _round_trip(ref_path, "nrrd")
    data, header = nrrd.read(str(out), index_order="F")
    ref_header = nrrd.read_header(str(ref_path))
    assert header["space"] == ref_header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], ref_header["space directions"], atol=1e-9)
    np.testing.assert_allclose(header["space origin"], ref_header["space origin"], atol=1e-9)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, _labels())


def test_seg_nrrd_layers(tmp_path):
    """A .seg.nrrd with its layer axis first: one layer is squeezed away, two layers are refused."""
    native = LPS_TO_RAS @ AFFINE
    for layers in (1, 2):
        header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
                  "space directions": np.vstack([np.full(3, np.nan), native[:3, :3].T]),
                  "space origin": native[:3, 3], "encoding": "gzip"}
        data = np.stack([_labels()] * layers)
        nrrd.write(str(tmp_path / f"seg{layers}.seg.nrrd"), data, header, index_order="F")
    vol = read_volume(tmp_path / "seg1.seg.nrrd", label=True)
    np.testing.assert_array_equal(vol.array, _labels())
    _assert_geometry(vol, AFFINE)
    for call in (read_volume, read_volume_geometry):
        with pytest.raises(ValueError, match=r"shape \(2, 12, 10, 6\); only 3D volumes are supported"):
            call(tmp_path / "seg2.seg.nrrd")


def test_metaimage_round_trip_keeps_itk_geometry(tmp_path):
    ref_path = _write_mha(tmp_path / "case_003.mha", _image(), AFFINE)
    _, out = _round_trip(ref_path, "metaimage")
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(ref_path))
    assert written.GetSize() == original.GetSize() == SHAPE
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(written, get)(), getattr(original, get)(), atol=1e-6)
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), _labels())


def test_dicom_series_read_and_write_back_as_nifti(tmp_path):
    folder = _write_dicom_series(tmp_path / "patient_7", _image(), AFFINE, intercept=-1024)
    assert not any(p.suffix for p in folder.iterdir())  # DICOM files without extension
    assert is_dicom_folder(folder) and volume_stem(folder) == "patient_7"
    ref = read_volume(folder)
    assert ref.format == "dicom" and ref.path == folder
    assert ref.array.dtype == np.float32  # rescale intercept applied: HU as float32
    np.testing.assert_array_equal(ref.array, _image())
    _assert_geometry(ref, AFFINE)  # also: header-only geometry equals the full read

    out = write_label_volume(ref, _labels(), tmp_path / "pred")
    assert out == tmp_path / "pred" / "patient_7.nii.gz"
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, _labels())
    _assert_geometry(back, AFFINE)
    hdr = nib.load(str(out)).header
    assert hdr.get_sform(coded=True)[1] == 1 and hdr.get_qform(coded=True)[1] == 1


def test_one_volume_reads_the_same_from_every_format(tmp_path):
    image = _image()
    paths = [
        _write_nifti(tmp_path / "v.nii.gz", image, AFFINE),
        _write_nrrd(tmp_path / "v.nrrd", image, AFFINE),
        _write_nrrd(tmp_path / "v_ras.nrrd", image, AFFINE, space="right-anterior-superior"),
        _write_mha(tmp_path / "v.mha", image, AFFINE),
        _write_dicom_series(tmp_path / "v_dicom", image, AFFINE, extension=".dcm"),
    ]
    for path in paths:
        vol = read_volume(path)
        assert vol.array.dtype == np.int16, path.name  # no rescale anywhere: the stored type
        np.testing.assert_array_equal(vol.array, image, err_msg=path.name)
        np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-4, err_msg=path.name)
        np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5, err_msg=path.name)
        shape, affine = read_volume_geometry(path)
        assert shape == SHAPE
        np.testing.assert_allclose(affine, AFFINE, atol=1e-4, err_msg=path.name)


def test_nifti_scaling_2d_and_singleton(tmp_path):
    raw = _image()
    nib.Nifti1Image(raw, AFFINE).to_filename(str(tmp_path / "scaled.nii"))
    with open(tmp_path / "scaled.nii", "r+b") as f:  # patch scl_slope, scl_inter (NIfTI-1 bytes 112..119)
        f.seek(112)
        f.write(struct.pack("<ff", 2.0, -5.0))
    scaled = read_volume(tmp_path / "scaled.nii")
    assert scaled.array.dtype == np.float32
    np.testing.assert_array_equal(scaled.array, raw.astype(np.float32) * 2 - 5)

    nib.Nifti1Image(raw[..., None], AFFINE).to_filename(str(tmp_path / "t1.nii.gz"))
    assert read_volume(tmp_path / "t1.nii.gz").array.shape == SHAPE  # trailing singleton dropped

    flat_img = nib.Nifti1Image(raw[:, :, 0], AFFINE)  # 2D, qform only: its K column comes from pixdim[3]
    flat_img.set_qform(AFFINE, code=1)
    flat_img.set_sform(None, code=0)
    flat = tmp_path / "flat.nii.gz"
    flat_img.to_filename(str(flat))
    vol = read_volume(flat)
    assert vol.array.shape == (12, 10, 1) and read_volume_geometry(flat)[0] == (12, 10, 1)
    out = write_label_volume(vol, _labels()[:, :, :1], tmp_path / "pred")
    back = read_volume(out)
    assert back.array.shape == (12, 10, 1)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-4)
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-4)

    nib.Nifti1Image(np.where(_labels() > 1, 2.0, 0.0).astype(np.float32), AFFINE).to_filename(
        str(tmp_path / "float_labels.nii.gz"))
    labels = read_volume(tmp_path / "float_labels.nii.gz", label=True).array
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 2}


def test_volume_stem(tmp_path):
    for name in ("a.nii.gz", "a.nii", "a.seg.nrrd", "a.nrrd", "a.mha", "a.mhd", "A.NII.GZ"):
        assert volume_stem(tmp_path / name) == name[:1], name
    assert volume_stem(Path("case.v2.nii.gz")) == "case.v2"
    for name in ("a.png", "a.nii.gz.tmp", ".a.nii.gz", ".nii.gz", "a.dcm"):
        assert volume_stem(tmp_path / name) is None, name
    dicom = _write_dicom_series(tmp_path / "series_9", _image()[:, :, :2], AFFINE)
    assert volume_stem(dicom) == "series_9"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("not DICOM")
    assert volume_stem(other) is None and not is_dicom_folder(other)
    assert len(VOLUME_SUFFIXES) == 6 and VOLUME_SUFFIXES[0] == ".nii.gz"


def test_4d_volume_is_refused(tmp_path):
    nib.Nifti1Image(np.zeros((*SHAPE, 2), np.int16), AFFINE).to_filename(str(tmp_path / "dwi.nii.gz"))
    for call in (read_volume, read_volume_geometry):
        with pytest.raises(ValueError, match=r"^volume has shape \(12, 10, 6, 2\); only 3D volumes are supported$"):
            call(tmp_path / "dwi.nii.gz")
    image = sitk.GetImageFromArray(np.zeros((2, 6, 10, 12), np.int16), isVector=False)  # 4D: (T, K, J, I)
    sitk.WriteImage(image, str(tmp_path / "dyn.mha"))
    with pytest.raises(ValueError, match=r"shape \(12, 10, 6, 2\); only 3D"):
        read_volume(tmp_path / "dyn.mha")


def test_unreadable_files_raise_short_errors(tmp_path):
    for name in ("bad.nii.gz", "bad.nii", "bad.nrrd", "bad.mha"):
        (tmp_path / name).write_bytes(b"\x00garbage, not a volume\n" * 20)
        for call in (read_volume, read_volume_geometry):
            with pytest.raises(VolumeError) as info:
                call(tmp_path / name)
            message = str(info.value)
            assert message.startswith("cannot read this ") and "\n" not in message and len(message) < 300, message
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a volume file"):
        read_volume(tmp_path / "notes.txt")
    broken = tmp_path / "broken_series"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(VolumeError, match="no readable DICOM series"):
        read_volume(broken)


def test_write_label_volume_checks_labels(tmp_path):
    ref = read_volume(_write_mha(tmp_path / "c.mha", _image(), AFFINE))
    with pytest.raises(ValueError, match="shape"):
        write_label_volume(ref, _labels()[:, :, :3], tmp_path / "pred")
    with pytest.raises(ValueError, match="integer"):
        write_label_volume(ref, _labels().astype(np.float32), tmp_path / "pred")
    with pytest.raises(ValueError, match="negative"):
        write_label_volume(ref, _labels().astype(np.int8) - 1, tmp_path / "pred")
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())
