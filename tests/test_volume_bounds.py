"""The planning rule as a pure function, and volume geometry bounded before anything is resampled: a
0.001 mm voxel spacing is refused in one line (file, spacing, target shape, limit, ``--spacing``) by the
functions, the folder scan and ``unetkit plan``, instead of allocating terabytes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unetkit.data import DatasetError
from unetkit.data.volume_io import Volume, VolumeCheckError
from unetkit.data.volumes import (
    MAX_SLICE_PIXELS,
    VolumeSettings,
    check_slice_grid,
    plan_volume_settings,
    scan_volumes,
    slice_grid,
    volume_slices,
)

CHILD_MEMORY = 8 << 30  # address space of the CLI child: importing torch alone maps about 4 GiB


def _nii(path: Path, spacing: tuple[float, float, float], shape=(32, 32, 3), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, np.int16)
    data[:4, :4] = 1 if value == 1 else value  # keep label volumes small integers
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def _folder(root: Path) -> Path:
    """Three cases whose headers say 0.001 mm (planned median) and one at 1 mm: resampling the 1 mm case
    to 0.001 mm would make 32000 x 32000 slices (4 GiB each as float32)."""
    for name, sp in (("a", 0.001), ("b", 0.001), ("c", 0.001), ("d", 1.0)):
        _nii(root / "images" / f"{name}.nii.gz", (sp, sp, 2.0))
        _nii(root / "masks" / f"{name}.nii.gz", (sp, sp, 2.0), value=1)
    return root


def test_plan_volume_settings_is_the_rule():
    cases = [(0.8, 0.8, 2.5), (0.7, 0.7, 3.0), (1.0, 1.0, 2.5)]
    settings, reason = plan_volume_settings(cases, context=1)
    assert settings == VolumeSettings(None, 1, (0.8, 0.8)) and "resampled to their median" in reason
    settings, reason = plan_volume_settings([(0.8, 0.8, 2.5), (0.82, 0.82, 2.5)])
    assert settings == VolumeSettings(None, 0, None) and "not resampled" in reason
    # slice axis 0: in-plane spacings are J and K
    settings, _ = plan_volume_settings([(5.0, 1.0, 2.0), (5.0, 1.0, 4.0), (5.0, 1.0, 3.0)], slice_axis=0)
    assert settings.spacing == (1.0, 3.0)
    assert plan_volume_settings(cases, spacing="native") == (VolumeSettings(), "each scan's own in-plane spacing")
    assert plan_volume_settings(cases, spacing=(0.5, 0.6))[0].spacing == (0.5, 0.6)
    with pytest.raises(DatasetError, match="--spacing must be two positive numbers"):
        plan_volume_settings(cases, spacing=(0.0, 1.0))
    with pytest.raises(DatasetError, match="--slice-axis must be 0, 1 or 2"):
        plan_volume_settings(cases, slice_axis=3)


def test_slice_grid_is_computed_without_voxels():
    assert slice_grid((512, 512, 100), (0.8, 0.8, 2.5), VolumeSettings()) == (2, (100, 512, 512))
    assert slice_grid((512, 512, 100), (0.8, 0.8, 2.5), VolumeSettings(spacing=(1.6, 0.4))) == (2, (100, 256, 1024))
    assert check_slice_grid("ct.nii.gz", (512, 512, 100), (0.8, 0.8, 2.5), VolumeSettings()) == (2, (100, 512, 512))


def test_absurd_resampling_is_refused_before_allocating(tmp_path):
    path = tmp_path / "scan.nii.gz"
    vol = Volume(np.zeros((32, 32, 3), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), path, "nifti")
    with pytest.raises(VolumeCheckError) as e:
        volume_slices(vol, VolumeSettings(spacing=(0.001, 0.001)))
    msg = str(e.value)
    assert msg.startswith(f"{path}: spacing 1 x 1 x 2 mm resampled to 0.001 x 0.001 mm in-plane gives 3 slices of "
                          "32000 x 32000 pixels")
    assert "over the limit of 8192 x 8192 pixels per slice" in msg and "--spacing 0.0039" in msg and "\n" not in msg
    assert MAX_SLICE_PIXELS == 8192 * 8192
    # the memory bound alone: 512 x 512 x 10 float32 is 10 MiB
    with pytest.raises(VolumeCheckError, match=r"100 slices of 512 x 512 pixels \(0.0977 GiB"):
        check_slice_grid(path, (512, 512, 100), (0.8, 0.8, 2.5), VolumeSettings(), max_bytes=10 << 20)


def test_scan_refuses_by_header(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DatasetError) as e:
        scan_volumes(root, val_fraction=0.0)
    msg = str(e.value)
    assert msg.startswith("images/d.nii.gz: spacing 1 x 1 x 2 mm resampled to 0.001 x 0.001 mm in-plane gives 3 "
                          "slices of 32000 x 32000 pixels")
    assert msg.endswith("or fix the voxel spacing in the file's header")
    scan = scan_volumes(root, val_fraction=0.0, spacing=(1.0, 1.0))  # the fix the message names
    assert {c.name: c.shape for c in scan.train}["d"] == (3, 32, 32)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def test_cli_plan_exits_2_with_one_line(tmp_path):
    root = _folder(tmp_path / "data")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "unetkit", "plan", str(root), "--device", "cpu"],
                       capture_output=True, text=True, env=env, preexec_fn=_limit_memory, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "images/d.nii.gz: spacing 1 x 1 x 2 mm" in err and "32000 x 32000 pixels" in err
    assert "8192 x 8192" in err and "--spacing" in err
