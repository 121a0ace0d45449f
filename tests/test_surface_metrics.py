"""Per-case Dice/IoU/HD95/NSD (unetkit.metrics.surface), checked by hand and against MONAI."""

from __future__ import annotations

import csv
import inspect
import io
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from unetkit.metrics import PerCaseMetrics, case_metrics, hausdorff95, surface_dice, surface_distances

# MONAI warns on every empty mask ("the ground truth of class 1 is all 0, ...") and, in 1.6, about an
# argument it passes to itself (get_mask_edges(always_return_as_numpy=...))
pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class"),
    pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning"),
]

SPACING_3D = (0.8, 0.8, 2.5)
SPACING_2D = (0.7, 1.3)


def _fields(shape: tuple[int, ...], seed: int, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(2))  # type: ignore[return-value]


def _labels(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """3 classes from two smooth random fields: blobs with realistic (curved, multi-part) surfaces."""
    lab = np.zeros(f1.shape, dtype=np.int64)
    lab[f1 > 0.04] = 1
    lab[f2 > 0.06] = 2
    return lab


def _pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth): the prediction is the truth's fields plus smooth noise, so surfaces lie close."""
    f1, f2 = _fields(shape, seed)
    n1, n2 = _fields(shape, seed + 1000, sigma=1.5)
    return _labels(f1 + 0.5 * n1, f2 + 0.5 * n2), _labels(f1, f2)


