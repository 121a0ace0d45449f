"""Volume folders: slicing, 2.5D context, split by case, geometry checks, CT planning, and the CLI path
export -> train -> predict -> evaluate on the embedded CT written as NIfTI volumes."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from unetkit.cli.main import main
from unetkit.data import DatasetError, get_datasets
from unetkit.data.volumes import (
    VolumeSettings,
    context_indices,
    inplane_size,
    plan_spacing,
    scan_volumes,
    slice_axis_for,
)


def affine_of(spacing, origin=(0.0, 0.0, 0.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def save_nii(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def blob_case(rng, shape=(20, 18, 6), ct=False):
    """A noisy image with a bright box labelled 1 and a dark box labelled 2."""
    img = rng.normal(100, 10, size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[4:10, 5:12, 1:5] = 1
    lab[12:17, 3:8, 2:6] = 2
    img[lab == 1] += 80
    img[lab == 2] -= 60
    if ct:
        img = (img * 4 - 1000).astype(np.int16)
    return img, lab


def make_folder(root, n=5, spacing=(0.8, 0.8, 3.0), ct=False, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = blob_case(rng, ct=ct)
        save_nii(root / "images" / f"case_{i}.nii.gz", img, affine_of(spacing))
        save_nii(root / "masks" / f"case_{i}.nii.gz", lab, affine_of(spacing))
    return root


def test_slice_axis_and_context_rules():
    assert slice_axis_for((0.8, 0.8, 3.0)) == 2
    assert slice_axis_for((3.0, 0.8, 0.8)) == 0
    assert slice_axis_for((1.0, 1.0, 1.0)) == 2  # ties: the last axis
    assert slice_axis_for((0.8, 0.8, 3.0), given=0) == 0
    assert context_indices(5, 0, 2) == [0, 0, 0, 1, 2]
    assert context_indices(5, 4, 1) == [3, 4, 4]
    assert context_indices(1, 0, 2) == [0, 0, 0, 0, 0]
    assert inplane_size((100, 50), (0.5, 1.0), (1.0, 1.0)) == (50, 50)
    assert plan_spacing([(0.8, 0.8), (0.82, 0.8)])[0] is None
    target, why = plan_spacing([(0.5, 0.5), (1.0, 1.0), (0.7, 0.7)])
    assert target == (0.7, 0.7) and "resampled" in why


def test_context_stacks_neighbours_with_replicated_edges(tmp_path):
    root = make_folder(tmp_path / "d", n=2)
    scan = scan_volumes(root, val_fraction=0.5, context=1)
    train, _ = get_datasets(root, val_fraction=0.5, context=1, mean=(0.0,), std=(1.0,))
    case = scan.train[0]
    vol = nib.load(str(root / "images" / f"{case.name}.nii.gz")).get_fdata().astype(np.float32)
    assert train.in_channels == 3 and len(train) == 6  # 6 slices along the 3 mm axis
    first, _ = train.load_stored(0)
    last, mask = train.load_stored(5)
    np.testing.assert_array_equal(first[0], vol[:, :, 0])  # edge replicated
    np.testing.assert_array_equal(first[1], vol[:, :, 0])
    np.testing.assert_array_equal(first[2], vol[:, :, 1])
    np.testing.assert_array_equal(last[0], vol[:, :, 4])
    np.testing.assert_array_equal(last[2], vol[:, :, 5])
    lab = nib.load(str(root / "masks" / f"{case.name}.nii.gz")).get_fdata()
    np.testing.assert_array_equal(mask, lab[:, :, 5])


def test_split_is_by_case(tmp_path):
    root = make_folder(tmp_path / "d", n=5)
    train, val = get_datasets(root, val_fraction=0.4, mean=(0.0,), std=(1.0,))
    train_cases = {n.split(":")[0] for n in train.names}
    val_cases = {n.split(":")[0] for n in val.names}
    assert len(val_cases) == 2 and len(train_cases) == 3
    assert not train_cases & val_cases
    assert len(train) == 3 * 6 and len(val) == 2 * 6


@pytest.mark.parametrize("problem, words", [
    ("shape", "has shape"), ("spacing", "spacing"), ("orientation", "orientation"),
    ("origin", "origin"), ("float", "non-integer"), ("negative", "negative"), ("corrupt", "cannot be read"),
    ("missing", "has no label volume"),
])
def test_bad_volumes_are_named(tmp_path, problem, words):
    root = make_folder(tmp_path / "d", n=2)
    bad = root / "masks" / "case_1.nii.gz"
    lab = np.zeros((20, 18, 6), np.uint8)
    if problem == "shape":
        save_nii(bad, np.zeros((20, 18, 5), np.uint8), affine_of((0.8, 0.8, 3.0)))
    elif problem == "spacing":
        save_nii(bad, lab, affine_of((0.8, 0.9, 3.0)))
    elif problem == "orientation":
        a = affine_of((0.8, 0.8, 3.0))
        a[:3, :2] = a[:3, [1, 0]]
        save_nii(bad, lab, a)
    elif problem == "origin":
        save_nii(bad, lab, affine_of((0.8, 0.8, 3.0), origin=(5.0, 0, 0)))
    elif problem == "float":
        save_nii(bad, lab.astype(np.float32) + 0.5, affine_of((0.8, 0.8, 3.0)))
    elif problem == "negative":
        save_nii(bad, lab.astype(np.int16) - 1, affine_of((0.8, 0.8, 3.0)))
    elif problem == "corrupt":
        bad.write_bytes(b"\x1f\x8b" + b"not a volume" * 10)
    elif problem == "missing":
        bad.unlink()
    with pytest.raises(DatasetError, match=words) as e:
        scan_volumes(root)
    assert "case_1" in str(e.value) and "\n" not in str(e.value)


def test_inplane_resampling_to_the_median_spacing(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "d"
    for i, sp in enumerate((0.5, 1.0, 0.7)):
        img, lab = blob_case(rng)
        save_nii(root / "images" / f"c{i}.nii.gz", img, affine_of((sp, sp, 3.0)))
        save_nii(root / "masks" / f"c{i}.nii.gz", lab, affine_of((sp, sp, 3.0)))
    scan = scan_volumes(root, val_fraction=0.0)
    assert scan.settings.spacing == (0.7, 0.7)
    sizes = {c.name: c.shape for c in scan.train}
    assert sizes["c0"] == (6, round(20 * 0.5 / 0.7), round(18 * 0.5 / 0.7))
    assert sizes["c1"] == (6, round(20 / 0.7), round(18 / 0.7))
    assert sizes["c2"] == (6, 20, 18)
    assert all(c.spacing == pytest.approx((3.0, 0.7, 0.7)) for c in scan.train)


def test_ct_volumes_plan_a_foreground_window(tmp_path):
    from unetkit.data.fingerprint import fingerprint
    from unetkit.train import TrainConfig
    from unetkit.train.plan import make_plan

    root = make_folder(tmp_path / "d", n=3, ct=True)
    train, _ = get_datasets(root, val_fraction=0.0, mean=(0.0,), std=(1.0,))
    fp = fingerprint(train)
    assert fp.modality == "ct" and fp.spacing == [3.0, 0.8, 0.8]
    plan = make_plan(fp, TrainConfig(data=str(root)))
    assert plan.normalization == "ct"
    inside = np.concatenate([c.image_data[c.mask_data > 0] for c in train.cases]).astype(np.float64)
    lo, hi = np.percentile(inside, [0.5, 99.5])
    (clip_lo, clip_hi), = plan.norm.clip
    # the fingerprint samples at most 10,000 voxels per slice; these slices have fewer, so it is exact
    assert clip_lo == pytest.approx(lo, rel=1e-5) and clip_hi == pytest.approx(hi, rel=1e-5)
    clipped = np.clip(inside, lo, hi)
    assert plan.norm.mean[0] == pytest.approx(clipped.mean(), rel=1e-4)
    assert plan.norm.std[0] == pytest.approx(clipped.std(), rel=1e-4)


def test_2d_folders_refuse_volume_options(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError, match="volume folders"):
        get_datasets(tmp_path, context=1)


def test_volume_settings_round_trip():
    s = VolumeSettings(None, 2, (0.7, 0.8))
    assert VolumeSettings.from_dict(s.to_dict()) == s and s.channels == 5


# ----------------------------------------------------------------------------------- the CLI path
@pytest.fixture(scope="module")
def ct_volumes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctvol") / "ct"
    assert main(["data", "export", "ct-chest", str(out), "--volumes"]) == 0
    return out


@pytest.fixture(scope="module")
def volume_run(ct_volumes, tmp_path_factory):
    run = tmp_path_factory.mktemp("vrun") / "run"
    code = main(["train", "--data", str(ct_volumes), "--context", "1", "--epochs", "1", "--base-channels", "8", "--out", str(run),
                 "--quiet", "--samples", "1"])
    assert code == 0
    return run


def test_exported_ct_volumes(ct_volumes):
    from unetkit.data import load_ct_chest

    vol = load_ct_chest()
    images = sorted((ct_volumes / "images").iterdir())
    assert [p.name for p in images] == [f"ct_chest_{i}.nii.gz" for i in range(4)]
    total = 0
    for c, p in enumerate(images):
        im = nib.load(str(p))
        lab = nib.load(str(ct_volumes / "masks" / p.name))
        assert im.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(im.affine, lab.affine)
        assert im.header.get_zooms()[2] == pytest.approx(10.0 * 4, rel=1e-3)  # every 4th 10 mm slice
        total += im.shape[2]
        # case c holds the CT's slices c, c + 4, ... and their HU exactly
        np.testing.assert_array_equal(np.asarray(im.dataobj), vol.hu_ijk[:, :, c::4])
    assert total == 34
    # the four cases interleave in scanner space: their slice origins step by 10 mm along z
    z = sorted(nib.load(str(p)).affine[2, 3] for p in images)
    assert np.allclose(np.diff(z), 10.0, atol=1e-3)


def test_train_predict_evaluate_volumes(volume_run, ct_volumes, tmp_path):
    from unetkit.checkpoint import read_checkpoint
    from unetkit.metrics.surface import case_metrics

    ckpt = read_checkpoint(volume_run)
    assert ckpt["plan"]["volume"]["context"] == 1 and ckpt["model_config"]["in_channels"] == 3
    assert ckpt["plan"]["normalization"] == "ct"
    report = (volume_run / "report.html").read_text()
    assert "Per case" in report
    rows = (volume_run / "per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice_ribs") and rows[-1].startswith("mean,") and len(rows) == 3

    pred = tmp_path / "pred"
    scans = [str(p) for p in sorted((ct_volumes / "images").iterdir())]
    assert main(["predict", str(volume_run), *scans, "--out", str(pred), "--no-progress"]) == 0
    for s in scans:
        name = s.split("/")[-1]
        src, out = nib.load(s), nib.load(str(pred / name))
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert out.get_data_dtype() == np.uint8

    # evaluate the whole folder as a test set: 4 cases; per-case Dice equals one computed from the written
    # prediction volumes (the same slices, predicted by another path: evaluation blends the logits of
    # overlapping tiles and predict their probabilities, so a few pixels at tile seams may differ)
    js = tmp_path / "m.json"
    assert main(["evaluate", str(volume_run), "--data", str(ct_volumes), "--split", "all", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    cases = res["per_case"]["cases"]
    assert [c["case"] for c in cases] == [f"ct_chest_{i}" for i in range(4)]
    first = ct_volumes / "masks" / "ct_chest_0.nii.gz"
    truth = np.asarray(nib.load(str(first)).dataobj)
    mine = np.asarray(nib.load(str(pred / "ct_chest_0.nii.gz")).dataobj)
    spacing = nib.load(str(first)).header.get_zooms()
    ref = case_metrics(np.moveaxis(mine, 2, 0), np.moveaxis(truth, 2, 0), 8, (spacing[2], *spacing[:2]))
    for j, d in enumerate(cases[0]["dice"]):
        if d is None:
            assert math.isnan(ref["dice"][j])
        else:
            assert d == pytest.approx(ref["dice"][j], abs=2e-3)


def test_predict_refuses_volumes_with_a_2d_model(tmp_path, ct_volumes, capsys):
    from unetkit.train import TrainConfig, fit

    run = tmp_path / "run2d"
    fit(TrainConfig(data={"source": "shapes", "options": {"num_samples": 4, "size": 32}}, epochs=1, out=str(run),
                    samples=0, boundary_f1=False), progress=False, log=lambda m: None)
    scan = ct_volumes / "images" / "ct_chest_0.nii.gz"
    assert main(["predict", str(run), str(scan), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "trained on 2D images" in err and "Traceback" not in err


def test_predict_keeps_the_geometry_of_nrrd_mha_and_dicom_scans(volume_run, ct_volumes, tmp_path):
    """A scan in any format (oblique, anisotropic, as the volume I/O tests write them) comes back as a label
    volume on the scan's own voxel grid: same shape, same affine; NIfTI for the DICOM series."""
    import nrrd
    from test_volume_io import AFFINE, _write_dicom_series, _write_mha, _write_nrrd

    from unetkit.data.volume_io import read_volume

    hu = np.asarray(nib.load(str(ct_volumes / "images" / "ct_chest_0.nii.gz")).dataobj)[:40, :36, :]
    scans = tmp_path / "scans"
    scans.mkdir()
    inputs = [_write_nrrd(scans / "a.nrrd", hu, AFFINE), _write_mha(scans / "b.mha", hu, AFFINE),
              _write_dicom_series(scans / "c", hu, AFFINE, intercept=-1024)]
    out = tmp_path / "pred"
    assert main(["predict", str(volume_run), str(scans), "--out", str(out), "--no-progress"]) == 0
    for src, name in zip(inputs, ("a.nrrd", "b.mha", "c.nii.gz"), strict=True):
        ref, got = read_volume(src), read_volume(out / name)
        np.testing.assert_array_equal(ref.array, hu)  # the scan read back as written (DICOM rescale undone)
        assert got.array.shape == hu.shape and got.array.dtype == np.uint8
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    header = nrrd.read_header(str(out / "a.nrrd"))
    np.testing.assert_allclose(header["space directions"], nrrd.read_header(str(inputs[0]))["space directions"])


