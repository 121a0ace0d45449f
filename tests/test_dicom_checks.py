"""DICOM series with a missing or duplicated slice are refused (one line: series folder, positions, fix)
instead of read with a silently wrong slice spacing. Series are written with SimpleITK's GDCM writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from unetkit.data import DatasetError
from unetkit.data.formats.dicom import slice_position_problem
from unetkit.data.volume_io import VolumeCheckError, read_volume, read_volume_geometry
from unetkit.data.volumes import scan_volumes

UID = "1.2.826.0.1.3680043.8.498.777"
# Oblique rows/columns (cosines in LPS): the slice normal is their cross product, not the z axis.
ROW, COL = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.sqrt(0.5), -np.sqrt(0.5)])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-20.0, 15.0, 40.0])
BASE = float(ORIGIN @ NORMAL)  # slice positions in messages are mm along the normal from the world origin


def mm(offset: float) -> str:
    return f"{BASE + offset:.4g} mm"


def write_series(folder: Path, offsets: list[float], shape: tuple[int, int] = (5, 4)) -> Path:
    """One 2D slice file per offset (mm along the slice normal), ImagePositionPatient and
    ImageOrientationPatient set by hand; slice ``n`` holds the value ``n``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    iop = "\\".join(f"{v:.10g}" for v in (*ROW, *COL))
    for n, offset in enumerate(offsets):
        image = sitk.GetImageFromArray(np.full(shape, n, np.int16))
        image.SetSpacing((0.8, 0.8))
        position = ORIGIN + offset * NORMAL
        tags = {"0008|0060": "CT", "0020|000d": UID + ".1", "0020|000e": UID + ".2", "0008|0018": f"{UID}.3.{n + 1}",
                "0020|0013": str(n + 1), "0020|0037": iop, "0020|0032": "\\".join(f"{v:.10g}" for v in position),
                "0018|0050": "2.5"}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{n:04d}.dcm"))
        writer.Execute(image)
    return folder


def test_complete_series_reads(tmp_path):
    folder = write_series(tmp_path / "series_ok", [0.0, 2.5, 5.0, 7.5])
    vol = read_volume(folder)
    assert vol.array.shape == (4, 5, 4)
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5), abs=1e-4)
    assert [int(vol.array[0, 0, k]) for k in range(4)] == [0, 1, 2, 3]
    shape, affine = read_volume_geometry(folder)
    assert shape == (4, 5, 4)
    np.testing.assert_allclose(affine, vol.affine, atol=1e-6)


def test_missing_slice_is_refused(tmp_path):
    folder = write_series(tmp_path / "series_gap", [0.0, 2.5, 5.0, 7.5, 10.0])
    (folder / "IM0002.dcm").unlink()  # the slice at 5 mm
    for reader in (read_volume, read_volume_geometry):
        with pytest.raises(VolumeCheckError) as e:
            reader(folder)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{folder}: DICOM series: ")
        assert msg == (f"{folder}: DICOM series: 1 slice(s) missing between {mm(2.5)} and {mm(7.5)} along the "
                       "slice normal (a 5 mm step; the others are 2.5 mm); re-export the series complete")


def test_duplicated_position_is_refused(tmp_path):
    folder = write_series(tmp_path / "series_dup", [0.0, 2.5, 5.0, 5.0, 7.5])
    with pytest.raises(VolumeCheckError) as e:
        read_volume(folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: DICOM series: two slices at {mm(5)} along the slice normal")
    assert "IM0002.dcm" in msg and "IM0003.dcm" in msg and msg.endswith("re-export the series complete")


def test_volume_folder_names_the_case(tmp_path):
    write_series(tmp_path / "images" / "case_1", [0.0, 2.5, 7.5])
    write_series(tmp_path / "masks" / "case_1", [0.0, 2.5, 7.5])
    with pytest.raises(DatasetError) as e:
        scan_volumes(tmp_path, val_fraction=0.0)
    assert str(e.value).startswith(
        f"images/case_1: DICOM series: 1 slice(s) missing between {mm(2.5)} and {mm(7.5)}")


def test_position_rule():
    names = [f"f{i}" for i in range(6)]
    assert slice_position_problem([0.0, 1.25, 2.5, 3.75], names[:4]) is None
    assert slice_position_problem([3.0, 0.0, 1.0, 2.0], names[:4]) is None  # order does not matter
    assert slice_position_problem([0.0, 2.5, 5.004, 7.5], names[:4]) is None  # within 1 % of the step
    assert slice_position_problem([0.0, 2.5, 5.2, 7.7], names[:4]) == (
        "uneven slice spacing between 2.5 mm and 5.2 mm along the slice normal (a 2.7 mm step; the others are 2.5 mm); "
        "re-export the series complete")
    gap = slice_position_problem([0.0, 2.0, 8.0, 10.0], names[:4])
    assert gap is not None and gap.startswith("2 slice(s) missing between 2 mm and 8 mm")
    dup = slice_position_problem([0.0, 1.0, 1.005, 2.0], names[:4])
    assert dup is not None and dup.startswith("two slices at 1 mm") and "(f1 and f2)" in dup
    assert slice_position_problem([4.0], names[:1]) is None
