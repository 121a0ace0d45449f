"""Patch-based training planned from the data: the planner, the patch sampler, the time budget, test sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from unetkit.checkpoint import DataInfo, read_checkpoint
from unetkit.cli.main import main
from unetkit.data import ArrayDataset, get_datasets
from unetkit.data.fingerprint import Fingerprint, fingerprint
from unetkit.data.normalization import SCHEMES
from unetkit.data.patches import PatchDataset
from unetkit.train import TrainConfig, fit
from unetkit.train.config import parse_duration
from unetkit.train.plan import Plan, make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fp_of(sizes, dtype="uint8", class_pixels=(900, 50, 50), channels=1, lo=0.0, hi=1.0) -> Fingerprint:
    """A hand-made fingerprint: image sizes, pixel type, class pixel counts."""
    k = len(class_pixels)
    return Fingerprint(name="hand-made", num_images=len(sizes), num_classes=k, in_channels=channels,
                       class_names=[f"c{i}" for i in range(k)], dtype=dtype, sizes=list(sizes),
                       mean=[0.3] * channels, std=[0.2] * channels, minimum=[lo] * channels, maximum=[hi] * channels,
                       percentiles=[[0.01, 0.3, 0.6]] * channels, clipped_mean=[0.29] * channels,
                       clipped_std=[0.15] * channels, class_pixels=list(class_pixels), class_images=[len(sizes)] * k)


def cfg_for(**kw) -> TrainConfig:
    return TrainConfig.from_dict(kw)


# ----------------------------------------------------------------------------------------- the planner
def test_plan_for_16_bit_images_clips_percentiles_then_z_scores():
    fp = fp_of([(512, 512)] * 10, dtype="uint16")
    plan = make_plan(fp, cfg_for(), "cpu")
    assert plan.normalization == "percentile"
    assert plan.norm.clip == ((0.01, 0.6),) and plan.norm.mean == (0.29,) and plan.norm.std == (0.15,)
    assert "16-bit" in plan.reasons["normalization"]
    x = torch.tensor([[[0.0, 0.3, 1.0]]])  # below, inside, above the clip range
    assert plan.norm.apply(x).flatten().tolist() == pytest.approx([(0.01 - 0.29) / 0.15, (0.3 - 0.29) / 0.15,
                                                                   (0.6 - 0.29) / 0.15], abs=1e-5)
    # 8-bit images and floats already in [0, 1] keep the plain z-score; a pretrained encoder ImageNet's.
    assert make_plan(fp_of([(64, 64)] * 4), cfg_for(), "cpu").normalization == "zscore"
    assert make_plan(fp_of([(64, 64)] * 4, dtype="float32"), cfg_for(), "cpu").normalization == "zscore"
    assert make_plan(fp_of([(64, 64)] * 4, dtype="float32", lo=-1000, hi=3000), cfg_for(), "cpu").normalization \
        == "percentile"
    pre = make_plan(fp_of([(64, 64)] * 4, channels=3), cfg_for(encoder="resnet18", encoder_weights="imagenet"), "cpu")
    assert pre.normalization == "imagenet" and pre.norm.mean == (0.485, 0.456, 0.406)


def test_plan_for_a_rare_class_samples_more_foreground():
    common = make_plan(fp_of([(1024, 1024)] * 20, class_pixels=(900, 60, 40)), cfg_for(), "cpu")
    rare = make_plan(fp_of([(1024, 1024)] * 20, class_pixels=(9950, 45, 5)), cfg_for(), "cpu")
    assert common.foreground_fraction == pytest.approx(1 / 3)
    assert rare.foreground_fraction == 0.5 and "0.05 %" in rare.reasons["foreground_fraction"]
    assert rare.loss == "ce+dice" and rare.class_weights is None
    # Patches that hold whole images: nothing to centre.
    assert make_plan(fp_of([(64, 64)] * 20, class_pixels=(9950, 45, 5)), cfg_for(), "cpu").foreground_fraction == 0


def test_plan_for_tiny_and_huge_images():
    tiny = make_plan(fp_of([(8, 8)] * 50), cfg_for(), "cpu")
    assert tiny.patch_size == (8, 8) and tiny.depth == 2  # bottleneck 4 px
    huge = make_plan(fp_of([(4000, 4000)] * 3), cfg_for(), "cpu")
    assert huge.patch_size == (64, 64) and huge.depth == 5 and huge.batch_size == 16  # 4 x 128 x 128 pixels
    assert huge.samples_per_epoch == 3 * math.ceil(4000 * 4000 / 64**2)
    assert "shrunk to 4096 pixels" in huge.reasons["patch_size"]
    # Non-square medians keep their aspect and are rounded up to the stride.
    wide = make_plan(fp_of([(34, 128)] * 9), cfg_for(), "cpu")
    assert wide.depth == 4 and wide.patch_size == (32, 128)
    small = make_plan(fp_of([(30, 90)] * 9), cfg_for(), "cpu")  # below the limit: as it is, stride 4
    assert small.depth == 3 and small.patch_size == (32, 92)
    gpu = make_plan(fp_of([(4000, 4000)] * 3), cfg_for(), "cuda")
    assert gpu.patch_size == (256, 256) and gpu.batch_size == 16 and gpu.base_channels == 32
    # Given options win, and the reasons say so.
    given = make_plan(fp_of([(4000, 4000)] * 3), cfg_for(patch_size=[64], batch_size=3, depth=3), "cpu")
    assert (given.patch_size, given.batch_size, given.depth) == ((64, 64), 3, 3)
    assert given.reasons["patch_size"] == given.reasons["batch_size"] == "given"


def test_plan_length_and_budget():
    demo = make_plan(fp_of([(128, 128)] * 26), cfg_for(), "cpu")
    assert demo.patch_size == (64, 64) and demo.samples_per_epoch == 26 * 4
    assert (demo.batch_size, demo.steps_per_epoch, demo.max_steps) == (16, 6, 2000)  # at least 2000 steps
    many = make_plan(fp_of([(128, 128)] * 400), cfg_for(), "cpu")  # 100 steps an epoch
    assert many.max_steps == 120 * many.steps_per_epoch  # 120 epochs when they are longer
    assert demo.time_budget_s == 30 * 60
    assert make_plan(fp_of([(128, 128)] * 26), cfg_for(time="90s"), "cpu").time_budget_s == 90
    assert make_plan(fp_of([(128, 128)] * 26), cfg_for(epochs=3), "cpu").time_budget_s is None
    assert make_plan(fp_of([(4000, 4000)] * 40), cfg_for(), "cpu").max_steps == 25_000  # nor too long
    assert [parse_duration(t) for t in ("90s", "10m", "2h", "1h30m", "45")] == [90, 600, 7200, 5400, 45]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten minutes")


def test_fingerprint_of_real_ct_slices():
    train, _ = get_datasets("ct-chest", mean=(0.0,), std=(1.0,))
    fp = fingerprint(train)
    raw = torch.stack([train.load_raw(i)[0] for i in range(len(train))]).double()
    assert fp.mean[0] == pytest.approx(float(raw.mean()), abs=1e-9)
    assert fp.std[0] == pytest.approx(float(raw.std(unbiased=False)), abs=1e-9)
    counts = train.class_pixel_counts()
    assert fp.class_pixels == counts.tolist() and sum(fp.class_frequency) == pytest.approx(1.0)
    assert fp.class_images[0] == 26 and fp.size_stats()["median"] == (128, 128)
    p = np.percentile(raw.numpy().ravel(), [0.5, 50, 99.5])
    assert fp.percentiles[0] == pytest.approx(p.tolist(), abs=0.01)  # from 10,000 of 16,384 pixels per image
    exact = fingerprint(train, samples_per_image=128 * 128)  # every pixel
    assert exact.percentiles[0] == pytest.approx(p.tolist(), abs=1e-6)
    assert SCHEMES["zscore"]().values(fp).mean == (fp.mean[0],)


# ----------------------------------------------------------------------------------------- patches
def _one_image(h, w, blob, cls=1):
    img = np.zeros((1, h, w), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    (y0, y1), (x0, x1) = blob
    mask[y0:y1, x0:x1] = cls
    img[0, y0:y1, x0:x1] = 200
    return ArrayDataset([img], [mask], name="one", split="train", num_classes=3, in_channels=1,
                        class_names=["bg", "a", "b"], class_colors=[(0, 0, 0)] * 3, ignore_index=255,
                        names=["x"], image_paths=["x"], mask_paths=["x"], mean=(0.0,), std=(1.0,))


def test_foreground_sampler_hits_a_rare_class_at_the_expected_rate():
    ds = _one_image(256, 256, ((100, 103), (200, 203)))  # a 3x3 structure: 0.014 % of the image
    patches = PatchDataset(ds, (32, 32), foreground_fraction=0.4, min_length=2000)
    assert len(patches) == 2000
    torch.manual_seed(0)
    hits = sum(int((patches[k][1] == 1).any()) for k in range(2000))
    # A random 32x32 window (corner uniform over 225 x 225) contains part of the blob with probability p0.
    p0 = (len(range(100 - 31, 103)) * len(range(200 - 31, 203 if 203 <= 224 else 225))) / (225 * 225)
    expected = 0.4 + 0.6 * p0
    assert abs(hits / 2000 - expected) < 4 * math.sqrt(expected * (1 - expected) / 2000)
    centred = PatchDataset(ds, (32, 32), foreground_fraction=1.0)
    assert all((centred[0][1] == 1).sum() == 9 for _ in range(20))  # always the whole structure


def test_patches_pad_small_images_with_ignore_and_keep_their_pixels():
    ds = _one_image(5, 7, ((1, 3), (2, 4)))
    patches = PatchDataset(ds, (16, 16), foreground_fraction=0.0)
    assert len(patches) == 1
    for _ in range(10):
        img, mask = patches[0]
        assert img.shape == (1, 16, 16) and mask.shape == (16, 16)
        assert (mask != 255).sum() == 35 and (mask == 1).sum() == 4  # the whole image, padded with ignore
        assert img[0][mask == 1].tolist() == pytest.approx([200 / 255] * 4)
    big = _one_image(100, 300, ((0, 1), (0, 1)))
    assert len(PatchDataset(big, (32, 64))) == math.ceil(100 * 300 / (32 * 64))


# ----------------------------------------------------------------------------------------- through the CLI
def _write_folder(root, sizes, seed=0, bits=8):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    total = 0
    for k, (h, w) in enumerate(sizes):
        m = np.zeros((h, w), np.uint8)
        m[h // 4: max(h // 4 + 1, h // 2), w // 3: max(w // 3 + 1, 2 * w // 3)] = 1 + k % 2
        img = m * 90 + rng.integers(0, 40, (h, w))
        if bits == 16:
            img = (img * 250).astype(np.uint16)
        Image.fromarray(img.astype(np.uint16 if bits == 16 else np.uint8)).save(root / "images" / f"i{k:02d}.png")
        Image.fromarray(m).save(root / "masks" / f"i{k:02d}.png")
        total += h * w
    return total


FAST = ["--base-channels", "4", "--depth", "3", "--samples", "1", "--no-boundary-f1", "--quiet"]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A folder of mixed sizes (1x1, 5x9, 40x40, 300x200, 64x96), 16-bit, trained for 2 epochs."""
    root = tmp_path_factory.mktemp("mixed")
    data = root / "data"
    _write_folder(data, [(40, 40), (1, 1), (5, 9), (300, 200), (64, 96), (40, 40), (33, 47), (40, 40)], bits=16)
    out = root / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--val-fraction", "0.4",
                 *FAST]) == 0
    return data, out


