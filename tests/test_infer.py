"""Inference at any size (tiling, Gaussian blending, TTA) and the ``unetkit predict`` command."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit import UNet
from unetkit.checkpoint import DataInfo, save_checkpoint
from unetkit.cli.main import main
from unetkit.data.preprocess import prepare_image
from unetkit.inference import (
    TTA_FLIPS,
    Predictor,
    gaussian_weight,
    model_stride,
    predict,
    tile_starts,
    tta_flips,
)
from unetkit.viz import overlay, palette


def image_to_tensor(image, info):
    return prepare_image(image, info.normalization)

COLORS = [(0, 0, 0), (230, 40, 40), (40, 180, 70)]


def tiny(in_channels: int = 1, num_classes: int = 3, depth: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(num_classes=num_classes, in_channels=in_channels, base_channels=4, depth=depth).eval()


def info_for(model: UNet, mean: float = 0.4, std: float = 0.25) -> DataInfo:
    c, n = model.config.in_channels, model.config.num_classes
    return DataInfo(n, c, [f"c{i}" for i in range(n)], COLORS[:n], (mean,) * c, (std,) * c)


def save_ckpt(model: UNet, path, info: DataInfo | None = None):
    info = info or info_for(model)
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(), "data": info.to_dict()}, path)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ----------------------------------------------------------------------------------------- tiling maths
def test_gaussian_weight_shape_peak_sigma_and_floor():
    w = gaussian_weight((64, 32))
    assert w.shape == (64, 32)
    assert float(w.max()) == pytest.approx(1.0, abs=1e-3)  # even sizes: the peak sits between pixels
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    # sigma = tile / 8 = 8.125 for 65 pixels: 8 px from the centre the weight is exp(-(8 / 8.125)^2 / 2).
    row = gaussian_weight((65, 1))[:, 0]
    assert float(row[32]) == pytest.approx(1.0)
    assert float(row[32 + 8]) == pytest.approx(math.exp(-0.5 * (8 / 8.125) ** 2), rel=1e-5)
    assert float(w.min()) == pytest.approx(1e-4)  # corners clamped to the floor, never 0


@pytest.mark.parametrize("size,tile,overlap,align", [(131, 64, 0.5, 2), (97, 64, 0.5, 1), (300, 128, 0.25, 16),
                                                      (256, 64, 0.5, 4), (65, 64, 0.9, 1), (190, 64, 0.0, 16),
                                                      (1000, 96, 0.0, 32)])
def test_tile_starts_cover_the_image_with_full_tiles(size, tile, overlap, align):
    starts = tile_starts(size, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] == size - tile  # last tile shifted inward, ends at the border
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - tile
        covered[s:s + tile] = True
    assert covered.all()
    assert all(s % align == 0 for s in starts[:-1])
    gaps = np.diff(starts)
    assert gaps.max() <= max(tile * (1 - overlap), 1) + align  # at least about `overlap` overlap


def test_tile_starts_small_image_is_one_tile():
    assert tile_starts(50, 64, 0.5) == [0]
    assert tile_starts(64, 64, 0.5) == [0]
    assert tile_starts(256, 64, 0.5, 2) == [0, 32, 64, 96, 128, 160, 192]


def test_model_stride():
    assert model_stride(tiny(depth=2)) == 2
    assert model_stride(tiny(depth=3)) == 4
    assert model_stride(object()) == 1


# ----------------------------------------------------------------------------------------- predict
def test_tiled_equals_whole_image_away_from_tile_borders():
    """Depth-2 tiny UNet (receptive field ~20 px, well inside a 32 px overlap): tiles agree with the whole image.

    The Gaussian gives a tile's outer pixels (whose context was cut) weights of 1e-4..1e-2, so the blend
    matches the whole-image prediction to < 3e-3 in probability away from the image border.
    """
    model = tiny(depth=2)
    x = torch.randn(1, 128, 192)
    whole = predict(model, x, output="probs")
    tiled = predict(model, x, tile_size=64, overlap=0.5, output="probs")
    inner = (slice(None), slice(12, -12), slice(12, -12))
    diff = (whole - tiled)[inner].abs()
    assert float(diff.max()) < 3e-3
    assert float(diff.mean()) < 2e-4
    top2 = whole.topk(2, dim=0).values
    decided = (top2[0] - top2[1])[12:-12, 12:-12] > 2 * float(diff.max())  # not a near-tie of two classes
    assert float(decided.float().mean()) > 0.5
    assert torch.equal(whole.argmax(0)[12:-12, 12:-12][decided], tiled.argmax(0)[12:-12, 12:-12][decided])
    # Without the Gaussian (a flat average of overlapping tiles) the tile borders would show:
    # compare with non-overlapping tiles, whose seams carry the cut-off context fully.
    seams = predict(model, x, tile_size=64, overlap=0.0, output="probs")
    assert float((whole - seams)[inner].abs().max()) > 10 * float(diff.max())


@pytest.mark.parametrize("tile", [64, (48, 80)])
def test_odd_sizes_and_batches_keep_full_resolution(tile):
    model = tiny(depth=3)
    x = torch.randn(2, 1, 97, 131)
    labels = predict(model, x, tile_size=tile, overlap=0.5)
    probs = predict(model, x, tile_size=tile, overlap=0.5, output="probs", batch_size=3)
    assert labels.shape == (2, 97, 131) and labels.dtype == torch.int64
    assert probs.shape == (2, 3, 97, 131) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 97, 131), atol=1e-5)
    assert torch.equal(probs.argmax(1), labels)
    single = predict(model, x[1], tile_size=tile, overlap=0.5, output="probs", batch_size=1)
    assert single.shape == (3, 97, 131)
    assert torch.allclose(single, probs[1], atol=1e-6)  # batching tiles does not change the result


def test_logits_output_and_padding_like_training():
    model = tiny(depth=3)
    x = torch.randn(1, 20, 30)
    with torch.no_grad():
        ref = model.eval()(x[None])[0]
    assert torch.allclose(predict(model, x, output="logits"), ref, atol=1e-6)
    # pad_value: axes shorter than the tile are padded to it (as training pads its patches), then cropped.
    pad = torch.tensor([-1.5])
    padded = torch.full((1, 1, 64, 64), -1.5)
    padded[..., :20, :30] = x
    with torch.no_grad():
        ref64 = model(padded)[0, :, :20, :30]
    out = predict(model, x, tile_size=64, output="logits", pad_value=pad)
    assert out.shape == (3, 20, 30) and torch.allclose(out, ref64, atol=1e-5)
    # Smaller than the network's stride (1x1): padded up to the stride, never an error.
    assert predict(model, torch.randn(1, 1, 1)).shape == (1, 1)


def test_image_smaller_than_tile_is_predicted_whole():
    model = tiny()
    x = torch.randn(1, 40, 50)
    assert torch.equal(predict(model, x, tile_size=64, output="probs"), predict(model, x, output="probs"))
    # One axis shorter than the tile: tiles span that whole axis, no padding, the full size comes back.
    wide = torch.randn(1, 40, 150)
    out = predict(model, wide, tile_size=64, output="probs")
    assert out.shape == (3, 40, 150)


def test_probs_match_softmax_of_logits_and_sigmoid_for_one_channel():
    model = tiny()
    x = torch.randn(1, 32, 48)
    with torch.no_grad():
        logits = model(x[None])[0]
    assert torch.allclose(predict(model, x, output="probs"), logits.softmax(0), atol=1e-6)
    assert torch.equal(predict(model, x), logits.argmax(0))
    binary = tiny(num_classes=1)
    with torch.no_grad():
        logit = binary(x[None])[0]
    p = predict(binary, x, output="probs")
    assert p.shape == (1, 32, 48)
    assert torch.allclose(p, torch.sigmoid(logit), atol=1e-6)
    assert torch.equal(predict(binary, x), (logit[0] > 0).long())


@pytest.mark.parametrize("tile", [None, 32])
def test_tta_is_flip_equivariant(tile):
    model = tiny(depth=3)
    x = torch.randn(1, 64, 64)  # 64 with 32-tiles at overlap 0.5: starts 0, 16, 32 (mirror-symmetric)
    ref = predict(model, x, tta=True, tile_size=tile, output="probs")
    plain = predict(model, x, tile_size=tile, output="probs")
    for dims in [(-1,), (-2,), (-2, -1)]:
        a = predict(model, x.flip(dims), tta=True, tile_size=tile, output="probs")
        assert torch.allclose(a, ref.flip(dims), atol=1e-5)
        labels = predict(model, x.flip(dims), tta=True, tile_size=tile)
        assert float((labels == ref.flip(dims).argmax(0)).float().mean()) > 0.999
        # ... which plain prediction of a (randomly initialised) model is not.
        c = predict(model, x.flip(dims), tile_size=tile, output="probs")
        assert float((c - plain.flip(dims)).abs().max()) > 1e-3


def test_tta_averages_the_four_flips():
    model = tiny()
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        ref = sum(model(x[None].flip(d) if d else x[None]).softmax(1).flip(d) if d else model(x[None]).softmax(1)
                  for d in [(), (-1,), (-2,), (-2, -1)]) / 4
    assert torch.allclose(predict(model, x, tta=True, output="probs"), ref[0], atol=1e-6)


def test_tta_over_chosen_axes_averages_only_those_flips():
    """``tta=[-1]`` (a model trained with horizontal flips only) averages the image and its horizontal flip, and
    is equivariant to that flip; a 3D model's ``[-1, -2]`` is the 4 in-plane flips, not the 8 with depth."""
    assert tta_flips(2) == list(TTA_FLIPS)
    assert tta_flips(2, [-1]) == [(), (-1,)]
    assert tta_flips(3, [-2, -1]) == [(), (-1,), (-2,), (-2, -1)]
    assert len(tta_flips(3)) == 8
    with pytest.raises(ValueError, match="width, height, depth"):
        tta_flips(2, [-3])
    model = tiny()
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        ref = (model(x[None]).softmax(1) + model(x[None].flip(-1)).softmax(1).flip(-1)) / 2
    got = predict(model, x, tta=[-1], output="probs")
    assert torch.allclose(got, ref[0], atol=1e-6)
    assert torch.allclose(predict(model, x.flip(-1), tta=[-1], output="probs"), got.flip(-1), atol=1e-5)
    assert not torch.allclose(got, predict(model, x, tta=True, output="probs"), atol=1e-4)


