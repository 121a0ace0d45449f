"""3D training end to end on tiny NIfTI folders: the planner's choice, 3D patches and augmentation, training
through the CLI, volume prediction with the scan's geometry, ONNX export, resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unetkit.checkpoint import read_checkpoint
from unetkit.cli.main import main
from unetkit.data.transforms import AugmentConfig
from unetkit.data.transforms3d import Augment3D
from unetkit.train import TrainConfig
from unetkit.train.plan3d import choose_spatial_dims


def _ball_case(rng, shape):
    img = rng.normal(100, 10, shape).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    c = np.array(shape) / 2
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 4] = 1
    img[lab == 1] += 60
    return img, lab


@pytest.fixture(scope="module")
def iso_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("iso")
    rng = np.random.default_rng(0)
    for i in range(4):
        img, lab = _ball_case(rng, (18 + i, 16, 17))
        aff = np.diag([1.0, 1.0, 1.1, 1.0])
        for sub, arr in (("images", img), ("masks", lab)):
            (root / sub).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arr, aff), str(root / sub / f"case_{i}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def run3d(iso_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("r3d") / "run"
    assert main(["train", "--data", str(iso_folder), "--epochs", "2", "--base-channels", "4", "--samples", "1",
                 "--no-boundary-f1", "--out", str(out), "--no-progress", "--spatial-dims", "3"]) == 0
    return out


@dataclass
class _Case:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


class _Split:
    def __init__(self, shape, spacing, n=5):
        self.cases = [_Case(shape, spacing) for _ in range(n)]


def test_the_planner_chooses_2d_on_a_cpu_and_3d_for_thin_slices_on_a_gpu():
    cfg = TrainConfig(data="x")
    thin, thick, shallow = (_Split((120, 256, 256), (1.0, 0.8, 0.8)), _Split((40, 512, 512), (5.0, 0.7, 0.7)),
                            _Split((9, 128, 128), (1.0, 1.0, 1.0)))
    for split in (thin, thick, shallow):  # measured: on a CPU 2D beat 3D at the same budget on every set
        dims, why = choose_spatial_dims(cfg, split, "cpu")
        assert dims == 2 and "on a CPU" in why
    dims, why = choose_spatial_dims(cfg, thin, "cuda")
    assert dims == 3 and "near-isotropic" in why
    dims, why = choose_spatial_dims(cfg, thick, "cuda")
    assert dims == 2 and "7.1x thicker" in why
    dims, why = choose_spatial_dims(cfg, shallow, "cuda")
    assert dims == 2 and "under 16 slices" in why
    assert choose_spatial_dims(TrainConfig(data="x", spatial_dims=3), _Split((9, 9, 9), (5, 1, 1)), "cpu")[0] == 3
    with_context = TrainConfig.from_dict({"data": {"source": "x", "context": 1}})
    assert choose_spatial_dims(with_context, thin, "cuda") == (2, "given --context 1 (2.5D: a 2D network on "
                                                                  "slices with their neighbours)")


def test_3d_augmentation_moves_image_and_labels_together():
    torch.manual_seed(0)
    image = torch.arange(4 * 6 * 8, dtype=torch.float32).reshape(1, 4, 6, 8)
    labels = (image[0] % 3).long()
    flip = Augment3D(AugmentConfig(hflip=1.0, vflip=0.0, rotate=0.0, scale=None, color_jitter=0.0))
    x, y = flip(image, labels)
    assert torch.equal(x, image.flip(-1)) and torch.equal(y, labels.flip(-1))
    zoom = Augment3D(AugmentConfig(hflip=0.0, vflip=0.0, rotate=0.0, scale=(0.5, 0.5), color_jitter=0.0),
                     ignore_index=255)
    x, y = zoom(image, labels)
    assert x.shape == image.shape and y.shape == labels.shape
    assert (y == 255).any() and set(y.unique().tolist()) <= {0, 1, 2, 255}  # zoomed out: the border is ignored
    jitter = Augment3D(AugmentConfig(hflip=0.0, vflip=0.0, rotate=0.0, scale=None, color_jitter=0.2))
    x, y = jitter(image, labels)
    assert torch.equal(y, labels) and x.shape == image.shape and not torch.equal(x, image)
    # affine_p: the share of patches zoomed (400 draws, standard deviation of the share 0.022)
    some = Augment3D(AugmentConfig(hflip=0.0, vflip=0.0, rotate=0.0, scale=(0.5, 0.5), color_jitter=0.0,
                                   affine_p=0.25))
    zoomed = sum(not torch.equal(some(image, labels)[1], labels) for _ in range(400))
    assert 0.17 <= zoomed / 400 <= 0.33


def test_a_nifti_folder_trains_in_3d_through_the_cli(run3d, iso_folder, tmp_path):
    ckpt = read_checkpoint(run3d / "best.pt")
    mc, plan = ckpt["model_config"], ckpt["plan"]
    assert mc["spatial_dims"] == 3 and mc["norm"] == "instance" and len(plan["patch_size"]) == 3
    assert plan["spatial_dims"] == 3 and plan["reasons"]["spatial_dims"] == "given"
    assert len(mc["strides"]) == mc["depth"] and all(len(s) == 3 for s in mc["strides"])
    # predict: label volumes with the scan's shape and affine
    scan = iso_folder / "images" / "case_1.nii.gz"
    assert main(["predict", str(run3d), str(scan), "--out", str(tmp_path / "pred"), "--no-progress",
                 "--tta"]) == 0
    src, pred = nib.load(str(scan)), nib.load(str(tmp_path / "pred" / "case_1.nii.gz"))
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}


def test_evaluate_and_onnx_export_of_a_3d_model(run3d, iso_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["evaluate", str(run3d), "--data", str(iso_folder), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "scored 4 volumes" in out and "per case (4 case(s)" in out
    # one export writes the fp32 model (checked in ONNX Runtime) and its INT8 version: ONNX Runtime quantizes
    # 3D convolutions too (QDQ), calibrated on whole training cases
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run3d), "--out", str(onnx_path), "--int8", "--calib-samples", "2"]) == 0
    report = capsys.readouterr().out
    diff = float(report.split("max abs diff ")[1].split()[0])
    assert onnx_path.is_file() and diff < 1e-3
    assert (tmp_path / "m.int8.onnx").is_file() and "convs in INT8" in report and "| int8 |" in report
    assert main(["predict", str(onnx_path), str(iso_folder / "images" / "case_0.nii.gz"), "--out",
                 str(tmp_path / "p"), "--no-progress"]) == 0
    assert (tmp_path / "p" / "case_0.nii.gz").is_file()


def test_a_3d_run_resumes(run3d, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run3d, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--no-progress"]) == 0
    ckpt = read_checkpoint(Path(copy) / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["model_config"]["spatial_dims"] == 3
    assert [r["epoch"] for r in ckpt["history"]] == [1, 2, 3]


def test_3d_on_2d_images_is_refused(tmp_path, capsys):
    assert main(["plan", "shapes", "--spatial-dims", "3"]) == 2
    assert "trains on volumes" in capsys.readouterr().err
