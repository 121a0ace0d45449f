"""Segmentation losses: cross-entropy, BCE, Dice, Tversky, focal, combinations and deep supervision.

Conventions shared by every loss here:

* Inputs are raw logits ``(N, C, *spatial)`` (2-D ``(N, C, H, W)`` or 3-D volumes alike).
* Targets are class indices ``(N, *spatial)`` in ``"multiclass"`` mode (``(N, 1, *spatial)`` is
  accepted and squeezed), or ``{0, 1}`` maps shaped like the logits in ``"binary"`` (one logit
  channel; ``(N, *spatial)`` is accepted) and ``"multilabel"`` modes.
* ``ignore_index`` pixels are left out of numerators and denominators alike.
* Reductions are computed in float32 (logits are cast with ``.float()``), so the losses are safe
  under ``torch.autocast`` with float16/bfloat16.
* NaN/Inf logits and out-of-range targets raise a ``ValueError`` that names the bad value, instead
  of a device-side assert or a silent NaN loss. The check costs one ``isfinite`` pass over the
  logits and one ``aminmax`` pass over the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BCEWithLogitsLoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "LOSS_NAMES",
    "TverskyLoss",
    "build_loss",
    "resize_target_nearest",
]

Mode = Literal["binary", "multiclass", "multilabel"]
_MODES = ("binary", "multiclass", "multilabel")
_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------
def _check_logits(logits: Tensor) -> None:
    """Raise if ``logits`` is not a floating tensor of finite values."""
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.ndim < 3:
        raise ValueError(f"logits must be shaped (N, C, *spatial), got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        n_nan = int(torch.isnan(logits).sum())
        n_inf = int(torch.isinf(logits).sum())
        raise ValueError(
            f"logits contain {n_nan} NaN and {n_inf} Inf values (shape {tuple(logits.shape)}); "
            "the model diverged or its input contains NaN/Inf"
        )


def _class_target(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """Validate a class-index target for ``logits`` and return it with its valid-pixel mask.

    Returns ``(target_clean, valid)`` where ignored pixels of ``target_clean`` are set to 0 (a
    valid index, so ``gather``/``one_hot`` are safe) and ``valid`` is ``None`` when nothing can
    be ignored.
    """
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise TypeError(f"multiclass target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}; "
            "expected (N, *spatial) class indices"
        )
    num_classes = logits.shape[1]
    valid = None if ignore_index is None else target != ignore_index
    clean = target.long() if valid is None else target.long().masked_fill(~valid, 0)
    if clean.numel():
        lo, hi = torch.aminmax(clean)
        lo_v, hi_v = (int(v) for v in torch.stack([lo, hi]).tolist())
        if lo_v < 0 or hi_v >= num_classes:
            bad = hi_v if hi_v >= num_classes else lo_v
            raise ValueError(
                f"target contains class {bad} but the model has {num_classes} classes "
                f"(valid targets are 0..{num_classes - 1}, ignore_index={ignore_index})"
            )
    return clean, valid


def _binary_target(logits: Tensor, target: Tensor, ignore_index: int | float | None) -> tuple[Tensor, Tensor | None]:
    """Validate a ``{0, 1}`` (or soft ``[0, 1]``) target for binary/multilabel logits.

    Returns ``(target_float32, valid)``; ignored pixels of the target are set to 0.
    """
    if target.ndim == logits.ndim - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}; "
            "binary/multilabel targets are {0,1} maps shaped like the logits"
        )
    valid = None if ignore_index is None else target != ignore_index
    t = target.float()
    if valid is not None:
        t = t.masked_fill(~valid, 0.0)
    if t.numel():
        lo, hi = (float(v) for v in torch.stack(list(torch.aminmax(t))).tolist())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN targets
            bad = lo if not lo >= 0.0 else hi
            raise ValueError(
                f"target contains value {bad:g} but binary/multilabel targets must lie in [0, 1] "
                f"(ignore_index={ignore_index})"
            )
    return t, valid


def _masked_mean(loss: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``loss`` over valid elements; 0 (with a connected graph) when nothing is valid."""
    if valid is None:
        return loss.mean() if loss.numel() else loss.sum()
    v = valid.to(loss.dtype)
    return (loss * v).sum() / v.sum().clamp_min(1.0)


def _reduce(loss: Tensor, valid: Tensor | None, reduction: str) -> Tensor:
    if reduction == "mean":
        return _masked_mean(loss, valid)
    if valid is not None:
        loss = loss * valid.to(loss.dtype)
    return loss.sum() if reduction == "sum" else loss


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")