def test_predictor_applies_the_flips_the_model_was_trained_with():
    """By default a predictor averages over the model's trained flips (``DataInfo.flip_axes``), none for a model
    trained without or one that does not record them; ``tta=True`` on a model trained without flips: every axis."""
    model = tiny()
    plain = info_for(model)
    hflip = replace(plain, flip_axes=(-1,))
    assert Predictor(model, hflip, device="cpu").tta == (-1,)
    assert Predictor(model, hflip, device="cpu", tta=True).tta == (-1,)
    assert Predictor(model, hflip, device="cpu", tta=False).tta is False
    assert Predictor(model, plain, device="cpu").tta is False  # not recorded
    assert Predictor(model, replace(plain, flip_axes=()), device="cpu").tta is False
    assert Predictor(model, replace(plain, flip_axes=()), device="cpu", tta=True).tta is True
    assert Predictor(model, hflip, device="cpu", tile=16).tiling() == "16x16 windows, 50 % overlap, flip TTA (W)"
    assert Predictor(model, plain, device="cpu", tta=True).tiling() == "whole images, flip TTA (every axis)"
    x = torch.randn(1, 32, 32)
    assert torch.allclose(Predictor(model, hflip, device="cpu", amp="off").predict_tensor(x, "probs"),
                          predict(model, x, tta=[-1], output="probs"), atol=1e-6)


