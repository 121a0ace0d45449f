"""Tests for unetkit.metrics: hand-computed cases, torchmetrics cross-checks, exactness and DDP sync."""

from __future__ import annotations

import math
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unetkit.metrics import (
    BoundaryF1,
    CumulativeMetric,
    MeanMetric,
    SegmentationMetrics,
    all_reduce_sum,
    boundary_f1,
    boundary_mask,
    default_tolerance,
    to_label_map,
)
from unetkit.models.outputs import logits_to_labels

IGN = 255


# ----------------------------------------------------------------------------------------------
# SegmentationMetrics: hand-computed cases
# ----------------------------------------------------------------------------------------------
def test_hand_computed_3x3() -> None:
    target = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [0, 1, 1], [2, 2, 0]])
    m = SegmentationMetrics(num_classes=4)  # class 3 appears nowhere
    m.update(pred, target)
    r = m.compute()
    # class 0: inter {(0,0),(1,0)}, union + {(0,1),(2,2)} -> 2/4; class 1: 3/4; class 2: 2/3
    assert r["iou"][:3].tolist() == pytest.approx([2 / 4, 3 / 4, 2 / 3])
    assert math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx((2 / 4 + 3 / 4 + 2 / 3) / 3)
    assert r["dice"][:3].tolist() == pytest.approx([4 / 6, 6 / 7, 4 / 5])
    assert r["mdice"] == pytest.approx((4 / 6 + 6 / 7 + 4 / 5) / 3)
    assert r["precision"][:3].tolist() == pytest.approx([2 / 3, 3 / 4, 2 / 2])
    assert r["recall"][:3].tolist() == pytest.approx([2 / 3, 3 / 3, 2 / 3])
    assert all(math.isnan(r[k][3]) for k in ("dice", "precision", "recall"))
    assert r["pixel_accuracy"] == pytest.approx(7 / 9)
    expected_cm = torch.tensor([[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(r["confusion_matrix"], expected_cm)
    assert r["iou"].dtype == torch.float64 and r["confusion_matrix"].dtype == torch.int64


def test_class_in_one_side_only_scores_zero_not_nan() -> None:
    target = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [0, 0]])  # class 1 never predicted, class 2 never in target
    m = SegmentationMetrics(3)
    m.update(pred, target)
    r = m.compute()
    # class 0: tp 1, fp 2, fn 1 -> IoU 1/4; classes 1 and 2 have tp 0 -> 0
    assert r["iou"].tolist() == pytest.approx([1 / 4, 0.0, 0.0])
    assert r["precision"].tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    assert r["recall"].tolist() == pytest.approx([1 / 2, 0.0, 0.0])
    assert r["miou"] == pytest.approx(1 / 12)


def test_dataset_level_miou_differs_from_mean_of_batches() -> None:
    m = SegmentationMetrics(2)
    batches = [
        (torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 1]])),  # per-batch mIoU (3/4 + 0)/2
        (torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]])),  # per-batch mIoU 1 (class 0 NaN)
    ]
    per_batch = []
    for pred, target in batches:
        single = SegmentationMetrics(2)
        single.update(pred, target)
        per_batch.append(single.compute()["miou"])
        m.update(pred, target)
    assert per_batch == pytest.approx([0.375, 1.0])
    # dataset level: class 0 tp 3 fp 1 fn 0 -> 3/4; class 1 tp 4 fp 0 fn 1 -> 4/5
    assert m.compute()["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert np.mean(per_batch) == pytest.approx(0.6875)


def test_ignore_index_and_logits_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    target[0, :2] = IGN
    a = SegmentationMetrics(3, ignore_index=IGN)
    a.update(logits, target)
    b = SegmentationMetrics(3, ignore_index=IGN)
    b.update(logits.argmax(1), target)
    keep = target != IGN
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(target[keep].tolist(), logits.argmax(1)[keep].tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(a.compute()["confusion_matrix"], expected)
    assert torch.equal(b.compute()["confusion_matrix"], expected)
    # (N, 1, H, W) targets are squeezed for logits input
    c = SegmentationMetrics(3, ignore_index=IGN)
    c.update(logits, target[:, None])
    assert torch.equal(c.compute()["confusion_matrix"], expected)


def test_ignore_index_inside_class_range_and_negative() -> None:
    target = torch.tensor([[0, 1, 2], [2, 1, 0]])
    pred = torch.tensor([[0, 2, 2], [1, 1, 1]])
    m0 = SegmentationMetrics(3, ignore_index=0)  # e.g. "background is unlabelled"
    m0.update(pred, target)
    assert torch.equal(m0.compute()["confusion_matrix"], torch.tensor([[0, 0, 0], [0, 1, 1], [0, 1, 1]]))
    neg = torch.tensor([[-1, 1, 2], [2, 1, -1]])
    m1 = SegmentationMetrics(3, ignore_index=-1)
    m1.update(pred, neg)
    assert torch.equal(m1.compute()["confusion_matrix"], torch.tensor([[0, 0, 0], [0, 1, 1], [0, 1, 1]]))


def test_binary_one_logit_channel_thresholds_at_zero() -> None:
    logits = torch.tensor([[[[-2.0, 0.5], [3.0, -0.1]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[0, 1], [0, 0]]])
    m = SegmentationMetrics(2)
    m.update(logits, target)
    # pred = [[0, 1], [1, 0]] -> class 0: tp 2, fp 0, fn 1; class 1: tp 1, fp 1, fn 0
    assert torch.equal(m.compute()["confusion_matrix"], torch.tensor([[2, 1], [0, 1]]))
    assert m.compute()["iou"].tolist() == pytest.approx([2 / 3, 1 / 2])
    with pytest.raises(ValueError, match="num_classes must be 2"):
        SegmentationMetrics(3).update(logits, target)


def test_invalid_values_raise() -> None:
    m = SegmentationMetrics(3, ignore_index=IGN)
    pred = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target contains class 7 but num_classes is 3 .*ignore_index=255"):
        m.update(pred, torch.tensor([[[0, 7], [IGN, 1]]]))
    with pytest.raises(ValueError, match="target contains class -2"):
        m.update(pred, torch.tensor([[[0, -2], [IGN, 1]]]))
    with pytest.raises(ValueError, match="pred contains class 5"):
        m.update(torch.tensor([[[0, 5], [0, 0]]]), torch.tensor([[[0, 1], [IGN, 1]]]))
    # an out-of-range prediction on an ignored pixel is harmless
    m.update(torch.tensor([[[0, 1], [9, 0]]]), torch.tensor([[[0, 1], [IGN, 1]]]))
    assert torch.equal(m.compute()["confusion_matrix"], torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="3 channels but num_classes is 4"):
        SegmentationMetrics(4).update(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer label map"):
        m.update(pred, torch.zeros(1, 2, 2))


def test_reset_and_empty() -> None:
    m = SegmentationMetrics(2)
    r = m.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"])
    m.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]))
    assert m.compute()["pixel_accuracy"] == 0.5
    m.reset()
    assert int(m.compute()["confusion_matrix"].sum()) == 0
    m.sync()  # not distributed: a no-op
    assert int(m.compute()["confusion_matrix"].sum()) == 0


# ----------------------------------------------------------------------------------------------
# SegmentationMetrics vs torchmetrics
# ----------------------------------------------------------------------------------------------
def test_matches_torchmetrics_over_several_updates() -> None:
    # imported here, not at module level, so the DDP test's spawned workers need not import it
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassJaccardIndex,
        MulticlassPrecision,
        MulticlassRecall,
    )

    c = 6
    g = torch.Generator().manual_seed(42)
    ours = SegmentationMetrics(c, ignore_index=IGN)
    kw = {"num_classes": c, "ignore_index": IGN}
    tm = {
        "cm": MulticlassConfusionMatrix(**kw),
        "iou": MulticlassJaccardIndex(average=None, **kw),
        "dice": MulticlassF1Score(average=None, **kw),
        "precision": MulticlassPrecision(average=None, **kw),
        "recall": MulticlassRecall(average=None, **kw),
        "acc": MulticlassAccuracy(average="micro", **kw),
    }
    for _ in range(4):
        target = torch.randint(0, 4, (3, 17, 19), generator=g)  # classes 4, 5 absent from target
        pred = torch.randint(0, 5, (3, 17, 19), generator=g)  # class 5 absent everywhere
        target[torch.rand(target.shape, generator=g) < 0.1] = IGN
        ours.update(pred, target)
        for metric in tm.values():
            metric.update(pred, target)
    r = ours.compute()
    assert torch.equal(r["confusion_matrix"], tm["cm"].compute().long())
    present = torch.arange(5)  # classes present in prediction or target
    for key in ("iou", "dice", "precision", "recall"):
        expected = tm[key].compute().double()
        assert torch.allclose(r[key][present], expected[present], atol=1e-6), key
        assert math.isnan(r[key][5])  # torchmetrics reports 0 here; we report NaN
    assert r["miou"] == pytest.approx(float(tm["iou"].compute()[:5].double().mean()), abs=1e-6)
    assert r["pixel_accuracy"] == pytest.approx(float(tm["acc"].compute()), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Exactness on large counts
# ----------------------------------------------------------------------------------------------
def test_counts_exact_beyond_float32_range() -> None:
    side, repeats, c = 4096, 8, 8
    target = (torch.arange(side * side, dtype=torch.int32) % c).to(torch.uint8).reshape(1, side, side)
    pred = target.clone()
    pred[0, 0, :1001] = (pred[0, 0, :1001] + 1) % c  # 1001 wrong pixels per update
    m = SegmentationMetrics(c, ignore_index=IGN)
    start = time.perf_counter()
    for i in range(repeats):
        target[0, -1, : 77 + i] = IGN  # 77 + i ignored pixels in update i
        m.update(pred, target)
    elapsed = time.perf_counter() - start
    r = m.compute()
    valid = repeats * side * side - sum(77 + i for i in range(repeats))  # 134,217,084
    correct = valid - repeats * 1001
    assert valid > 2**24
    cm = r["confusion_matrix"]
    assert int(cm.sum()) == valid
    assert int(cm.trace()) == correct
    # wrong pixels: the first 1001 pixels cycle through classes 0..7 -> row k has 126 or 125 of them
    per_class_wrong = [repeats * len(range(k, 1001, c)) for k in range(c)]
    assert (cm.sum(1) - cm.diagonal()).tolist() == per_class_wrong
    assert r["pixel_accuracy"] == correct / valid  # float64 ratio of exact integer counts
    # a float32 accumulator could not even represent these counts
    assert int(torch.tensor(valid, dtype=torch.float32).item()) != valid
    assert int(torch.tensor(correct, dtype=torch.float32).item()) != correct
    assert elapsed < 10.0, f"{repeats} updates of {side}x{side} took {elapsed:.1f}s"


# ----------------------------------------------------------------------------------------------
# Boundary F1
# ----------------------------------------------------------------------------------------------
def _square(h: int, w: int, r0: int, c0: int, side: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.long)
    m[r0:r0 + side, c0:c0 + side] = 1
    return m


def test_boundary_mask_border_not_counted() -> None:
    m = _square(20, 20, 0, 0, 10)  # touches the top and left image borders
    b = boundary_mask(m)
    assert b.sum() == 19  # row 9 and column 9 only
    assert boundary_mask(_square(20, 20, 5, 5, 10)).sum() == 36  # full ring 4*10-4
    assert boundary_mask(torch.ones(5, 5)).sum() == 0


@pytest.mark.parametrize("tol,matched", [(0.0, 34), (1.0, 38), (2.0, 42), (2.9, 42), (3.0, 76)])
def test_bf1_shifted_square_hand_counts(tol: float, matched: int) -> None:
    # 20x20 square (76 boundary pixels) shifted right by k=3. By the mirror symmetry of the
    # configuration precision == recall == matched / 76, hence F1 == matched / 76.
    # tol 0: the 17 shared pixels of the top and bottom rows each -> 34; tol 1: +1 per row and
    # the two pixels of the left side next to the top/bottom rows -> 38; tol 2: 42; tol >= 3: all.
    target = _square(64, 64, 10, 10, 20)
    pred = _square(64, 64, 10, 13, 20)
    bf = boundary_f1(pred, target, num_classes=2, tolerance=tol)
    assert bf[1].item() == pytest.approx(matched / 76)
    assert bf.dtype == torch.float64


def test_bf1_default_tolerance() -> None:
    assert default_tolerance(64, 64) == pytest.approx(0.0075 * math.sqrt(2) * 64)
    assert default_tolerance(512, 512) == pytest.approx(5.4306, abs=1e-4)
    target = _square(64, 64, 10, 10, 20)
    pred = _square(64, 64, 10, 13, 20)
    # 0.68 px at 64x64: only exact overlaps match, like tol=0
    assert boundary_f1(pred, target, 2)[1].item() == pytest.approx(34 / 76)


def test_bf1_identical_disjoint_absent() -> None:
    target = torch.zeros(2, 48, 48, dtype=torch.long)
    target[:, 5:15, 5:15] = 1
    target[0, 30:40, 30:40] = 2
    same = boundary_f1(target, target, num_classes=4, tolerance=2)
    assert same[:3].tolist() == [1.0, 1.0, 1.0]
    assert math.isnan(same[3])  # class 3 absent everywhere
    far = torch.zeros_like(target)
    far[:, 33:43, 33:43] = 1  # class 1 predicted far from the target square
    bf = boundary_f1(far, target, num_classes=4, tolerance=2)
    assert bf[1].item() == 0.0
    # class 2 is in the target of image 0 only, never predicted -> 0 (one boundary empty); image 1 skipped
    assert bf[2].item() == 0.0


def test_bf1_whole_image_class_and_averaging_over_images() -> None:
    full = torch.ones(1, 16, 16, dtype=torch.long)
    assert boundary_f1(full, full, 2, tolerance=1)[1].item() == 1.0  # no boundary in either: agree
    assert math.isnan(boundary_f1(full, full, 2, tolerance=1)[0])
    # two images: shifted square (F1 34/76 at tol 0) and an identical one (1.0) -> mean
    t = torch.stack([_square(64, 64, 10, 10, 20), _square(64, 64, 10, 10, 20)])
    p = torch.stack([_square(64, 64, 10, 13, 20), _square(64, 64, 10, 10, 20)])
    assert boundary_f1(p, t, 2, tolerance=0)[1].item() == pytest.approx((34 / 76 + 1.0) / 2)
    acc = BoundaryF1(2, tolerance=0)
    acc.update(p[:1], t[:1])
    acc.update(p[1:], t[1:])
    assert torch.allclose(acc.compute(), boundary_f1(p, t, 2, tolerance=0), equal_nan=True)
    acc.reset()
    assert torch.isnan(acc.compute()).all()


def test_bf1_logits_input_and_ignore_index() -> None:
    target = _square(40, 40, 5, 5, 12)
    logits = torch.stack([-(target.float() - 0.5), target.float() - 0.5])[None]  # argmax == target
    assert boundary_f1(logits, target[None], 2, tolerance=0).tolist() == [1.0, 1.0]
    # a spurious predicted blob inside an ignored region is not scored
    t = target.clone()
    t[25:38, 25:38] = IGN
    pred = target.clone()
    pred[28:34, 28:34] = 1
    with_ignore = boundary_f1(pred, t, 2, tolerance=0, ignore_index=IGN)
    assert with_ignore[1].item() == 1.0
    without_blob = boundary_f1(target, target, 2, tolerance=0)
    assert with_ignore[1].item() == without_blob[1].item()
    with pytest.raises(ValueError, match="target contains class 255"):
        boundary_f1(pred, t, 2)


def _bf1_bruteforce(pred: np.ndarray, target: np.ndarray, c: int, tol: float) -> float | None:
    """Independent BF of one class in one image: explicit neighbour loops and pairwise distances."""
    h, w = target.shape

    def boundary(lab: np.ndarray) -> list[tuple[int, int]]:
        pts = []
        for i in range(h):
            for j in range(w):
                if lab[i, j] != c:
                    continue
                nbrs = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))]
                if any(0 <= a < h and 0 <= b < w and lab[a, b] != c for a, b in nbrs):
                    pts.append((i, j))
        return pts

    in_p, in_t = (pred == c).any(), (target == c).any()
    if not in_p and not in_t:
        return None
    bp, bt = boundary(pred), boundary(target)
    if not bp and not bt:
        return 1.0 if in_p and in_t else 0.0
    if not bp or not bt:
        return 0.0

    def frac(src: list, dst: list) -> float:
        d = np.array(dst, dtype=float)
        return float(np.mean([np.sqrt(((d - np.array(s)) ** 2).sum(1)).min() <= tol for s in src]))

    prec, rec = frac(bp, bt), frac(bt, bp)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def test_bf1_matches_bruteforce_on_random_maps() -> None:
    g = torch.Generator().manual_seed(3)
    c, tol = 4, 1.5
    # blocky random maps so that regions have real boundaries
    target = torch.randint(0, c, (3, 4, 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    noise = torch.randint(0, c, (3, 16, 16), generator=g)
    pred = torch.where(torch.rand(3, 16, 16, generator=g) < 0.15, noise, target)
    got = boundary_f1(pred, target, c, tolerance=tol)
    sums, counts = np.zeros(c), np.zeros(c)
    for i in range(3):
        for k in range(c):
            s = _bf1_bruteforce(pred[i].numpy(), target[i].numpy(), k, tol)
            if s is not None:
                sums[k] += s
                counts[k] += 1
    expected = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    assert np.allclose(got.numpy(), expected, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# CumulativeMetric base, MeanMetric and logits reading
# ----------------------------------------------------------------------------------------------
class _Histogram(CumulativeMetric):
    """A toy subclass: an int64 histogram and a float64 running sum."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hist", torch.zeros(3, dtype=torch.int64))
        self.add_state("total", torch.zeros((), dtype=torch.float64))

    def update(self, values: torch.Tensor) -> None:
        self.accumulate(hist=torch.bincount(values, minlength=3), total=values.double().sum())

    def compute(self) -> tuple[list[int], float]:
        return self.state("hist").tolist(), float(self.state("total"))


def test_cumulative_base_update_compute_reset() -> None:
    m = _Histogram()
    assert m.compute() == ([0, 0, 0], 0.0) and m.update_count == 0
    m.update(torch.tensor([0, 2, 2]))
    m.update(torch.tensor([1, 2]))
    assert m.compute() == ([1, 1, 3], 7.0) and m.update_count == 2
    assert list(m.state_names()) == ["hist", "total"]
    assert m.state("hist").dtype == torch.int64 and m.state("total").dtype == torch.float64
    m.sync()  # not distributed: a no-op
    m.sync()
    assert m.compute() == ([1, 1, 3], 7.0)
    m.reset()
    assert m.compute() == ([0, 0, 0], 0.0) and m.update_count == 0
    m.update(torch.tensor([1]))  # the reset defaults were copies: no aliasing with the first run
    assert m.compute() == ([0, 1, 0], 1.0)
    with pytest.raises(ValueError, match="already declared"):
        m.add_state("hist", torch.zeros(3))
    with pytest.raises(KeyError, match="unknown state 'nope'"):
        m.accumulate(nope=torch.ones(()))
    with pytest.raises(TypeError):
        CumulativeMetric()  # abstract: update and compute are the subclass's


def test_metrics_made_under_inference_mode_update_outside_it() -> None:
    pred, target = torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]])
    with torch.inference_mode():
        seg, bf, mean = SegmentationMetrics(2), BoundaryF1(2), MeanMetric()
    seg.update(pred, target)
    bf.update(pred[None], target[None])
    mean.update(torch.tensor(2.0), weight=3)
    assert torch.equal(seg.compute()["confusion_matrix"], torch.tensor([[1, 1], [0, 1]]))
    assert int(bf.state("counts").sum()) == 2 and mean.compute() == 2.0


def test_all_reduce_sum_without_process_group_is_in_place_noop() -> None:
    t = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.5, 2.0]


def test_mean_metric_weighted_mean_matches_torchmetrics() -> None:
    from torchmetrics.aggregation import MeanMetric as TMMeanMetric

    g = torch.Generator().manual_seed(3)
    ours, ref = MeanMetric(), TMMeanMetric()
    assert math.isnan(ours.compute())
    for n in (4, 1, 7):
        loss = torch.rand((), generator=g) * 3
        ours.update(loss, weight=n)
        ref.update(loss, weight=n)
    values = torch.rand(5, generator=g)  # a tensor of values, each with weight 2
    ours.update(values, weight=2.0)
    ref.update(values, weight=torch.full((5,), 2.0))
    ours.update(0.25)  # a plain number, weight 1
    ref.update(0.25)
    assert ours.compute() == pytest.approx(float(ref.compute()), rel=1e-6)
    assert float(ours.state("weight")) == 4 + 1 + 7 + 10 + 1
    ours.reset()
    assert math.isnan(ours.compute())


def test_to_label_map_reads_logits_through_logits_to_labels() -> None:
    g = torch.Generator().manual_seed(5)
    multi = torch.randn(2, 4, 3, 5, generator=g)
    multi[0, 1:3, 0, 0] = 9.0  # a tie: the first maximum wins
    binary = torch.randn(2, 1, 3, 5, generator=g)
    assert torch.equal(to_label_map(multi, 4), logits_to_labels(multi))
    assert int(to_label_map(multi, 4)[0, 0, 0]) == 1
    assert torch.equal(to_label_map(binary, 2), logits_to_labels(binary))
    assert torch.equal(to_label_map(binary, 2), (binary[:, 0] > 0).long())
    labels = torch.randint(0, 4, (2, 3, 5), generator=g)
    assert to_label_map(labels, 4) is labels
    with pytest.raises(ValueError, match="one logit channel .* num_classes must be 2, got 3"):
        to_label_map(binary, 3)
    with pytest.raises(ValueError, match="4 channels but num_classes is 5"):
        to_label_map(multi, 5)
    with pytest.raises(TypeError, match="neither logits"):
        to_label_map(labels.float(), 4, target_ndim=3)


# ----------------------------------------------------------------------------------------------
# DDP sync with two gloo processes
# ----------------------------------------------------------------------------------------------
def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    target = torch.randint(0, 3, (2, 12, 12), generator=g)
    target[:, 0] = IGN
    pred = torch.randint(0, 3, (2, 12, 12), generator=g)
    return pred, target


def _sync_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: no OpenMP pool inherited across fork
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pred, target = _rank_data(rank)
        m = SegmentationMetrics(3, ignore_index=IGN)
        m.update(pred, target)
        bf = BoundaryF1(3, tolerance=1, ignore_index=IGN)
        bf.update(pred, target)
        m.sync()
        m.sync()  # idempotent: must not double-count
        bf.sync()
        bf.sync()
        mean = MeanMetric()
        mean.update(torch.tensor(float(rank + 1)), weight=rank + 1)  # rank 0: 1 x 1, rank 1: 2 x 2
        mean.sync()
        mean_once = mean.compute()
        mean.sync()
        mean_twice = mean.compute()
        weight_twice = float(mean.state("weight"))  # a ratio hides double-counting: check the sums
        mean.update(10.0, weight=rank)  # after a sync: the next sync merges the local totals again
        mean.sync()
        t = torch.tensor([rank + 1, 10 * (rank + 1)])
        reduced = all_reduce_sum(t)
        torch.save({"cm": m.compute()["confusion_matrix"], "bf": bf.compute(), "mean_once": mean_once,
                    "mean_twice": mean_twice, "weight_twice": weight_twice,
                    "bf_counts": bf.state("counts"), "mean_after": mean.compute(), "in_place": reduced is t,
                    "reduced": t}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_sync_merges_two_gloo_ranks(tmp_path) -> None:
    # fork where available: spawned workers re-import torch, torchvision and this module, which
    # takes 10-30 s on a loaded 2-core machine; forked ones start in well under a second.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_sync_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method=method)
    expected_cm = torch.zeros(3, 3, dtype=torch.int64)
    preds, targets = [], []
    for rank in range(2):
        pred, target = _rank_data(rank)
        local = SegmentationMetrics(3, ignore_index=IGN)
        local.update(pred, target)
        expected_cm += local.compute()["confusion_matrix"]
        preds.append(pred)
        targets.append(target)
    expected_bf = boundary_f1(torch.cat(preds), torch.cat(targets), 3, tolerance=1, ignore_index=IGN)
    bf_all = BoundaryF1(3, tolerance=1, ignore_index=IGN)
    bf_all.update(torch.cat(preds), torch.cat(targets))
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(res["cm"], expected_cm)
        assert torch.allclose(res["bf"], expected_bf, equal_nan=True)
        assert torch.equal(res["bf_counts"], bf_all.state("counts"))
        assert res["weight_twice"] == 3.0
        assert res["mean_once"] == res["mean_twice"] == pytest.approx((1 * 1 + 2 * 2) / (1 + 2))
        assert res["mean_after"] == pytest.approx((1 * 1 + 2 * 2 + 10 * 1) / (1 + 2 + 1))
        assert res["in_place"] and res["reduced"].tolist() == [3, 30]