# ----------------------------------------------------------------------------------------------
# Cross-entropy wrappers
# ----------------------------------------------------------------------------------------------
class CrossEntropyLoss(nn.Module):
    """``torch.nn.functional.cross_entropy`` on float32 logits, with validation.

    Same defaults and semantics as :class:`torch.nn.CrossEntropyLoss` (``ignore_index=-100``;
    ``None`` means "ignore nothing"). One deliberate difference: with ``reduction="mean"`` a batch
    whose pixels are all ignored gives a loss of 0 instead of NaN, so a fully-unlabelled crop does
    not poison training.
    """

    def __init__(
        self,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_choice("reduction", reduction, _REDUCTIONS)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits)
        clean, valid = _class_target(logits, target, self.ignore_index)
        weight = self.weight
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(f"weight has {weight.numel()} entries but the model has {logits.shape[1]} classes")
        x = logits.float()
        if valid is None:  # nothing to ignore: plain torch call
            return F.cross_entropy(x, clean, weight=weight, reduction=self.reduction,
                                   label_smoothing=self.label_smoothing)
        target_for_torch = clean.masked_fill(~valid, -100)
        loss = F.cross_entropy(x, target_for_torch, weight=weight, ignore_index=-100,
                               label_smoothing=self.label_smoothing,
                               reduction="sum" if self.reduction == "mean" else self.reduction)
        if self.reduction != "mean":
            return loss
        # torch's "mean" divides by the summed weight of the valid pixels; do the same without NaN.
        w = valid.float() if weight is None else weight[clean] * valid
        denom = w.sum()
        return loss / torch.where(denom > 0, denom, torch.ones_like(denom))


class BCEWithLogitsLoss(nn.Module):
    """``binary_cross_entropy_with_logits`` with an ``ignore_index`` mask.

    Targets are ``{0, 1}`` (or soft ``[0, 1]``) maps shaped like the logits (``(N, *spatial)`` is
    accepted for one-channel logits). Pixels equal to ``ignore_index`` are excluded from the sum
    and from the mean's denominator. ``pos_weight`` of shape ``(C,)`` weights the positives of
    each channel (it is reshaped to broadcast over the channel axis, unlike torch which broadcasts
    it over the last axis).
    """

    def __init__(
        self,
        pos_weight: Sequence[float] | Tensor | float | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_choice("reduction", reduction, _REDUCTIONS)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        self.register_buffer("pos_weight", pw)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits)
        t, valid = _binary_target(logits, target, self.ignore_index)
        pw = self.pos_weight
        if pw is not None:
            if pw.numel() not in (1, logits.shape[1]):
                raise ValueError(f"pos_weight has {pw.numel()} entries but the logits have {logits.shape[1]} channels")
            pw = pw.reshape(-1, *([1] * (logits.ndim - 2)))
        loss = F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=pw, reduction="none")
        return _reduce(loss, valid, self.reduction)