def test_mixed_sizes_train_and_plan_yaml_round_trips(mixed_run):
    data, out = mixed_run
    doc = yaml.safe_load((out / "plan.yaml").read_text())
    assert doc["fingerprint"]["images"] == 5 and doc["fingerprint"]["dtype"] == "uint16"
    assert doc["fingerprint"]["size_min"] == [1, 1]
    plan = Plan.from_dict(doc["plan"])
    assert plan.normalization == "percentile" and plan.epochs == 2
    ckpt = read_checkpoint(out / "best.pt")
    assert Plan.from_dict(ckpt["plan"]).to_dict() == plan.to_dict()
    info = DataInfo.from_checkpoint(ckpt)
    assert info.clip == plan.norm.clip and info.patch_size == plan.patch_size
    rows = json.loads((out / "metrics.json").read_text())
    assert rows["images"] == 3 and rows["steps"] == 2 * plan.steps_per_epoch


def test_resume_keeps_the_plan_and_extends(mixed_run, tmp_path):
    import shutil

    _, out = mixed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = read_checkpoint(copy / "last.pt")
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--quiet"]) == 0
    after = read_checkpoint(copy / "last.pt")
    assert after["epoch"] == 3 and after["run"]["step"] == before["run"]["step"] + before["run"]["step"] // 2
    assert after["plan"]["patch_size"] == before["plan"]["patch_size"]
    assert after["plan"]["norm"] == before["plan"]["norm"]


