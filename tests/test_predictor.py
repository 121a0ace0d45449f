"""The Predictor: one way to apply a trained model, giving exactly the masks `unetkit predict` writes, also
for checkpoints written before the data options moved into DataConfig (tests/fixtures/v0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from unetkit.checkpoint import DataInfo, read_checkpoint
from unetkit.cli.main import main
from unetkit.inference import Predictor

V0 = Path(__file__).parent / "fixtures" / "v0"


@pytest.fixture(scope="module")
def predictor2d():
    return Predictor.load(V0 / "model2d.pt", device="cpu", amp="off")


def test_a_checkpoint_from_before_the_change_predicts_the_same_masks(predictor2d):
    ckpt = read_checkpoint(V0 / "model2d.pt")
    assert "data" in ckpt and "classes" not in ckpt  # the earlier layout
    info = DataInfo.from_checkpoint(ckpt)
    assert (info.num_classes, info.in_channels, info.patch_size) == (3, 1, (46, 50))
    for name in ("big", "small_rgb"):
        expected = np.load(V0 / f"{name}_mask.npy")
        got = predictor2d.predict(V0 / "inputs2d" / f"{name}.png")
        assert got.shape == expected.shape and (got == expected).all()


def test_predict_takes_an_array_and_gives_a_mask_or_probabilities(predictor2d):
    image = np.asarray(Image.open(V0 / "inputs2d" / "big.png"))
    mask = predictor2d.predict(image)
    assert mask.dtype == np.int64 and mask.shape == image.shape
    probs = predictor2d.predict(image, output="probs")
    assert probs.shape == (3, *image.shape) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert (probs.argmax(0) == mask).all()
    assert "fp32, --amp off" in predictor2d.describe() and predictor2d.tiling() == "46x50 windows, 50 % overlap"


def test_predict_folder_equals_the_cli(predictor2d, tmp_path):
    assert main(["predict", str(V0 / "model2d.pt"), str(V0 / "inputs2d"), "--out", str(tmp_path / "cli"),
                 "--amp", "off", "--no-progress"]) == 0
    result = predictor2d.predict_folder(V0 / "inputs2d", tmp_path / "py", progress=False)
    assert result.done == 2 and not result.failed
    for name in ("big", "small_rgb"):
        cli = np.asarray(Image.open(tmp_path / "cli" / f"{name}_mask.png"))
        py = np.asarray(Image.open(tmp_path / "py" / f"{name}_mask.png"))
        assert (cli == py).all() and (py == np.load(V0 / f"{name}_mask.npy")).all()


def test_one_bad_file_does_not_stop_the_others(predictor2d, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(V0 / "inputs2d" / "big.png", src / "a.png")
    import tifffile

    tifffile.imwrite(src / "b.tif", np.zeros((5, 8, 8), np.uint8), photometric="minisblack", planarconfig="separate")
    (src / "c.png").write_bytes(b"not a png")
    shutil.copy(V0 / "inputs2d" / "small_rgb.png", src / "d.png")
    code = main(["predict", str(V0 / "model2d.pt"), str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == ["a_mask.png", "d_mask.png"]
    assert "2 failed" in err and "b.tif: " in err and "5-channel" in err and "c.png: unreadable" in err


def test_a_volume_checkpoint_from_before_the_change_predicts_the_same_labels(tmp_path):
    predictor = Predictor.load(V0 / "model_vol.pt", device="cpu", amp="off")
    assert predictor.info.volume is not None and predictor.info.volume.context == 1
    labels = predictor.predict_volume(V0 / "inputs_vol" / "scan.nii.gz")
    assert (labels == np.load(V0 / "scan_labels.npy")).all()
    assert main(["predict", str(V0 / "model_vol.pt"), str(V0 / "inputs_vol" / "scan.nii.gz"), "--out",
                 str(tmp_path), "--amp", "off", "--no-progress"]) == 0
    written = nib.load(str(tmp_path / "scan.nii.gz"))
    assert (np.asarray(written.dataobj) == labels).all()
    assert np.allclose(written.affine, nib.load(str(V0 / "inputs_vol" / "scan.nii.gz")).affine)


def test_an_onnx_model_says_what_runs(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(V0 / "model2d.pt"), "--format", "onnx", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), str(V0 / "inputs2d"), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "ONNX Runtime (CPU), as exported" in line and "autocast" not in line and "--amp" not in line
    onnx_mask = np.asarray(Image.open(tmp_path / "pred" / "big_mask.png"))
    assert (Predictor.load(out).predict(V0 / "inputs2d" / "big.png") == onnx_mask).all()


def test_large_images_are_predicted_in_bands_with_the_whole_image_result(predictor2d, monkeypatch, tmp_path):
    """Above BAND_PIXELS an image is predicted band by band, each band with the windows the whole image's
    tiling puts there: the masks (and probabilities) equal the whole-image prediction exactly."""
    from unetkit.inference import predictor as predictor_mod

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (301, 170), dtype=np.uint8)
    whole = predictor2d.predict_labels(image)
    whole_probs = predictor2d.predict(image, output="probs")
    monkeypatch.setattr(predictor_mod, "BAND_PIXELS", 100 * 170)  # bands of 184 rows (4 tile heights)
    banded = predictor2d.predict_labels(image, probs_path=tmp_path / "p.npy")
    assert banded.dtype == np.uint8 and (banded == whole).all()
    assert np.allclose(np.load(tmp_path / "p.npy"), whole_probs, atol=1e-6)