# ----------------------------------------------------------------------------------------------
# Region losses (Dice, Tversky)
# ----------------------------------------------------------------------------------------------
def _soft_counts(
    mode: str, logits: Tensor, target: Tensor, ignore_index: int | None, from_logits: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class soft ``(tp, pred_sum, target_sum)`` over the whole batch (sum over N and space).

    Probabilities are softmax (multiclass) or sigmoid (binary/multilabel) of float32 logits.
    """
    if from_logits:
        _check_logits(logits)
    elif not torch.is_floating_point(logits):
        raise TypeError(f"probabilities must be floating-point, got {logits.dtype}")
    x = logits.float()
    dims = (0, *range(2, x.ndim))
    if mode == "multiclass":
        clean, valid = _class_target(logits, target, ignore_index)
        prob = torch.softmax(x, dim=1) if from_logits else x
        onehot = F.one_hot(clean, x.shape[1]).movedim(-1, 1).to(prob.dtype)
        if valid is not None:
            v = valid.unsqueeze(1).to(prob.dtype)
            prob = prob * v
            onehot = onehot * v
    else:
        if mode == "binary" and x.shape[1] != 1:
            raise ValueError(f"binary mode expects one logit channel, got {x.shape[1]}; use multiclass or multilabel")
        onehot, valid = _binary_target(logits, target, ignore_index)
        prob = torch.sigmoid(x) if from_logits else x
        if valid is not None:
            v = valid.to(prob.dtype)
            prob = prob * v
            onehot = onehot * v
    tp = (prob * onehot).sum(dims)
    return tp, prob.sum(dims), onehot.sum(dims)


def _class_average(
    loss: Tensor, present: Tensor, classes: Sequence[int] | None, absent_classes: str
) -> Tensor:
    """Average a per-class loss over the selected classes (present ones only when excluding)."""
    if classes is not None:
        idx = torch.as_tensor(list(classes), dtype=torch.long, device=loss.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= loss.numel()):
            raise ValueError(f"classes={list(classes)} out of range for {loss.numel()} classes")
        loss, present = loss[idx], present[idx]
    if absent_classes == "include":
        return loss.mean()
    p = present.to(loss.dtype)
    return (loss * p).sum() / p.sum().clamp_min(1.0)


class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - (2·TP + smooth) / (ΣP + ΣT + smooth)`` per class, averaged over classes.

    ``P`` are softmax (``"multiclass"``) or sigmoid (``"binary"``, ``"multilabel"``) probabilities;
    TP, ΣP and ΣT are summed over the whole batch (N and all spatial axes) for each class, which
    is more stable than per-image Dice for small objects. ``ignore_index`` pixels count nowhere.
    In binary mode the single (foreground) channel is the only class.

    Classes absent from the target (ΣT = 0 in the batch) are, by default
    (``absent_classes="exclude"``, the convention of segmentation_models_pytorch), left out of the
    class average: their Dice is undefined (0/0 with ``smooth=0``), and with ``smooth > 0`` the
    term ``smooth / (ΣP + smooth)`` would only reward predicting nothing with a gradient whose
    size depends on the arbitrary ``smooth``. In multiclass mode probability mass put on an absent
    class is still penalised, because it is missing from the present classes' TP. In binary and
    multilabel modes false positives on an image without foreground are *not* penalised by Dice
    alone, which is why it is usually combined with BCE (see :func:`build_loss`). If no selected
    class is present the loss is 0. ``absent_classes="include"`` keeps every class (requires
    ``smooth > 0``), so a prediction of ~0 for an absent class gives a loss ~0 for it.

    ``classes`` restricts the average to some class indices (e.g. drop background);
    ``from_logits=False`` means the input is already probabilities.
    """

    def __init__(
        self,
        mode: Mode = "multiclass",
        smooth: float = 0.0,
        classes: Sequence[int] | None = None,
        ignore_index: int | None = None,
        from_logits: bool = True,
        eps: float = 1e-7,
        absent_classes: Literal["exclude", "include"] = "exclude",
    ) -> None:
        super().__init__()
        _check_choice("mode", mode, _MODES)
        _check_choice("absent_classes", absent_classes, ("exclude", "include"))
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        if absent_classes == "include" and smooth <= 0:
            raise ValueError("absent_classes='include' needs smooth > 0 (an absent class is 0/0 otherwise)")
        self.mode = mode
        self.smooth = float(smooth)
        self.classes = None if classes is None else list(classes)
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.eps = float(eps)
        self.absent_classes = absent_classes

    def per_class(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(dice_score, present)`` per class (float32 and bool tensors of length C)."""
        tp, psum, tsum = _soft_counts(self.mode, logits, target, self.ignore_index, self.from_logits)
        score = (2.0 * tp + self.smooth) / (psum + tsum + self.smooth).clamp_min(self.eps)
        return score, tsum > 0

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        score, present = self.per_class(logits, target)
        return _class_average(1.0 - score, present, self.classes, self.absent_classes)


class TverskyLoss(nn.Module):
    """Tversky loss ``(1 - TI) ** gamma`` with ``TI = (TP + s) / (TP + alpha·FP + beta·FN + s)``.

    ``alpha`` weighs false positives and ``beta`` false negatives (``beta > alpha`` favours
    recall). ``alpha = beta = 0.5`` with ``smooth = 0`` is exactly :class:`DiceLoss`; ``gamma``
    other than 1 gives the focal Tversky loss. Counts, modes, ``classes``, ``ignore_index`` and
    the absent-class convention are those of :class:`DiceLoss`.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        mode: Mode = "multiclass",
        smooth: float = 0.0,
        classes: Sequence[int] | None = None,
        ignore_index: int | None = None,
        from_logits: bool = True,
        eps: float = 1e-7,
        absent_classes: Literal["exclude", "include"] = "exclude",
    ) -> None:
        super().__init__()
        _check_choice("mode", mode, _MODES)
        _check_choice("absent_classes", absent_classes, ("exclude", "include"))
        if absent_classes == "include" and smooth <= 0:
            raise ValueError("absent_classes='include' needs smooth > 0 (an absent class is 0/0 otherwise)")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.mode = mode
        self.smooth = float(smooth)
        self.classes = None if classes is None else list(classes)
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.eps = float(eps)
        self.absent_classes = absent_classes

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        tp, psum, tsum = _soft_counts(self.mode, logits, target, self.ignore_index, self.from_logits)
        fp, fn = psum - tp, tsum - tp
        denom = tp + self.alpha * fp + self.beta * fn + self.smooth
        index = (tp + self.smooth) / denom.clamp_min(self.eps)
        loss = (1.0 - index).clamp_min(0.0) ** self.gamma
        return _class_average(loss, tsum > 0, self.classes, self.absent_classes)


# ----------------------------------------------------------------------------------------------
# Focal loss
# ----------------------------------------------------------------------------------------------
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), ``-alpha_t · (1 - p_t) ** gamma · log(p_t)`` per pixel.

    ``"multiclass"``: ``p_t`` is the softmax probability of the target class and ``alpha`` is
    ``None`` or a per-class weight sequence of length C. ``"binary"``/``"multilabel"``: ``p_t``
    comes from the sigmoid of each channel and ``alpha`` is ``None`` or a float in [0, 1] weighting
    positives (``alpha``) against negatives (``1 - alpha``). ``gamma = 0`` and ``alpha = None``
    reduce to cross-entropy / BCE. The mean is taken over non-ignored pixels (elements).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        mode: Mode = "multiclass",
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_choice("mode", mode, _MODES)
        _check_choice("reduction", reduction, _REDUCTIONS)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.mode = mode
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.alpha_scalar: float | None = None
        alpha_vec = None
        if alpha is not None:
            if mode == "multiclass":
                alpha_vec = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
            else:
                if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
                    raise ValueError(f"binary/multilabel alpha must be a float in [0, 1], got {alpha!r}")
                self.alpha_scalar = float(alpha)
        self.register_buffer("alpha", alpha_vec)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits)
        x = logits.float()
        if self.mode == "multiclass":
            clean, valid = _class_target(logits, target, self.ignore_index)
            logpt = torch.log_softmax(x, dim=1).gather(1, clean.unsqueeze(1)).squeeze(1)
            loss = -((1.0 - logpt.exp()).clamp_min(0.0) ** self.gamma) * logpt
            if self.alpha is not None:
                if self.alpha.numel() != x.shape[1]:
                    raise ValueError(f"alpha has {self.alpha.numel()} entries but the model has {x.shape[1]} classes")
                loss = loss * self.alpha[clean]
        else:
            if self.mode == "binary" and x.shape[1] != 1:
                raise ValueError(f"binary mode expects one logit channel, got {x.shape[1]}")
            t, valid = _binary_target(logits, target, self.ignore_index)
            bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            loss = ((1.0 - torch.exp(-bce)).clamp_min(0.0) ** self.gamma) * bce
            if self.alpha_scalar is not None:
                loss = loss * (self.alpha_scalar * t + (1.0 - self.alpha_scalar) * (1.0 - t))
        return _reduce(loss, valid, self.reduction)