def test_evaluate_a_test_folder_scores_every_pixel(mixed_run, tmp_path, capsys):
    _, out = mixed_run
    test = tmp_path / "test"
    pixels = _write_folder(test, [(50, 70), (1, 1), (400, 90), (17, 23)], seed=5, bits=16)
    js = tmp_path / "m.json"
    assert main(["evaluate", str(out), "--data", str(test), "--json", str(js), "--no-boundary-f1"]) == 0
    text = capsys.readouterr().out
    assert f"(all split): scored 4 images, {pixels:,} pixels" in text
    result = json.loads(js.read_text())
    assert sum(map(sum, result["confusion_matrix"])) == pixels == result["pixels"]
    # The training folder itself: its validation split, as before.
    assert main(["evaluate", str(out), "--no-boundary-f1"]) == 0
    assert "(val split): scored 3 images" in capsys.readouterr().out


class FakeClock:
    """Seconds that pass only when a test says so (and 1 ms at every reading)."""

    t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def test_time_budget_stops_on_time(tmp_path, monkeypatch):
    """A fake clock: every forward pass of the network takes 0.25 s, every reading of the clock 1 ms."""
    from unetkit.models import UNet

    clock = FakeClock()
    forward = UNet.forward

    def slow_forward(self, x):
        clock.t += 0.25
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", slow_forward)
    cfg = TrainConfig.from_dict({"data": "shapes", "base_channels": 4, "depth": 3, "samples": 0, "boundary_f1": False,
                                 "data_options": {"size": 32, "num_samples": 16, "val_samples": 4},
                                 "time": "60s", "out": str(tmp_path / "run")})
    logs: list[str] = []
    result = fit(cfg, progress=False, log=logs.append, clock=clock)
    sized = next(line for line in logs if line.startswith("measured "))
    assert sized.startswith("measured 0.25") and result.time["step_s"] == pytest.approx(0.25, abs=0.01)
    assert result.time["limit"] == 60
    assert 0.9 * 60 <= clock.t <= 60  # the budget used, not overrun
    # Most of it on training steps. (The fake clock charges a training step for its forward pass only, so the
    # planned validation schedule, which counts a step as forward + backward, spends about 20 % here.)
    assert 0.7 * 60 / 0.25 < result.steps < 60 / 0.25
    assert any(line.startswith("time ") and "of a 60s budget" in line for line in logs)