def test_onnx_export_of_a_volume_model_predicts_volumes(volume_run, ct_volumes, tmp_path):
    """The slicing (context, axis, spacing) travels in the ONNX metadata, so the exported file predicts
    volumes like the checkpoint."""
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(volume_run), "--out", str(onnx_path)]) == 0
    scan = str(ct_volumes / "images" / "ct_chest_1.nii.gz")
    assert main(["predict", str(onnx_path), scan, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["predict", str(volume_run), scan, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    a = np.asarray(nib.load(str(tmp_path / "a" / "ct_chest_1.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / "ct_chest_1.nii.gz")).dataobj)
    assert a.shape == b.shape and (a == b).mean() >= 0.999


def test_intensity_augmentation_keeps_hounsfield_units(tmp_path):
    """torchvision's ColorJitter clamps floats to [0, 1], which erases HU; volumes get a jitter that does not."""
    from unetkit.data import AugmentConfig

    root = make_folder(tmp_path / "d", n=2, ct=True)
    aug = AugmentConfig(hflip=0.0, rotate=0.0, scale=None, color_jitter=0.2)
    train, _ = get_datasets(root, val_fraction=0.5, augment=aug, mean=(0.0,), std=(1.0,), context=1)
    raw, _ = train.load_raw(2)
    torch.manual_seed(3)
    image, _ = train[2]
    assert raw.min() < -500 and image.min() < -500  # still Hounsfield units, not clipped to [0, 1]
    # one brightness and one contrast factor for all three context channels: an affine map of the raw slice
    a, b = np.polyfit(raw.flatten().numpy(), image.flatten().numpy(), 1)
    assert 0.6 < a < 1.5 and np.allclose(image.numpy(), a * raw.numpy() + b, atol=1e-2)
