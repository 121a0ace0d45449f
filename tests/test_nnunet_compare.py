"""The nnU-Net comparator of the development suite (benchmarks/nnunet_compare.py): budget arithmetic,
conversion to nnU-Net's raw layout and scoring of its predictions. No training here."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from nnunet_compare import (  # noqa: E402
    ITERATIONS,
    MIN_EPOCHS,
    convert,
    fit_schedule,
    poly_lr,
    prediction_seconds,
    score,
    sliding_tiles,
)

from unetkit.data import get_datasets  # noqa: E402


# ----------------------------------------------------------------------------- budget arithmetic
def _cost(s, train_s: float, val_s: float, epoch_s: float) -> float:
    return s.epochs * (s.iterations * train_s + s.val_iterations * val_s + epoch_s)


def test_long_budget_keeps_nnunet_epochs() -> None:
    s = fit_schedule(3600.0, 0.1, 0.03, 1.0)
    assert (s.iterations, s.val_iterations) == (ITERATIONS, 50)
    assert s.epochs == int(3600 // (250 * 0.1 + 50 * 0.03 + 1.0)) == 130
    assert _cost(s, 0.1, 0.03, 1.0) <= 3600


def test_short_budget_shortens_epochs_not_their_number() -> None:
    s = fit_schedule(150.0, 1.0, 0.3, 2.0)
    assert s.epochs >= MIN_EPOCHS and 1 <= s.iterations < ITERATIONS
    assert s.val_iterations == max(1, round(s.iterations * 50 / 250))
    assert _cost(s, 1.0, 0.3, 2.0) <= 150.0
    longer = fit_schedule(150.0, 1.0, 0.3, 2.0, min_epochs=5)
    assert longer.iterations > s.iterations  # fewer epochs asked: longer ones


@pytest.mark.parametrize("seconds", [0.0, -5.0, 0.5])
def test_no_time_no_epochs(seconds: float) -> None:
    s = fit_schedule(seconds, 1.0, 0.3, 0.0)
    assert s.epochs == s.total_iterations == 0


def test_tiny_budget_one_iteration_epochs() -> None:
    s = fit_schedule(5.0, 1.0, 0.3, 2.0)
    assert (s.epochs, s.iterations, s.val_iterations) == (1, 1, 1)


def test_poly_schedule_spans_the_fitted_run() -> None:
    epochs = 1 + fit_schedule(150.0, 1.0, 0.3, 2.0).epochs  # the timing epoch plus the fitted ones
    lrs = [poly_lr(0.01, e, epochs) for e in range(epochs)]
    assert lrs[0] == 0.01 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.01 * (1 / epochs) ** 0.9)  # the last epoch trains at the tail
    assert poly_lr(0.01, epochs, epochs) == 0.0


def test_prediction_reserve() -> None:
    assert sliding_tiles((34, 128), (40, 112)) == 2  # padded to 40 rows; 128 columns need two tiles
    assert sliding_tiles((200, 40), (96, 96)) == 4 * 1
    assert sliding_tiles((96, 96), (96, 96)) == 1
    assert prediction_seconds([(34, 128), (34, 300), (20, 20)], (40, 112), 2.0, fixed_s=1.0) == (2 + 5 + 1) / 2 * 2.0 + 1


# ----------------------------------------------------------------------------- conversion and scoring
def _tiny_set(root: Path) -> Path:
    """3 training and 2 validation 8-bit images of 12x16 with classes 0-2 and one ignored (255) pixel."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        base = root if split == "train" else root / "val"
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir(parents=True)
        for i in range(n):
            mask = rng.integers(0, 3, (12, 16)).astype(np.uint8)
            mask[0, 0] = 255
            img = (mask * 60 + rng.integers(0, 40, (12, 16))).astype(np.uint8)
            Image.fromarray(img).save(base / "images" / f"{split}{i}.png")
            Image.fromarray(mask).save(base / "masks" / f"{split}{i}.png")
    return root