def test_predict_restores_training_mode_and_checks_arguments():
    model = tiny().train()
    predict(model, torch.randn(1, 16, 16))
    assert model.training
    with pytest.raises(ValueError, match="overlap"):
        predict(model, torch.randn(1, 16, 16), tile_size=8, overlap=1.0)
    with pytest.raises(ValueError, match="output"):
        predict(model, torch.randn(1, 16, 16), output="scores")
    with pytest.raises(ValueError, match="shape"):
        predict(model, torch.randn(16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_on_cuda_matches_cpu():
    model = tiny(depth=3)
    x = torch.randn(1, 97, 131)
    cpu = predict(model, x, tile_size=64, output="probs")
    gpu = predict(model.cuda(), x.cuda(), tile_size=64, output="probs")
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


# ----------------------------------------------------------------------------------------- files
def test_image_to_tensor_scales_by_bit_depth_and_converts_grey_rgb():
    model = tiny()
    info = info_for(model, mean=0.5, std=0.25)
    v8 = np.array([[0, 51], [204, 255]], np.uint8)[:, :, None]
    x8, raw8 = image_to_tensor(v8, info)
    x16, raw16 = image_to_tensor((v8.astype(np.uint16) * 257), info)
    assert torch.allclose(raw8, torch.tensor([[[0.0, 0.2], [0.8, 1.0]]]))
    assert torch.allclose(raw8, raw16) and torch.allclose(x8, x16)
    assert torch.allclose(x8, (raw8 - 0.5) / 0.25)
    rgb = np.repeat(v8, 3, axis=2)
    assert torch.allclose(image_to_tensor(rgb, info)[0], x8, atol=1e-6)  # RGB grey -> luma = same grey
    info3 = info_for(tiny(in_channels=3))
    assert image_to_tensor(v8, info3)[0].shape == (3, 2, 2)  # grey -> RGB replicated
    x4, _ = image_to_tensor(v8, info_for(tiny(in_channels=4)))  # grey -> any count: replicated, as datasets do
    assert x4.shape == (4, 2, 2) and torch.equal(x4[3], x4[0])
    with pytest.raises(ValueError, match="2-channel"):
        image_to_tensor(np.zeros((2, 2, 2), np.uint8), info)
    with pytest.raises(ValueError, match="2-channel"):
        image_to_tensor(np.zeros((2, 2, 2), np.uint8), info_for(tiny(in_channels=4)))


def test_overlay_and_palette():
    info = info_for(tiny())
    labels = np.array([[0, 1], [2, 1]])
    img = np.full((1, 2, 2), 0.5, np.float32)
    ov = overlay(img, labels, palette(info), alpha=0.5)
    assert ov.dtype == np.uint8 and ov.shape == (2, 2, 3)
    assert ov[0, 0].tolist() == [128, 128, 128]  # background: the grey image untouched
    assert ov[0, 1].tolist() == [179, 84, 84]  # half grey, half (230, 40, 40)
    binary = DataInfo(1, 1, ["fg"], [(250, 210, 30)], (0.0,), (1.0,))
    assert palette(binary) == [(0, 0, 0), (250, 210, 30)]


# ----------------------------------------------------------------------------------------- CLI
def write_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    write_png(d / "a.png", rng.integers(0, 256, (40, 56), dtype=np.uint8))
    write_png(d / "b.png", rng.integers(0, 256, (33, 47, 3), dtype=np.uint8))  # RGB for a grey model
    return d


def test_predict_cli_writes_mask_overlay_probs(tmp_path, images, capsys):
    model = tiny(depth=3)
    info = info_for(model)
    ckpt = save_ckpt(model, tmp_path / "m.pt", info)
    out = tmp_path / "out"
    rc = main(["predict", str(ckpt), str(images), "--out", str(out), "--probs", "--no-progress",
               "--tile", "32", "--tta"])
    assert rc == 0
    assert "predicted 2 of 2" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png", "a_probs.npy",
                                                       "b_mask.png", "b_overlay.png", "b_probs.npy"]
    mask = Image.open(out / "a_mask.png")
    assert mask.mode == "P" and mask.size == (56, 40)
    assert mask.getpalette()[:9] == [v for c in COLORS for v in c]
    x, _ = image_to_tensor(np.array(Image.open(images / "a.png"))[:, :, None], info)
    expected = predict(model, x, tile_size=32, tta=True)
    assert np.array_equal(np.asarray(mask), expected.numpy())  # palette index = class
    probs = np.load(out / "a_probs.npy")
    assert probs.shape == (3, 40, 56) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1, atol=1e-5)
    ov = Image.open(out / "b_overlay.png")
    # The overlay is enlarged 10x (the largest whole factor within 512 px) above a one-line 30 px legend.
    assert ov.mode == "RGB" and ov.size == (470, 330 + 30)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_predict_cli_globs_and_16bit(tmp_path, images):
    model = tiny()
    ckpt = save_ckpt(model, tmp_path / "m.pt")
    arr8 = np.array(Image.open(images / "a.png"))
    d16 = tmp_path / "sixteen"
    d16.mkdir()
    write_png(d16 / "a16.png", arr8.astype(np.uint16) * 257)
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(images / "a*.png"), str(d16 / "*.png"), "--out", str(out),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["a16_mask.png", "a_mask.png"]
    # 16-bit pixels are scaled by 65535 like the datasets do: same image, same prediction.
    assert np.array_equal(np.asarray(Image.open(out / "a_mask.png")), np.asarray(Image.open(out / "a16_mask.png")))


