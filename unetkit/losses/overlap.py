"""Region-overlap losses: Dice and its generalisation Tversky, on soft per-class counts.

Both score each class from the same soft counts (TP, ΣP, ΣT summed over the batch) and average
the per-class losses the same way; :class:`TverskyLoss` derives from :class:`DiceLoss` and only
replaces the per-class score and its loss, so the options and their checks live in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ._common import MODES, Mode, binary_target, check_choice, check_logits, class_target

__all__ = ["DiceLoss", "TverskyLoss"]


def soft_counts(
    mode: str, logits: Tensor, target: Tensor, ignore_index: int | None, from_logits: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class soft ``(tp, pred_sum, target_sum)`` over the whole batch (sum over N and space).

    Probabilities are softmax (multiclass) or sigmoid (binary/multilabel) of float32 logits;
    ``ignore_index`` pixels count in none of the three.
    """
    if from_logits:
        check_logits(logits)
    elif not torch.is_floating_point(logits):
        raise TypeError(f"probabilities must be floating-point, got {logits.dtype}")
    x = logits.float()
    dims = (0, *range(2, x.ndim))
    if mode == "multiclass":
        # No one-hot target (C times the mask's size): TP gathers each pixel's probability of its own class
        # and adds it to that class; ΣT counts the valid pixels of each class the same way.
        clean, valid = class_target(logits, target, ignore_index)
        prob = torch.softmax(x, dim=1) if from_logits else x
        if valid is not None:
            prob = prob * valid.unsqueeze(1).to(prob.dtype)
        labels = clean.reshape(-1)
        own = prob.gather(1, clean.unsqueeze(1)).reshape(-1)  # 0 at ignored pixels: prob is zeroed there
        counts = torch.ones_like(own) if valid is None else valid.reshape(-1).to(own.dtype)
        zeros = own.new_zeros(x.shape[1])
        return zeros.index_add(0, labels, own), prob.sum(dims), zeros.index_add(0, labels, counts)
    if mode == "binary" and x.shape[1] != 1:
        raise ValueError(
            f"binary mode expects one logit channel, got {x.shape[1]}; use multiclass or multilabel"
        )
    onehot, v = binary_target(logits, target, ignore_index)
    prob = torch.sigmoid(x) if from_logits else x
    if v is not None:
        v = v.to(prob.dtype)
        prob = prob * v
        onehot = onehot * v
    tp = (prob * onehot).sum(dims)
    return tp, prob.sum(dims), onehot.sum(dims)


def class_average(
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
        check_choice("mode", mode, MODES)
        check_choice("absent_classes", absent_classes, ("exclude", "include"))
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

    def _score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        """Per-class score from soft counts: here Dice ``(2·TP + s) / (ΣP + ΣT + s)``."""
        return (2.0 * tp + self.smooth) / (pred_sum + target_sum + self.smooth).clamp_min(self.eps)

    def _score_loss(self, score: Tensor) -> Tensor:
        """Per-class loss of a :meth:`_score` value: here ``1 - score``."""
        return 1.0 - score

    def per_class(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(score, present)`` per class (float32 and bool tensors of length C).

        ``score`` is the Dice score for :class:`DiceLoss` and the Tversky index for :class:`TverskyLoss`;
        ``present`` marks the classes occurring in the target.
        """
        tp, psum, tsum = soft_counts(self.mode, logits, target, self.ignore_index, self.from_logits)
        return self._score(tp, psum, tsum), tsum > 0

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        score, present = self.per_class(logits, target)
        return class_average(self._score_loss(score), present, self.classes, self.absent_classes)


class TverskyLoss(DiceLoss):
    """Tversky loss ``(1 - TI) ** gamma`` with ``TI = (TP + s) / (TP + alpha·FP + beta·FN + s)``.

    ``alpha`` weighs false positives and ``beta`` false negatives (``beta > alpha`` favours
    recall). ``alpha = beta = 0.5`` with ``smooth = 0`` is exactly :class:`DiceLoss`; ``gamma``
    other than 1 gives the focal Tversky loss. Counts, modes, ``classes``, ``ignore_index``, the
    absent-class convention and the option checks are those of :class:`DiceLoss`.
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
        super().__init__(mode, smooth, classes, ignore_index, from_logits, eps, absent_classes)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def _score(self, tp: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tensor:
        """Per-class Tversky index ``(TP + s) / (TP + alpha·FP + beta·FN + s)``."""
        fp, fn = pred_sum - tp, target_sum - tp
        denom = tp + self.alpha * fp + self.beta * fn + self.smooth
        return (tp + self.smooth) / denom.clamp_min(self.eps)

    def _score_loss(self, score: Tensor) -> Tensor:
        """Focal Tversky loss ``(1 - TI) ** gamma`` (plain Tversky for ``gamma = 1``)."""
        return (1.0 - score).clamp_min(0.0) ** self.gamma