# ----------------------------------------------------------------------------------------------
# Combinations
# ----------------------------------------------------------------------------------------------
class CombinedLoss(nn.Module):
    """Weighted sum ``Σ w_i · loss_i(logits, target)``, e.g. ``0.5·CE + 0.5·Dice``.

    ``weights`` defaults to equal weights summing to 1.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(losses) == 0:
            raise ValueError("CombinedLoss needs at least one loss")
        if weights is None:
            weights = [1.0 / len(losses)] * len(losses)
        if len(weights) != len(losses):
            raise ValueError(f"got {len(losses)} losses but {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = None
        for w, fn in zip(self.weights, self.losses, strict=True):
            term = w * fn(logits, target)
            total = term if total is None else total + term
        return total


def resize_target_nearest(target: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the trailing ``len(size)`` axes of a label/mask tensor.

    Pure index sampling (pixel-centre aligned, like ``F.interpolate(mode="nearest-exact")``):
    output values are a subset of the input values and the dtype is kept, so class indices stay
    integers and ``ignore_index`` survives.
    """
    size = tuple(int(s) for s in size)
    k = len(size)
    if target.ndim < k:
        raise ValueError(f"cannot resize a {target.ndim}-D target to a {k}-D size")
    out = target
    for d, n_out in enumerate(size):
        axis = target.ndim - k + d
        n_in = target.shape[axis]
        if n_in == n_out:
            continue
        idx = ((2 * torch.arange(n_out, device=target.device) + 1) * n_in) // (2 * n_out)
        out = out.index_select(axis, idx)
    return out


