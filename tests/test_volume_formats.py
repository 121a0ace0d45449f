"""The volume format registry: one module per format, dispatched by file ending (the longest wins)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from unetkit.data.formats import FORMATS
from unetkit.data.volume_io import VOLUME_SUFFIXES, read_volume, volume_formats, write_label_volume


def test_registry_matches_the_suffixes():
    assert [f.name for f in volume_formats()] == ["nifti", "nrrd", "metaimage", "dicom"]
    assert volume_formats() is FORMATS
    assert sorted(s for f in FORMATS for s in f.suffixes) == sorted(VOLUME_SUFFIXES)
    assert [f.name for f in FORMATS if f.folder] == ["dicom"]
    assert [f.title for f in FORMATS] == ["NIfTI", "NRRD", "MetaImage", "DICOM series"]


def test_dispatch_by_longest_ending(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    path = tmp_path / "case.seg.nii.gz"  # .nii.gz, not .nii, and the stem keeps '.seg'
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0])), str(path))
    vol = read_volume(path)
    assert vol.format == "nifti" and vol.spacing == (0.5, 0.5, 2.0)
    np.testing.assert_array_equal(vol.array, data)
    out = write_label_volume(vol, (data % 3).astype(np.uint8), tmp_path / "pred")
    assert out.name == "case.seg.nii.gz"
    np.testing.assert_array_equal(read_volume(out, label=True).array, data % 3)