def test_one_preprocessing_for_validation_checkpoint_and_onnx(mixed_run, tmp_path):
    """The same image file gives the identical network input in training's validation, in predict with the
    checkpoint and in predict with the exported ONNX file (16-bit data: percentile clip + z-score)."""
    from unetkit.checkpoint import checkpoint_datasets, load_model
    from unetkit.data import read_image
    from unetkit.data.preprocess import prepare_image
    from unetkit.export import export_onnx
    from unetkit.export.runtime import OnnxModel

    _, out = mixed_run
    model, info, ckpt = load_model(out)
    assert info.clip is not None
    _, val = checkpoint_datasets(ckpt)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, info, onnx_path, verbose=False)
    onnx_info = OnnxModel(onnx_path).data_info
    assert onnx_info == info
    for i in range(len(val)):
        from_validation = val[i][0]
        from_checkpoint = prepare_image(read_image(val.image_paths[i]), info.normalization)[0]
        from_onnx = prepare_image(read_image(val.image_paths[i]), onnx_info.normalization)[0]
        assert torch.equal(from_validation, from_checkpoint) and torch.equal(from_checkpoint, from_onnx)
    pred_ckpt, pred_onnx = tmp_path / "p1", tmp_path / "p2"
    assert main(["predict", str(out), val.image_paths[0], "--out", str(pred_ckpt), "--no-progress"]) == 0
    assert main(["predict", str(onnx_path), val.image_paths[0], "--out", str(pred_onnx), "--no-progress"]) == 0
    name = f"{val.names[0]}_mask.png"
    a, b = np.array(Image.open(pred_ckpt / name)), np.array(Image.open(pred_onnx / name))
    assert a.shape == b.shape and (a == b).mean() > 0.999