def test_predict_cli_skips_unreadable_files_and_exits_1(tmp_path, images, capsys):
    ckpt = save_ckpt(tiny(), tmp_path / "m.pt")
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    rc = main(["predict", str(ckpt), str(images), "--out", str(out), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 failed" in err and "predicted 2 of 3" in err
    assert (out / "a_mask.png").is_file() and (out / "b_mask.png").is_file()
    assert not (out / "broken_mask.png").exists()


def test_predict_cli_refuses_out_equal_to_input_folder(tmp_path, images, capsys):
    ckpt = save_ckpt(tiny(), tmp_path / "m.pt")
    before = sorted(p.name for p in images.iterdir())
    assert main(["predict", str(ckpt), str(images), "--out", str(images)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetkit predict: error:") and "folder of input" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in images.iterdir()) == before
    # Also through a file argument and a differently spelled path.
    assert main(["predict", str(ckpt), str(images / "a.png"), "--out", str(images / ".." / "imgs")]) == 2


def test_predict_cli_missing_checkpoint_and_inputs(tmp_path, images, capsys):
    assert main(["predict", str(tmp_path / "nope.pt"), str(images), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetkit predict: error:") and "not found" in err and len(err.splitlines()) == 1
    ckpt = save_ckpt(tiny(), tmp_path / "m.pt")
    assert main(["predict", str(ckpt), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(tmp_path / "*.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "matches no files" in capsys.readouterr().err


def test_predict_cli_wrong_channel_count_is_reported_and_skipped(tmp_path, images, capsys):
    ckpt = save_ckpt(tiny(in_channels=4), tmp_path / "m4.pt")
    out = tmp_path / "out"
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    assert main(["predict", str(ckpt), str(rgb), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("skipped ") and "1 failed" in err[1]
    assert "rgb.png: 3-channel image, but the model takes 4 channel(s)" in err[-1]
    assert not out.exists() or not any(out.iterdir())


def test_predict_cli_refuses_clashing_output_names(tmp_path, images, capsys):
    ckpt = save_ckpt(tiny(), tmp_path / "m.pt")
    other = tmp_path / "other"
    other.mkdir()
    write_png(other / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(ckpt), str(images), str(other), "--out", str(tmp_path / "o")]) == 2
    assert "share the name 'a'" in capsys.readouterr().err