def test_convert_layout_and_labels(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    train, val = get_datasets(str(_tiny_set(tmp_path / "set")), num_classes=3)
    folder, dj = convert(train, val, tmp_path / "raw", "tiny-set", dataset_id=7)
    assert folder.name == "Dataset007_tinyset"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"tr_000{i}_0000.png" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"tr_000{i}.png" for i in range(3)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["ts_0000_0000.png", "ts_0001_0000.png"]
    assert json.loads((folder / "dataset.json").read_text()) == dj
    assert dj == {"channel_names": {"0": "image"}, "labels": {"background": 0, "class_1": 1, "class_2": 2,
                                                               "ignore": 3},
                  "numTraining": 3, "file_ending": ".png", "overwrite_image_reader_writer": "NaturalImage2DIO"}
    assert json.loads((folder / "cases.json").read_text())["ts_0001"] == val.names[1]
    io = NaturalImage2DIO()
    for i in range(3):
        image, mask = train.load_stored(i)
        seg, props = io.read_seg(str(folder / "labelsTr" / f"tr_000{i}.png"))
        expect = np.where(mask == 255, 3, mask)  # ignore_index -> nnU-Net's ignore label
        np.testing.assert_array_equal(seg[0, 0], expect)
        img, _ = io.read_images([str(folder / "imagesTr" / f"tr_000{i}_0000.png")])
        np.testing.assert_array_equal(img[0, 0], image[0])
    cases = get_filenames_of_train_images_and_targets(str(folder), dj)
    assert sorted(cases) == ["tr_0000", "tr_0001", "tr_0002"]
    assert [Path(p).name for p in cases["tr_0001"]["images"]] == ["tr_0001_0000.png"]


def test_convert_rgb_one_file_per_channel(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    root = tmp_path / "rgb"
    for base in (root, root / "val"):
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).save(base / "images" / "a.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(base / "masks" / "a.png")
    train, val = get_datasets(str(root))
    folder, dj = convert(train, val, tmp_path / "raw", "ct-rgb")
    assert dj["channel_names"] == {"0": "CT", "1": "CT", "2": "CT"}  # a "ct..." set: nnU-Net's CT scheme
    assert "ignore" not in dj["labels"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"tr_0000_000{c}.png" for c in range(3)]
    assert [int(np.asarray(Image.open(folder / "imagesTr" / f"tr_0000_000{c}.png"))[0, 0]) for c in range(3)] == \
        [10, 20, 30]


def test_score_matches_hand_computation(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    _, val = get_datasets(str(_tiny_set(tmp_path / "set")), num_classes=3)
    rng = np.random.default_rng(1)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds, masks = [], []
    for i in range(len(val)):
        mask = val.load_stored(i)[1]
        pred = np.where(rng.random(mask.shape) < 0.7, np.where(mask == 255, 0, mask), rng.integers(0, 3, mask.shape))
        NaturalImage2DIO().write_seg(pred[None].astype(np.uint8), str(pred_dir / f"ts_{i:04d}.png"), {})
        preds.append(pred)
        masks.append(mask)
    got = score(pred_dir, val)
    p, t = np.concatenate([x.ravel() for x in preds]), np.concatenate([x.ravel() for x in masks])
    keep = t != 255
    p, t = p[keep], t[keep]
    iou = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in range(3)]
    dice = [2 * ((p == c) & (t == c)).sum() / ((p == c).sum() + (t == c).sum()) for c in range(3)]
    assert got["pixels"] == keep.sum() == 2 * 12 * 16 - 2  # one ignored pixel per mask
    assert got["images"] == 2
    assert got["miou"] == pytest.approx(float(np.mean(iou)), abs=1e-12)
    assert got["dice"] == pytest.approx(float(np.mean(dice)), abs=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(float((p == t).mean()))
    assert not any(math.isnan(v) for v in got["iou"])


def test_score_refuses_a_prediction_of_another_size(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    _, val = get_datasets(str(_tiny_set(tmp_path / "set")), num_classes=3)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i in range(len(val)):
        Image.fromarray(np.zeros((12, 15), np.uint8)).save(pred_dir / f"ts_{i:04d}.png")
    with pytest.raises(ValueError, match="ts_0000"):
        score(pred_dir, val)