def test_the_budget_holds_when_the_machine_slows_down_mid_run(tmp_path, monkeypatch):
    """Steps take 0.25 s until step 40, then 2 s (another job took the CPU): the run still ends within its
    60 s budget, the final evaluation included, and the progress bar's total follows the planned steps."""
    from unetkit.models import UNet
    from unetkit.train import Trainer

    clock = FakeClock()
    forward = UNet.forward
    calls = {"n": 0}

    def slowing_forward(self, x):
        calls["n"] += 1
        clock.t += 0.25 if calls["n"] < 40 else 2.0
        return forward(self, x)

    monkeypatch.setattr(UNet, "forward", slowing_forward)
    cfg = TrainConfig.from_dict({"data": {"source": "shapes", "options": {"size": 32, "num_samples": 16,
                                                                          "val_samples": 4}},
                                 "base_channels": 4, "depth": 3, "samples": 0, "boundary_f1": False,
                                 "time": "60s", "out": str(tmp_path / "run")})
    trainer = Trainer(cfg, progress=False, log=lambda s: None, clock=clock)
    result = trainer.run()
    assert clock.t <= 60 * 1.05  # not the old overrun of a whole epoch under load
    assert result.time["limit"] == 60 and trainer.bar.total == trainer.total_steps
    assert trainer.budget.time_left(result.steps, trainer.total_steps) == pytest.approx(max(0.0, 60 - clock.t), abs=0.1)


def test_augmentation_is_a_planned_choice_with_its_reason():
    train, _ = get_datasets("shapes", num_samples=4, size=32)
    fp = fingerprint(train)
    plan = make_plan(fp, TrainConfig(data="shapes"))
    assert plan.augment == "brightness/contrast 0.1"
    assert plan.reasons["augment"].startswith("no flips or rotations: rotation and zoom")
    assert "augmentation        brightness/contrast 0.1" in plan.table()
    ct, _ = get_datasets("ct-chest")
    sided = make_plan(fingerprint(ct), TrainConfig())
    assert "classes with a side (right lung, left lung) would swap" in sided.reasons["augment"]
    given = make_plan(fp, TrainConfig(data="shapes", hflip=0.5, rotate=15, scale=(0.9, 1.1)))
    assert (given.augment, given.reasons["augment"]) == ("hflip 0.5, rotate 15, zoom 0.9-1.1, brightness/contrast 0.1",
                                                         "given")
    assert Plan.from_dict(given.to_dict()).augment == given.augment
    some = make_plan(fp, TrainConfig(data="shapes", rotate=15, scale=(0.85, 1.25), affine_p=0.2, elastic=0.3))
    assert some.augment == "rotate 15, zoom 0.85-1.25 on 20% of patches, elastic 0.3, brightness/contrast 0.1"


@pytest.mark.parametrize("flags, words", [
    (["--loss", "bce"], "loss bce is for a binary model with one output; this data has 4 classes"),
    (["--class-weights", "1", "2"], "class_weights has 2 values; this data has 4 classes"),
    (["--encoder", "timm:nope"], "timm has no model 'nope'"),
    (["--seed", "4294967296"], "seed must be an integer in [0, 4294967295]"),
])
def test_plan_refuses_what_train_refuses(flags, words, capsys):
    pytest.importorskip("timm")
    assert main(["plan", "shapes", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_plan_refuses_a_folder_without_validation_data(tmp_path, capsys):
    _write_folder(tmp_path / "one", [(16, 16)], seed=0, bits=8)
    assert main(["plan", str(tmp_path / "one")]) == 2
    assert "no validation data" in capsys.readouterr().err
