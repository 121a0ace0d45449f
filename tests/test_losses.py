"""Tests for unetkit.losses: every value is checked against an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetkit.losses import (
    LOSS_NAMES,
    BCEWithLogitsLoss,
    CombinedLoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    build_loss,
    resize_target_nearest,
)

IGN = 255


def _softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _multiclass_batch(seed: int = 0, n: int = 2, c: int = 4, h: int = 6, w: int = 7, absent: int | None = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    target = torch.randint(0, c, (n, h, w), generator=g)
    if absent is not None:
        target[target == absent] = 0
    target[:, 0, :3] = IGN
    return logits, target


def _dice_ref(prob: np.ndarray, onehot: np.ndarray, valid: np.ndarray, smooth: float, only_present: bool) -> float:
    """Per-class soft Dice over the batch, averaged over classes (numpy loop)."""
    losses = []
    for k in range(prob.shape[1]):
        p = prob[:, k][valid]
        t = onehot[:, k][valid]
        if only_present and t.sum() == 0:
            continue
        inter = float((p * t).sum())
        losses.append(1.0 - (2 * inter + smooth) / (p.sum() + t.sum() + smooth))
    return float(np.mean(losses)) if losses else 0.0


# ----------------------------------------------------------------------------------------------
# Dice / Tversky
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_multiclass_matches_numpy_loop(smooth: float) -> None:
    logits, target = _multiclass_batch()
    loss = DiceLoss("multiclass", smooth=smooth, ignore_index=IGN)(logits, target)
    t = target.numpy()
    valid = t != IGN
    onehot = np.stack([(t == k) for k in range(4)], axis=1).astype(np.float64)
    expected = _dice_ref(_softmax_np(logits.double().numpy()), onehot, valid, smooth, only_present=True)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_dice_absent_class_excluded_vs_included() -> None:
    logits, target = _multiclass_batch()  # class 3 absent from target
    logits[:, 3] = -30.0  # and (almost) never predicted
    t = target.numpy()
    valid = t != IGN
    prob = _softmax_np(logits.double().numpy())
    onehot = np.stack([(t == k) for k in range(4)], axis=1).astype(np.float64)
    excl = DiceLoss("multiclass", smooth=1.0, ignore_index=IGN)(logits, target).item()
    incl = DiceLoss("multiclass", smooth=1.0, ignore_index=IGN, absent_classes="include")(logits, target).item()
    assert excl == pytest.approx(_dice_ref(prob, onehot, valid, 1.0, only_present=True), rel=1e-5)
    assert incl == pytest.approx(_dice_ref(prob, onehot, valid, 1.0, only_present=False), rel=1e-5)
    # The absent class contributes ~0 loss when included: it is "rewarded" for predicting nothing.
    assert incl == pytest.approx(excl * 3 / 4, rel=1e-4)
    with pytest.raises(ValueError, match="smooth > 0"):
        DiceLoss(absent_classes="include", smooth=0.0)


def test_dice_classes_subset_and_all_absent_is_zero() -> None:
    logits, target = _multiclass_batch()
    t = target.numpy()
    valid = t != IGN
    prob = _softmax_np(logits.double().numpy())
    onehot = np.stack([(t == k) for k in range(4)], axis=1).astype(np.float64)
    sub = DiceLoss("multiclass", classes=[1, 2], ignore_index=IGN)(logits, target).item()
    assert sub == pytest.approx(_dice_ref(prob[:, 1:3], onehot[:, 1:3], valid, 0.0, True), rel=1e-5)
    # Every pixel ignored: no class present -> 0, and the graph still back-propagates.
    x = logits.clone().requires_grad_(True)
    out = DiceLoss("multiclass", ignore_index=IGN)(x, torch.full_like(target, IGN))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(x.grad).all()


def test_dice_binary_and_multilabel_match_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (3, 5, 5), generator=g)
    target[0, 0] = IGN
    got = DiceLoss("binary", ignore_index=IGN)(logits, target).item()
    t = target.numpy()
    valid = t != IGN
    p = _sigmoid_np(logits[:, 0].double().numpy())
    tt = np.where(valid, t, 0).astype(np.float64)
    expected = 1 - 2 * (p * tt)[valid].sum() / (p[valid].sum() + tt[valid].sum())
    assert got == pytest.approx(expected, rel=1e-5)
    # the (N, 1, H, W) target layout gives the same value
    assert DiceLoss("binary", ignore_index=IGN)(logits, target[:, None]).item() == pytest.approx(got, rel=1e-6)

    ml_logits = torch.randn(2, 3, 4, 4, generator=g)
    ml_target = torch.randint(0, 2, (2, 3, 4, 4), generator=g).float()
    ml_target[:, 2] = 0  # channel 2 absent -> excluded
    got_ml = DiceLoss("multilabel")(ml_logits, ml_target).item()
    pm = _sigmoid_np(ml_logits.double().numpy())
    tm = ml_target.numpy()
    per = [1 - 2 * (pm[:, k] * tm[:, k]).sum() / (pm[:, k].sum() + tm[:, k].sum()) for k in (0, 1)]
    assert got_ml == pytest.approx(float(np.mean(per)), rel=1e-5)


def test_dice_from_probabilities() -> None:
    logits, target = _multiclass_batch()
    a = DiceLoss(ignore_index=IGN)(logits, target)
    b = DiceLoss(ignore_index=IGN, from_logits=False)(logits.softmax(1), target)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_tversky_half_half_equals_dice(mode: str) -> None:
    if mode == "multiclass":
        logits, target = _multiclass_batch(seed=3)
    else:
        logits = torch.randn(2, 1, 6, 6)
        target = torch.randint(0, 2, (2, 6, 6))
        target[1, :2] = IGN
    dice = DiceLoss(mode, ignore_index=IGN)(logits, target)
    tversky = TverskyLoss(0.5, 0.5, mode=mode, ignore_index=IGN)(logits, target)
    assert tversky.item() == pytest.approx(dice.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_tversky_default_is_dice_on_random_logits_with_gradients(mode: str) -> None:
    g = torch.Generator().manual_seed(7)
    c = {"multiclass": 5, "binary": 1, "multilabel": 3}[mode]
    logits = (torch.randn(3, c, 9, 8, generator=g) * 3).requires_grad_(True)
    if mode == "multiclass":
        target = torch.randint(0, c, (3, 9, 8), generator=g)
    else:
        target = torch.randint(0, 2, (3, c, 9, 8), generator=g)
    target[0, ..., :2] = IGN
    dice_fn, tversky_fn = DiceLoss(mode, ignore_index=IGN), TverskyLoss(mode=mode, ignore_index=IGN)
    assert (tversky_fn.alpha, tversky_fn.beta, tversky_fn.gamma) == (0.5, 0.5, 1.0)
    dice, tversky = dice_fn(logits, target), tversky_fn(logits, target)
    (g_dice,) = torch.autograd.grad(dice, logits)
    (g_tversky,) = torch.autograd.grad(tversky, logits)
    assert 0.05 < dice.item() < 0.95
    torch.testing.assert_close(tversky, dice, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_tversky, g_dice, rtol=1e-5, atol=1e-8)
    # the per-class Tversky index at alpha = beta = 0.5 is the per-class Dice score
    (ti, present_t), (ds, present_d) = tversky_fn.per_class(logits, target), dice_fn.per_class(logits, target)
    torch.testing.assert_close(ti, ds, rtol=1e-6, atol=1e-7)
    assert torch.equal(present_t, present_d)


@pytest.mark.parametrize("cls", [DiceLoss, TverskyLoss])
def test_dice_and_tversky_share_option_checks(cls: type) -> None:
    with pytest.raises(ValueError, match="smooth must be >= 0, got -0.5"):
        cls(smooth=-0.5)
    with pytest.raises(ValueError, match="smooth > 0"):
        cls(absent_classes="include", smooth=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        cls(mode="softmax")
    with pytest.raises(ValueError, match="absent_classes must be one of"):
        cls(absent_classes="skip")
    assert cls(smooth=1.0, absent_classes="include").smooth == 1.0


def test_tversky_matches_hand_formula() -> None:
    logits = torch.randn(2, 1, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    p = torch.sigmoid(logits[:, 0]).double()
    t = target.double()
    tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
    ti = tp / (tp + 0.3 * fp + 0.7 * fn)
    got = TverskyLoss(alpha=0.3, beta=0.7, gamma=1.5, mode="binary")(logits, target)
    assert got.item() == pytest.approx(float((1 - ti) ** 1.5), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Focal
# ----------------------------------------------------------------------------------------------
def test_focal_multiclass_matches_hand_formula() -> None:
    logits, target = _multiclass_batch(seed=4)
    alpha = [0.25, 1.0, 2.0, 0.5]
    got = FocalLoss(gamma=2.0, alpha=alpha, ignore_index=IGN)(logits, target).item()
    prob = _softmax_np(logits.double().numpy())
    t = target.numpy()
    vals = []
    for n, i, j in zip(*np.nonzero(t != IGN), strict=True):
        pt = prob[n, t[n, i, j], i, j]
        vals.append(-alpha[t[n, i, j]] * (1 - pt) ** 2 * math.log(pt))
    assert got == pytest.approx(float(np.mean(vals)), rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    logits, target = _multiclass_batch(seed=5)
    focal = FocalLoss(gamma=0.0, ignore_index=IGN)(logits, target)
    ce = F.cross_entropy(logits, target, ignore_index=IGN)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_binary_matches_hand_formula() -> None:
    logits = torch.randn(2, 1, 4, 4) * 3
    target = torch.randint(0, 2, (2, 1, 4, 4))
    target[0, 0, 0] = IGN
    got = FocalLoss(gamma=1.5, alpha=0.25, mode="binary", ignore_index=IGN)(logits, target).item()
    x = logits.double().numpy().ravel()
    t = target.numpy().ravel()
    keep = t != IGN
    p = _sigmoid_np(x[keep])
    y = t[keep]
    pt = np.where(y == 1, p, 1 - p)
    at = np.where(y == 1, 0.25, 0.75)
    assert got == pytest.approx(float(np.mean(-at * (1 - pt) ** 1.5 * np.log(pt))), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Cross-entropy wrappers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.0), (True, 0.1)])
def test_cross_entropy_ignore_equals_ce_on_masked_pixels(weighted: bool, smoothing: float) -> None:
    logits, target = _multiclass_batch(seed=6)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0]) if weighted else None
    got = CrossEntropyLoss(weight=weight, ignore_index=IGN, label_smoothing=smoothing)(logits, target)
    keep = target != IGN
    flat_logits = logits.permute(0, 2, 3, 1)[keep]  # (M, C) valid pixels only
    expected = F.cross_entropy(flat_logits, target[keep], weight=weight, label_smoothing=smoothing)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan() -> None:
    logits, target = _multiclass_batch()
    x = logits.clone().requires_grad_(True)
    out = CrossEntropyLoss(ignore_index=IGN)(x, torch.full_like(target, IGN))
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(x.grad) == 0
    # torch itself returns NaN here, which is what the wrapper avoids
    assert math.isnan(F.cross_entropy(logits, torch.full_like(target, IGN), ignore_index=IGN).item())


def test_cross_entropy_torch_default_ignore_index() -> None:
    logits, target = _multiclass_batch(absent=None)
    target = target.masked_fill(target == IGN, -100)
    got = CrossEntropyLoss()(logits, target)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_bce_ignore_equals_bce_on_masked_pixels() -> None:
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 2, (2, 3, 5, 5))
    target[:, :, 0] = IGN
    pos_weight = torch.tensor([1.0, 2.0, 0.5])
    got = BCEWithLogitsLoss(pos_weight=pos_weight, ignore_index=IGN)(logits, target).item()
    keep = target != IGN
    x = logits[keep].double()
    y = target[keep].double()
    pw = pos_weight[:, None, None].expand(2, 3, 5, 5)[keep].double()
    # BCE with pos_weight: -(pw * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))
    expected = -(pw * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
    assert got == pytest.approx(expected.item(), rel=1e-5)
    plain = BCEWithLogitsLoss()(logits, target.clamp_max(1).float()).item()
    assert plain == pytest.approx(F.binary_cross_entropy_with_logits(logits, target.clamp_max(1).float()).item())


# ----------------------------------------------------------------------------------------------
# Combined / deep supervision
# ----------------------------------------------------------------------------------------------
def test_combined_is_weighted_sum() -> None:
    logits, target = _multiclass_batch(seed=7)
    ce = CrossEntropyLoss(ignore_index=IGN)
    dice = DiceLoss(ignore_index=IGN)
    got = CombinedLoss([ce, dice], [0.3, 0.7])(logits, target)
    assert got.item() == pytest.approx(0.3 * ce(logits, target).item() + 0.7 * dice(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        CombinedLoss([ce, dice], [1.0])


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (3, 3), (16, 12)])
def test_resize_target_nearest_matches_interpolate_and_keeps_labels(size: tuple[int, int]) -> None:
    target = torch.randint(0, 5, (2, 16, 12))
    target[:, :4] = IGN
    out = resize_target_nearest(target, size)
    ref = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
    assert out.dtype == target.dtype and out.shape == (2, *size)
    assert torch.equal(out, ref)
    assert set(out.unique().tolist()) <= set(target.unique().tolist())


def test_deep_supervision_weights_and_downsampling() -> None:
    g = torch.Generator().manual_seed(8)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[:, :3] = IGN
    outputs = [torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 8, 8, generator=g),
               torch.randn(2, 3, 4, 4, generator=g)]
    base = CrossEntropyLoss(ignore_index=IGN)
    got = DeepSupervisionLoss(base)(outputs, target)
    weights = [1.0, 0.5, 0.25]
    weights = [w / sum(weights) for w in weights]  # 4/7, 2/7, 1/7
    expected = 0.0
    for w, out in zip(weights, outputs, strict=True):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest-exact")[:, 0].long()
        expected += w * F.cross_entropy(out, t, ignore_index=IGN).item()
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert DeepSupervisionLoss.default_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    # explicit weights, and a plain tensor is just the base loss
    custom = DeepSupervisionLoss(base, weights=[1.0, 0.0, 0.0])(outputs, target)
    assert custom.item() == pytest.approx(base(outputs[0], target).item(), rel=1e-6)
    assert DeepSupervisionLoss(base)(outputs[0], target).item() == pytest.approx(base(outputs[0], target).item())
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        DeepSupervisionLoss(base, weights=[0.5, 0.5])(outputs, target)


def test_deep_supervision_binary_masks() -> None:
    target = torch.randint(0, 2, (2, 1, 8, 8)).float()
    outputs = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)]
    bce = BCEWithLogitsLoss()
    got = DeepSupervisionLoss(bce)(outputs, target).item()
    t_small = target[:, :, 1::2, 1::2]  # nearest-exact picks the odd pixels when halving
    expected = 2 / 3 * bce(outputs[0], target).item() + 1 / 3 * bce(outputs[1], t_small).item()
    assert got == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Validation and autocast
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [CrossEntropyLoss(ignore_index=IGN), DiceLoss(ignore_index=IGN),
                                  FocalLoss(ignore_index=IGN), TverskyLoss(ignore_index=IGN)])
def test_bad_inputs_raise_clear_errors(loss: torch.nn.Module) -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = IGN  # allowed
    loss(logits, target)
    bad = target.clone()
    bad[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"target contains class 7 but the model has 3 classes \(.*ignore_index=255\)"):
        loss(logits, bad)
    bad[0, 1, 1] = -1
    with pytest.raises(ValueError, match="class -1"):
        loss(logits, bad)
    nan_logits = logits.clone()
    nan_logits[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN and 0 Inf"):
        loss(nan_logits, target)
    inf_logits = logits.clone()
    inf_logits[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="0 NaN and 1 Inf"):
        loss(inf_logits, target)


def test_binary_target_out_of_range_raises() -> None:
    logits = torch.randn(1, 1, 3, 3)
    target = torch.zeros(1, 1, 3, 3)
    target[0, 0, 1, 1] = 2
    for loss in (BCEWithLogitsLoss(ignore_index=IGN), DiceLoss("binary", ignore_index=IGN)):
        with pytest.raises(ValueError, match="target contains value 2"):
            loss(logits, target)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("num_classes", [1, 4])
def test_autocast_bf16_gives_finite_float32_close_to_fp32(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, num_classes, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    if num_classes == 1 or name.startswith("bce"):
        target = torch.randint(0, 2, (2, num_classes, 16, 16))
    else:
        target = torch.randint(0, num_classes, (2, 16, 16))
    target[:, :, :2] = IGN
    loss_fn = build_loss(name, num_classes, ignore_index=IGN)
    ref = loss_fn(conv(x), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        out = loss_fn(logits, target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert out.item() == pytest.approx(ref.item(), rel=3e-2, abs=3e-3)
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


# ----------------------------------------------------------------------------------------------
# build_loss
# ----------------------------------------------------------------------------------------------
def test_build_loss_multiclass_components() -> None:
    logits, target = _multiclass_batch(seed=9)
    w = [1.0, 2.0, 3.0, 4.0]
    ce = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=IGN).item()
    dice = DiceLoss(ignore_index=IGN)(logits, target).item()
    assert build_loss("ce", 4, class_weights=w)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    assert build_loss("CE+Dice", 4, class_weights=w)(logits, target).item() == pytest.approx(
        0.5 * ce + 0.5 * dice, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("lovasz", 4)
    with pytest.raises(ValueError, match="class_weights"):
        build_loss("ce", 4, class_weights=[1.0, 2.0])


def test_build_loss_binary_maps_ce_dice_to_bce_dice() -> None:
    logits = torch.randn(2, 1, 6, 6)
    target = torch.randint(0, 2, (2, 6, 6))
    target[0, 0] = IGN
    loss = build_loss("ce+dice", 1, ignore_index=IGN)
    assert isinstance(loss, CombinedLoss)
    keep = target != IGN
    bce = F.binary_cross_entropy_with_logits(logits[:, 0][keep], target[keep].float()).item()
    p = torch.sigmoid(logits[:, 0][keep]).double()
    t = target[keep].double()
    dice = 1 - 2 * (p * t).sum() / (p.sum() + t.sum())
    assert loss(logits, target).item() == pytest.approx(0.5 * bce + 0.5 * dice.item(), rel=1e-5)
    # [w_bg, w_fg] class weights become pos_weight = w_fg / w_bg
    weighted = build_loss("bce", 1, ignore_index=IGN, class_weights=[0.5, 2.0])
    y = target[keep].double()
    x = logits[:, 0][keep].double()
    expected = -(4.0 * y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
    assert weighted(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
