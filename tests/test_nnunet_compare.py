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
    convert_volumes,
    fit_schedule,
    poly_lr,
    prediction_seconds,
    preprocessed_shape,
    probe_done,
    refit_epochs,
    score,
    score_volumes,
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


def test_timing_epoch_stops_at_the_deadline() -> None:
    assert not probe_done(0, 5, now=100.0, last_s=20.0, deadline=110.0)  # past the deadline, nothing timed yet
    assert probe_done(1, 5, now=100.0, last_s=20.0, deadline=110.0)  # one timed: the next would end too late
    assert not probe_done(1, 5, now=80.0, last_s=20.0, deadline=110.0)
    assert probe_done(5, 5, now=0.0, last_s=1.0, deadline=1e9)


def test_epochs_are_refit_to_the_epochs_run() -> None:
    """The timing epoch's iterations run slow (warm-up), so the first fit can end minutes early: after each
    fitted epoch the remaining ones are fitted to the mean epoch time so far, both ways."""
    planned = fit_schedule(1500.0, 0.2, 0.0, 0.0)  # 50 s epochs planned
    assert planned.epochs == 30
    assert refit_epochs(1500.0 - 40.0, [40.0]) == 36  # they take 40 s: 36 more fit, ending at 1,480 s
    assert refit_epochs(1500.0 - 60.0, [60.0]) == 24  # slower than timed: fewer, none past the deadline
    assert refit_epochs(1500.0 - 80.0, [40.0, 40.0]) == 35
    assert refit_epochs(30.0, [40.0]) == 0 and refit_epochs(-5.0, [40.0]) == 0 and refit_epochs(100.0, []) == 0


def test_prediction_reserve() -> None:
    assert sliding_tiles((34, 128), (40, 112)) == 2  # padded to 40 rows; 128 columns need two tiles
    assert sliding_tiles((200, 40), (96, 96)) == 4 * 1
    assert sliding_tiles((96, 96), (96, 96)) == 1
    assert prediction_seconds([(34, 128), (34, 300), (20, 20)], (40, 112), 2.0, fixed_s=1.0) == (2 + 5 + 1) / 2 * 2.0 + 1


def test_prediction_reserve_in_3d() -> None:
    assert sliding_tiles((130, 75, 58), (64, 64, 64)) == 4 * 2 * 1  # steps of 32: 130 -> 4, 75 -> 2; 58 padded
    assert sliding_tiles((10, 34, 128), (40, 112)) == 10 * 2  # a 2D patch over a volume: every slice tiled
    with pytest.raises(ValueError):
        sliding_tiles((34, 128), (8, 40, 112))
    plans = {"transpose_forward": [2, 0, 1],
             "configurations": {"3d_fullres": {"spacing": [3.0, 0.8, 0.8]}, "2d": {"spacing": [0.8, 0.8]}}}
    # reader order (K, J, I) = (12, 10, 6) at (0.8, 0.8, 3.0) mm -> transposed (6, 12, 10) at (3, 0.8, 0.8)
    assert preprocessed_shape((12, 10, 6), (0.8, 0.8, 3.0), plans, "3d_fullres") == (6, 12, 10)
    plans["configurations"]["3d_fullres"]["spacing"] = [3.0, 1.6, 1.6]
    assert preprocessed_shape((12, 10, 6), (0.8, 0.8, 3.0), plans, "3d_fullres") == (6, 6, 5)
    assert preprocessed_shape((12, 10, 6), (0.8, 0.8, 3.0), plans, "2d") == (6, 12, 10)  # slices keep their spacing


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


# ----------------------------------------------------------------------------- volume folders
SPACING = (3.0, 0.8, 0.8)  # mm along I, J, K: anisotropic, the first axis coarsest
VOL_SHAPE = (6, 10, 12)


def _affine(origin: float) -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (origin, -4.0, 2.5)
    return affine