class DeepSupervisionLoss(nn.Module):
    """Weighted loss over ``[main, aux_1, aux_2, ...]`` outputs of a deeply supervised UNet.

    ``main`` is at full resolution and ``aux_i`` at decreasing resolutions. Each output is scored
    with ``loss`` against the target resized with :func:`resize_target_nearest` to its spatial
    size (labels stay exact integers). Default weights are ``1 / 2**i`` (``i = 0`` for main),
    normalised to sum to 1. A single tensor is simply ``loss(outputs, target)``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    @staticmethod
    def default_weights(n: int) -> list[float]:
        """``1/2**i`` for ``i < n``, normalised to sum to 1."""
        raw = [0.5**i for i in range(n)]
        s = sum(raw)
        return [w / s for w in raw]

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            return self.loss(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("DeepSupervisionLoss got an empty list of outputs")
        weights = self.weights if self.weights is not None else self.default_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"got {len(outputs)} outputs but {len(weights)} weights")
        total = None
        for w, out in zip(weights, outputs, strict=True):
            size = out.shape[2:]
            t = target if tuple(target.shape[-len(size):]) == tuple(size) else resize_target_nearest(target, size)
            term = w * self.loss(out, t)
            total = term if total is None else total + term
        return total


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------
LOSS_NAMES = ("ce", "dice", "ce+dice", "bce", "bce+dice", "focal", "tversky")


def _binary_pos_weight(class_weights: Sequence[float] | None) -> float | None:
    """Turn ``[w]`` (a pos_weight) or ``[w_background, w_foreground]`` into a BCE pos_weight."""
    if class_weights is None:
        return None
    w = [float(v) for v in class_weights]
    if len(w) == 1:
        return w[0]
    if len(w) == 2 and w[0] > 0:
        return w[1] / w[0]
    raise ValueError(f"binary class_weights must be [pos_weight] or [w_bg, w_fg], got {class_weights!r}")


def build_loss(
    name: str,
    num_classes: int,
    ignore_index: int | None = 255,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """Build a loss by name for a model with ``num_classes`` output channels.

    ``num_classes >= 2`` (softmax over C channels, class-index targets): ``"ce"``, ``"dice"``,
    ``"ce+dice"`` (0.5/0.5), ``"focal"``, ``"tversky"`` are multiclass; ``"bce"`` and
    ``"bce+dice"`` are multilabel (``{0,1}`` targets shaped like the logits).
    ``num_classes == 1`` (one logit, binary ``{0,1}`` targets): ``"ce"`` means BCE and
    ``"ce+dice"`` means 0.5·BCE + 0.5·binary Dice; the others are their binary versions.
    ``class_weights`` feeds the CE weight / focal alpha (multiclass) or the BCE pos_weight
    (binary: ``[pos_weight]`` or ``[w_bg, w_fg]``); Dice and Tversky do not use it.
    """
    key = name.strip().lower().replace(" ", "")
    if key not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes == 1:
        pos_weight = _binary_pos_weight(class_weights)
        if key in ("ce", "bce"):
            return BCEWithLogitsLoss(pos_weight=pos_weight, ignore_index=ignore_index)
        if key == "dice":
            return DiceLoss("binary", ignore_index=ignore_index)
        if key in ("ce+dice", "bce+dice"):
            return CombinedLoss(
                [BCEWithLogitsLoss(pos_weight=pos_weight, ignore_index=ignore_index),
                 DiceLoss("binary", ignore_index=ignore_index)],
                [0.5, 0.5],
            )
        if key == "focal":
            alpha = None if pos_weight is None else pos_weight / (1.0 + pos_weight)
            return FocalLoss(alpha=alpha, mode="binary", ignore_index=ignore_index)
        return TverskyLoss(mode="binary", ignore_index=ignore_index)

    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
    ce_ignore = -100 if ignore_index is None else ignore_index
    if key == "ce":
        return CrossEntropyLoss(weight=class_weights, ignore_index=ce_ignore)
    if key == "dice":
        return DiceLoss("multiclass", ignore_index=ignore_index)
    if key == "ce+dice":
        return CombinedLoss(
            [CrossEntropyLoss(weight=class_weights, ignore_index=ce_ignore),
             DiceLoss("multiclass", ignore_index=ignore_index)],
            [0.5, 0.5],
        )
    if key == "bce":
        return BCEWithLogitsLoss(pos_weight=class_weights, ignore_index=ignore_index)
    if key == "bce+dice":
        return CombinedLoss(
            [BCEWithLogitsLoss(pos_weight=class_weights, ignore_index=ignore_index),
             DiceLoss("multilabel", ignore_index=ignore_index)],
            [0.5, 0.5],
        )
    if key == "focal":
        return FocalLoss(alpha=class_weights, mode="multiclass", ignore_index=ignore_index)
    return TverskyLoss(mode="multiclass", ignore_index=ignore_index)