def _onehot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(1, C, *spatial) float one-hot; values outside 0..C-1 (ignored voxels) are all-zero columns."""
    t = torch.from_numpy(labels)
    return torch.stack([(t == c) for c in range(num_classes)])[None].float()


# ---------------------------------------------------------------- agreement with MONAI


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [((20, 24, 16), SPACING_3D, 0), ((20, 24, 16), SPACING_3D, 1), ((48, 40), SPACING_2D, 2)],
    ids=["3d-a", "3d-b", "2d"],
)
def test_hd95_and_nsd_match_monai(shape, spacing, seed):
    mm = pytest.importorskip("monai.metrics")
    pred, truth = _pair(shape, seed)
    p1, t1 = _onehot(pred, 3), _onehot(truth, 3)
    hd_ref = mm.compute_hausdorff_distance(p1, t1, include_background=True, percentile=95, spacing=spacing)[0]
    for tol in (1.0, 2.5):
        nsd_ref = mm.compute_surface_dice(p1, t1, [tol] * 3, include_background=True, spacing=spacing)[0]
        for c in range(3):
            assert (pred == c).any() and (truth == c).any()
            assert surface_dice(pred == c, truth == c, spacing, tol) == pytest.approx(float(nsd_ref[c]), rel=1e-6)
            assert hausdorff95(pred == c, truth == c, spacing) == pytest.approx(float(hd_ref[c]), rel=1e-6)
        # the same numbers through case_metrics (foreground classes 1, 2)
        m = case_metrics(pred, truth, 3, spacing, tolerance_mm=tol)
        assert m["nsd"] == pytest.approx(nsd_ref[1:].tolist(), rel=1e-6)
        assert m["hd95"] == pytest.approx(hd_ref[1:].tolist(), rel=1e-6)
    # the cases are not trivial: surfaces neither identical nor far apart
    assert 0.1 < m["nsd"][0] < 0.99 and 0 < m["hd95"][0] < 20


def test_hd95_and_nsd_match_monai_with_ignore_index():
    mm = pytest.importorskip("monai.metrics")
    pred, truth = _pair((20, 24, 16), 3)
    truth = truth.copy()
    truth[:, :5] = 255  # an unlabelled band; the prediction there must not count
    # both masks are zeroed on ignored voxels (truth's one-hot is all zero there already)
    p1, t1 = _onehot(pred, 3), _onehot(truth, 3)
    valid = torch.from_numpy(truth != 255)[None, None].float()
    nsd_ref = mm.compute_surface_dice(p1 * valid, t1, [1.0, 1.0], spacing=SPACING_3D)[0]
    hd_ref = mm.compute_hausdorff_distance(p1 * valid, t1, percentile=95, spacing=SPACING_3D)[0]
    m = case_metrics(pred, truth, 3, SPACING_3D, tolerance_mm=1.0, ignore_index=255)
    assert m["nsd"] == pytest.approx(nsd_ref.tolist(), rel=1e-6)
    assert m["hd95"] == pytest.approx(hd_ref.tolist(), rel=1e-6)
    if "ignore_index" in inspect.signature(mm.compute_surface_dice).parameters:  # MONAI >= 1.5
        # MONAI's own ignore_index masks y_pred and y where the one-hot truth is all zero: the same
        native = mm.compute_surface_dice(p1, t1, [1.0, 1.0], spacing=SPACING_3D, ignore_index=255)[0]
        assert m["nsd"] == pytest.approx(native.tolist(), rel=1e-6)
    unmasked = case_metrics(pred, np.where(truth == 255, 0, truth), 3, SPACING_3D)
    assert m["nsd"] != pytest.approx(unmasked["nsd"])  # the band did change something


def _dice_iou_by_hand(pred, truth, c, valid):
    p, t = (pred == c) & valid, (truth == c) & valid
    inter, sp, st = np.sum(p & t), np.sum(p), np.sum(t)
    if sp + st == 0:
        return math.nan, math.nan
    return 2 * inter / (sp + st), inter / np.sum(p | t)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_dice_iou_match_numpy_and_monai(ignore_index):
    pred, truth = _pair((20, 24, 16), 4)
    pred, truth = pred.copy(), truth.copy()
    # class 3 only in the prediction (a false positive), class 4 nowhere (absent)
    pred[0, 0, :3] = 3
    if ignore_index is not None:
        truth[-4:] = ignore_index
        pred[-1] = 7  # anything goes under ignored voxels
    valid = np.ones(truth.shape, bool) if ignore_index is None else truth != ignore_index
    m = case_metrics(pred, truth, 5, SPACING_3D, ignore_index=ignore_index, include_background=True)
    by_hand = [_dice_iou_by_hand(pred, truth, c, valid) for c in range(5)]
    assert m["dice"] == pytest.approx([d for d, _ in by_hand], rel=1e-12, nan_ok=True)
    assert m["iou"] == pytest.approx([i for _, i in by_hand], rel=1e-12, nan_ok=True)
    assert m["dice"][3] == 0.0 and m["iou"][3] == 0.0
    assert math.isnan(m["dice"][4]) and math.isnan(m["iou"][4]) and math.isnan(m["hd95"][4])
    assert m["hd95"][3] == math.inf and m["nsd"][3] == 0.0
    assert len(case_metrics(pred, truth, 5, SPACING_3D, ignore_index=ignore_index)["dice"]) == 4  # no background

    mm = pytest.importorskip("monai.metrics")
    # the prediction zeroed on ignored voxels (all-zero one-hot columns, as the truth's), so every MONAI
    # version scores only the valid voxels
    p1 = _onehot(pred, 5) * torch.from_numpy(valid)[None, None]
    t1 = _onehot(truth, 5)
    kw = {"include_background": True}
    # MONAI's default ignore_empty=True gives NaN wherever the truth is empty: compare the others
    dice_ref = mm.compute_dice(p1, t1, **kw)[0].tolist()
    iou_ref = mm.compute_iou(p1, t1, **kw)[0].tolist()
    assert m["dice"][:3] == pytest.approx(dice_ref[:3], rel=1e-6)
    assert m["iou"][:3] == pytest.approx(iou_ref[:3], rel=1e-6)
    assert math.isnan(dice_ref[3]) and math.isnan(iou_ref[3])  # MONAI hides the false positive ...
    dice_fp = mm.compute_dice(p1, t1, ignore_empty=False, **kw)[0].tolist()
    assert dice_fp[3] == 0.0 and dice_fp[4] == 1.0  # ... or scores an absent class 1; ours: 0 and NaN


# ---------------------------------------------------------------- hand-checkable and empty cases


def test_two_offset_boxes_by_hand():
    # A = x 2..5, y 2..4, z 2..4 (4x3x3 voxels); B = A shifted by 2 voxels along x; spacing 3 mm along x.
    # A 3x3 cross-section erodes to its centre line, so surface(A) = A minus (3,3,3), (4,3,3): 34 voxels.
    # Distances from surface(A) to surface(B) (B's surface covers x = 4 and 7 fully, x = 5, 6 but the centre):
    #   x = 2 face, 9 voxels: nearest is (4, y, z), 2 voxels * 3 mm = 6 mm
    #   x = 3 ring, 8 voxels: (4, y, z) at 3 mm
    #   x = 4 ring, 8 voxels: on surface(B), 0 mm
    #   x = 5 face, 9 voxels: 8 on surface(B) (0 mm); the centre (5, 3, 3) is inside B, 1 mm from (5, 3, 2)
    # Sorted: 16 x 0, 1 x 1, 8 x 3, 9 x 6 (indices 25..33). p95 interpolates at index 0.95 * 33 = 31.35,
    # between two 6s -> 6.0 mm; B -> A is the mirror image, so HD95 = HD = 6.0 mm exactly.
    # NSD: 17 of 34 within 1 mm each way -> 0.5; within 3 mm 25 of 34 -> 50/68.
    # Dice: overlap x 4..5 = 18 voxels of 36 each -> 0.5; IoU 18 / 54 = 1/3.
    a = np.zeros((12, 7, 7), bool)
    b = np.zeros_like(a)
    a[2:6, 2:5, 2:5] = True
    b[4:8, 2:5, 2:5] = True
    spacing = (3.0, 1.0, 1.0)
    d_ab, d_ba = surface_distances(a, b, spacing)
    assert sorted(d_ab.tolist()) == [0.0] * 16 + [1.0] + [3.0] * 8 + [6.0] * 9
    assert sorted(d_ba.tolist()) == sorted(d_ab.tolist())
    assert hausdorff95(a, b, spacing) == 6.0
    assert hausdorff95(a, b, spacing, percentile=100) == 6.0
    assert hausdorff95(a, b, spacing, percentile=50) == 2.0  # index 16.5: halfway between the 1 and the first 3
    assert surface_dice(a, b, spacing, 1.0) == 0.5
    assert surface_dice(a, b, spacing, 2.99) == 0.5
    assert surface_dice(a, b, spacing, 3.0) == 50 / 68
    labels_a, labels_b = a.astype(np.int64), b.astype(np.int64)
    m = case_metrics(labels_a, labels_b, 2, spacing, tolerance_mm=3.0)
    assert m == {"dice": [0.5], "iou": [pytest.approx(1 / 3)], "hd95": [6.0], "nsd": [50 / 68]}
    mm = pytest.importorskip("monai.metrics")
    ref = mm.compute_hausdorff_distance(_onehot(labels_a, 2), _onehot(labels_b, 2), percentile=95, spacing=spacing)
    assert float(ref) == 6.0


def test_empty_cases():
    z = np.zeros((10, 10, 6), bool)
    o = z.copy()
    o[2:6, 3:7, 1:4] = True
    n_surface = int(o.sum()) - 2 * 2 * 1  # the 4x4x3 box erodes to a 2x2x1 core
    sp = (1.0, 1.0, 2.0)
    # both empty: nothing to measure -> NaN everywhere
    d1, d2 = surface_distances(z, z, sp)
    assert d1.size == 0 and d2.size == 0
    assert math.isnan(hausdorff95(z, z, sp)) and math.isnan(surface_dice(z, z, sp, 1.0))
    # one empty: distances from the non-empty surface are inf, HD95 inf, NSD 0 (either direction)
    d1, d2 = surface_distances(o, z, sp)
    assert d1.size == n_surface and np.all(np.isinf(d1)) and d2.size == 0
    d1, d2 = surface_distances(z, o, sp)
    assert d1.size == 0 and d2.size == n_surface and np.all(np.isinf(d2))
    for p, t in ((o, z), (z, o)):
        assert hausdorff95(p, t, sp) == math.inf
        assert surface_dice(p, t, sp, 5.0) == 0.0
    m = case_metrics(z.astype(np.int64), z.astype(np.int64), 2, sp)
    assert all(math.isnan(v[0]) for v in m.values())
    m = case_metrics(z.astype(np.int64), o.astype(np.int64), 2, sp)
    assert m == {"dice": [0.0], "iou": [0.0], "hd95": [math.inf], "nsd": [0.0]}

    mm = pytest.importorskip("monai.metrics")
    zt, ot = torch.from_numpy(z)[None, None].float(), torch.from_numpy(o)[None, None].float()
    kw = {"include_background": True, "spacing": sp}
    assert math.isnan(float(mm.compute_hausdorff_distance(zt, zt, percentile=95, **kw)))
    assert math.isnan(float(mm.compute_surface_dice(zt, zt, [1.0], **kw)))
    for p, t in ((ot, zt), (zt, ot)):
        assert float(mm.compute_surface_dice(p, t, [5.0], **kw)) == 0.0
        # documented difference: MONAI 1.6 gives NaN (quantile of all-inf distances), we give inf
        assert not math.isfinite(float(mm.compute_hausdorff_distance(p, t, percentile=95, **kw)))
        assert float(mm.compute_hausdorff_distance(p, t, **kw)) == math.inf  # plain Hausdorff: inf


def test_crop_border_and_tensor_inputs():
    pred, truth = _pair((20, 24, 16), 5)
    p, t = pred == 1, truth == 1
    big_p, big_t = np.zeros((40, 50, 30), bool), np.zeros((40, 50, 30), bool)
    big_p[7:27, 13:37, 5:21], big_t[7:27, 13:37, 5:21] = p, t
    for a, b in zip(surface_distances(p, t, SPACING_3D), surface_distances(big_p, big_t, SPACING_3D)):
        np.testing.assert_array_equal(a, b)  # masks touching the border: the border is surface
    assert hausdorff95(torch.from_numpy(p), torch.from_numpy(t), SPACING_3D) == hausdorff95(p, t, SPACING_3D)
    m = case_metrics(torch.from_numpy(pred), torch.from_numpy(truth), 3, SPACING_3D)
    assert m == case_metrics(pred, truth, 3, list(SPACING_3D))
    assert surface_dice(p, t, 0.8, 1.0) == surface_dice(p, t, (0.8,) * 3, 1.0)  # a number: isotropic


def test_bad_inputs():
    lab = np.zeros((6, 6, 4), np.int64)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(lab, lab[:5], 2, 1.0)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(lab == 0, lab == 0, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(lab == 0, lab == 0, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(lab == 0, lab == 0, 1.0, -1.0)
    bad = lab.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="pred contains class 3"):
        case_metrics(bad, lab, 3, 1.0)
    with pytest.raises(ValueError, match="truth contains class 3"):
        case_metrics(lab, bad, 3, 1.0)
    with pytest.raises(TypeError, match="integer"):
        case_metrics(lab.astype(np.float32), lab, 3, 1.0)


# ---------------------------------------------------------------- PerCaseMetrics


def test_per_case_metrics_means_rows_reset():
    metric = PerCaseMetrics(3, tolerance_mm=1.0, class_names=["bg", "liver", "tumour"])
    cases = {}
    for i, seed in enumerate((6, 7, 8)):
        pred, truth = _pair((20, 24, 16), seed)
        if i == 1:
            pred = np.where(pred == 2, 0, pred)  # tumour missed: HD95 inf, Dice 0
        if i == 2:
            pred, truth = np.where(pred == 2, 1, pred), np.where(truth == 2, 1, truth)  # no tumour at all: NaN
        spacing = (0.8, 0.8, 2.5 + i)
        cases[f"case_{i}"] = case_metrics(pred, truth, 3, spacing, tolerance_mm=1.0)
        assert metric.update(f"case_{i}", pred, truth, spacing) == cases[f"case_{i}"]
    assert len(metric) == 3
    res = metric.compute()
    assert res["classes"] == ["liver", "tumour"] and res["num_cases"] == 3
    assert [row["case"] for row in res["cases"]] == ["case_0", "case_1", "case_2"]
    assert res["cases"][1]["hd95"][1] == math.inf and math.isnan(res["cases"][2]["dice"][1])
    for name in ("dice", "iou", "nsd"):
        values = np.array([cases[c][name] for c in cases])  # (cases, classes)
        assert res["mean"][name] == pytest.approx(np.nanmean(values, axis=0).tolist(), rel=1e-12)
        assert res["overall"][name] == pytest.approx(float(np.nanmean(np.nanmean(values, axis=0))), rel=1e-12)
    hd = np.array([cases[c]["hd95"] for c in cases])
    # HD95 means leave inf (a missed class) out and count it instead; NaN (absent) is skipped as usual
    assert res["mean"]["hd95"][0] == pytest.approx(hd[:, 0].mean(), rel=1e-12)
    assert res["mean"]["hd95"][1] == pytest.approx(hd[0, 1], rel=1e-12)
    assert res["hd95_inf"] == [0, 1]
    assert math.isfinite(res["overall"]["hd95"])

    rows = metric.rows()
    assert [r["case"] for r in rows] == ["case_0", "case_1", "case_2", "mean"]
    assert list(rows[0]) == ["case", "dice_liver", "dice_tumour", "iou_liver", "iou_tumour",
                             "hd95_liver", "hd95_tumour", "nsd_liver", "nsd_tumour"]
    assert all(list(r) == list(rows[0]) for r in rows)
    assert rows[1]["hd95_tumour"] == math.inf and rows[-1]["dice_tumour"] == res["mean"]["dice"][1]
    assert metric.table(include_mean=False) == rows[:-1]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert back[1]["hd95_tumour"] == "inf" and float(back[0]["dice_liver"]) == rows[0]["dice_liver"]

    with pytest.raises(ValueError, match="already added"):
        metric.update("case_0", pred, truth, 1.0)
    metric.reset()
    assert len(metric) == 0 and metric.rows() == []
    res = metric.compute()
    assert res["cases"] == [] and res["num_cases"] == 0 and all(math.isnan(v) for v in res["mean"]["dice"])
    assert PerCaseMetrics(3).rows() == [] and PerCaseMetrics(3).reported_names == ["class_1", "class_2"]


def test_scored_cases_merge_in_case_order():
    """What evaluation gathers across processes: each process's scored cases, merged sorted by name."""
    a, b = PerCaseMetrics(3), PerCaseMetrics(3)
    truth = np.zeros((4, 6, 6), np.uint8)
    truth[1:3, 1:4, 1:4] = 1
    b.update("case_b", truth, truth, (1.0, 1.0, 1.0))
    a.update("case_a", np.zeros_like(truth), truth, (1.0, 1.0, 1.0))
    a.merge(a.scored() + b.scored())
    out = a.compute()
    assert [c["case"] for c in out["cases"]] == ["case_a", "case_b"]
    assert out["cases"][0]["dice"][0] == 0.0 and out["cases"][1]["dice"][0] == 1.0