def _tiny_volumes(root: Path) -> Path:
    """3 training and 2 validation NIfTI cases of 6x10x12 voxels at 3 x 0.8 x 0.8 mm (explicit val/), int16
    images, classes 0-2 as a box and a slab, and one ignored (255) voxel in the first training case."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        base = root if split == "train" else root / "val"
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros(VOL_SHAPE, np.uint8)
            mask[1:4, 2:7, 3:9 + i] = 1
            mask[4:, :, 6:] = 2
            if split == "train" and i == 0:
                mask[0, 0, 0] = 255
            image = (np.where(mask == 255, 0, mask) * 100 + rng.integers(-20, 20, VOL_SHAPE)).astype(np.int16)
            affine = _affine(10.0 * i)
            nib.save(nib.Nifti1Image(image, affine), base / "images" / f"{split}{i}.nii.gz")
            nib.save(nib.Nifti1Image(mask, affine), base / "masks" / f"{split}{i}.nii.gz")
    (root / "classes.yaml").write_text("names: [background, box, slab]\n")
    return root


def test_convert_volumes_layout_and_geometry(tmp_path: Path) -> None:
    from unetkit.data.volume_io import read_volume

    train, val = get_datasets(str(_tiny_volumes(tmp_path / "vols")))
    assert [c.name for c in val.cases] == ["val0", "val1"]
    folder, dj = convert_volumes(train, val, tmp_path / "raw", "ct-tiny", dataset_id=8)
    assert folder.name == "Dataset008_cttiny"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"tr_000{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"tr_000{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["ts_0000_0000.nii.gz", "ts_0001_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text()) == dj
    assert dj == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "box": 1, "slab": 2, "ignore": 3},
                  "numTraining": 3, "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}
    cases = json.loads((folder / "cases.json").read_text())
    assert cases == {"tr_0000": "train0", "tr_0001": "train1", "tr_0002": "train2", "ts_0000": "val0", "ts_0001": "val1"}
    for name, (sub, file) in {"train0": ("imagesTr", "tr_0000_0000"), "val1": ("imagesTs", "ts_0001_0000")}.items():
        ours = next(c for c in [*train.cases, *val.cases] if c.name == name)
        stored, written = read_volume(ours.image), read_volume(folder / sub / f"{file}.nii.gz")
        np.testing.assert_array_equal(written.array, stored.array)
        assert written.array.dtype == np.int16
        np.testing.assert_allclose(written.affine, stored.affine, atol=1e-5)
    labels = read_volume(folder / "labelsTr" / "tr_0000.nii.gz", label=True)
    truth = read_volume(train.cases[0].mask, label=True).array
    np.testing.assert_array_equal(labels.array, np.where(truth == 255, 3, truth))  # ignore -> nnU-Net's label 3
    np.testing.assert_allclose(labels.affine, _affine(0.0), atol=1e-5)


def test_convert_volumes_as_nnunet_reads_them(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from unetkit.data.volume_io import read_volume

    train, val = get_datasets(str(_tiny_volumes(tmp_path / "vols")))
    folder, dj = convert_volumes(train, val, tmp_path / "raw", "tiny")
    assert dj["channel_names"] == {"0": "image"}
    io = determine_reader_writer_from_dataset_json(dj, verbose=False)()
    assert type(io).__name__ == "SimpleITKIO"
    image, props = io.read_images([str(folder / "imagesTr" / "tr_0001_0000.nii.gz")])
    assert image.shape == (1, *VOL_SHAPE[::-1])  # SimpleITK's (K, J, I): the same voxels, axes reversed
    np.testing.assert_allclose(props["spacing"], SPACING[::-1])  # the real, anisotropic spacing
    np.testing.assert_array_equal(image[0], read_volume(train.cases[1].image).array.transpose(2, 1, 0))
    seg, seg_props = io.read_seg(str(folder / "labelsTr" / "tr_0000.nii.gz"))
    assert seg.shape == image.shape and seg[0, 0, 0, 0] == 3
    np.testing.assert_allclose(seg_props["spacing"], SPACING[::-1])
    cases = get_filenames_of_train_images_and_targets(str(folder), dj)
    assert sorted(cases) == ["tr_0000", "tr_0001", "tr_0002"]


def _write_predictions(val, pred_dir: Path, wrong: dict[str, list[tuple[int, int, int]]]) -> list[np.ndarray]:
    """Predictions equal to each validation mask but for the ``wrong`` voxels (I, J, K), set to class 2,
    written on the case's grid (as nnU-Net's writer would); returns them."""
    from unetkit.data.formats.nifti import write
    from unetkit.data.volume_io import read_volume

    pred_dir.mkdir()
    preds = []
    for i, case in enumerate(val.cases):
        image = read_volume(case.image)
        pred = read_volume(case.mask, label=True).array.copy()
        for v in wrong.get(case.name, []):
            pred[v] = 2
        write(image, pred.astype(np.uint8), pred_dir / f"ts_{i:04d}.nii.gz")
        preds.append(pred)
    return preds


def test_score_volumes_matches_hand_computation(tmp_path: Path) -> None:
    _, val = get_datasets(str(_tiny_volumes(tmp_path / "vols")))
    # val0: 2 box voxels predicted as slab; val1: 1 background voxel predicted as slab
    wrong = {"val0": [(2, 4, 5), (3, 6, 8)], "val1": [(0, 9, 0)]}
    _write_predictions(val, tmp_path / "pred", wrong)
    got = score_volumes(tmp_path / "pred", val)
    assert got["pixels"] == 2 * 6 * 10 * 12 and got["cases"] == got["images"] == 2  # no ignored voxel in val
    box = [3 * 5 * 6, 3 * 5 * 7]  # box voxels of val0, val1
    slab = 2 * 10 * 6
    dice_box = [2 * (box[0] - 2) / (2 * box[0] - 2), 1.0]
    dice_slab = [2 * slab / (2 * slab + 2), 2 * slab / (2 * slab + 1)]
    cases = {c["case"]: c for c in got["per_case"]["cases"]}
    assert cases["val0"]["dice"] == pytest.approx([dice_box[0], dice_slab[0]], abs=1e-6)
    assert cases["val1"]["dice"] == pytest.approx([dice_box[1], dice_slab[1]], abs=1e-6)
    assert got["per_case_mean"]["dice"] == pytest.approx([np.mean(dice_box), np.mean(dice_slab)], abs=1e-6)
    assert got["per_case"]["classes"] == ["box", "slab"]
    assert cases["val1"]["hd95"][0] == 0.0  # a perfect box: no surface distance
    # dataset-level: one confusion matrix over both cases
    tp_box, tp_slab = sum(box) - 2, 2 * slab
    iou = [(2 * 720 - sum(box) - 2 * slab - 1) / (2 * 720 - sum(box) - 2 * slab), tp_box / sum(box),
           tp_slab / (2 * slab + 3)]
    assert got["miou"] == pytest.approx(float(np.mean(iou)), abs=1e-9)
    json.dumps(got, allow_nan=False)  # JSON-safe as it is written


def test_case_means_of_nnunet_and_ours_alike(tmp_path: Path) -> None:
    from bench_volumes import case_means

    _, val = get_datasets(str(_tiny_volumes(tmp_path / "vols")))
    _write_predictions(val, tmp_path / "pred", {"val1": [(0, 9, 0)]})
    mean = score_volumes(tmp_path / "pred", val)["per_case_mean"]
    dice, hd95 = case_means(mean)
    assert dice == round(float(np.mean(mean["dice"])), 4)
    assert hd95 == round(float(np.mean(mean["hd95"])), 4)
    assert case_means({"dice": [0.5, None], "hd95": ["inf", 2.0]}) == (0.5, 2.0)  # eval.json's NaN / inf


def test_score_volumes_refuses_another_grid(tmp_path: Path) -> None:
    import nibabel as nib

    _, val = get_datasets(str(_tiny_volumes(tmp_path / "vols")))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((6, 10, 11), np.uint8), _affine(0.0)), pred_dir / "ts_0000.nii.gz")
    with pytest.raises(ValueError, match="ts_0000.*voxel grid of case val0"):
        score_volumes(pred_dir, val)
    nib.save(nib.Nifti1Image(np.zeros(VOL_SHAPE, np.uint8), np.diag([1.0, 0.8, 0.8, 1.0])), pred_dir / "ts_0000.nii.gz")
    with pytest.raises(ValueError, match="voxel grid"):  # the right shape at another spacing
        score_volumes(pred_dir, val)
    (pred_dir / "ts_0000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="val0"):
        score_volumes(pred_dir, val)
