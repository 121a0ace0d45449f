"""Per-pixel losses: cross-entropy, binary cross-entropy and focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    MODES,
    REDUCTIONS,
    Mode,
    binary_target,
    check_choice,
    check_logits,
    class_target,
    reduce_loss,
)

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "FocalLoss"]


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
        check_choice("reduction", reduction, REDUCTIONS)
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("weight", w)
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        check_logits(logits)
        clean, valid = class_target(logits, target, self.ignore_index)
        weight = self.weight
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ValueError(
                f"weight has {weight.numel()} entries but the model has {logits.shape[1]} classes"
            )
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
        check_choice("reduction", reduction, REDUCTIONS)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
        self.register_buffer("pos_weight", pw)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        check_logits(logits)
        t, valid = binary_target(logits, target, self.ignore_index)
        pw = self.pos_weight
        if pw is not None:
            if pw.numel() not in (1, logits.shape[1]):
                raise ValueError(
                    f"pos_weight has {pw.numel()} entries but the logits have {logits.shape[1]} channels"
                )
            pw = pw.reshape(-1, *([1] * (logits.ndim - 2)))
        loss = F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=pw, reduction="none")
        return reduce_loss(loss, valid, self.reduction)


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
        check_choice("mode", mode, MODES)
        check_choice("reduction", reduction, REDUCTIONS)
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
        check_logits(logits)
        x = logits.float()
        if self.mode == "multiclass":
            clean, valid = class_target(logits, target, self.ignore_index)
            logpt = torch.log_softmax(x, dim=1).gather(1, clean.unsqueeze(1)).squeeze(1)
            loss = -((1.0 - logpt.exp()).clamp_min(0.0) ** self.gamma) * logpt
            if self.alpha is not None:
                if self.alpha.numel() != x.shape[1]:
                    raise ValueError(
                        f"alpha has {self.alpha.numel()} entries but the model has {x.shape[1]} classes"
                    )
                loss = loss * self.alpha[clean]
        else:
            if self.mode == "binary" and x.shape[1] != 1:
                raise ValueError(f"binary mode expects one logit channel, got {x.shape[1]}")
            t, valid = binary_target(logits, target, self.ignore_index)
            bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            loss = ((1.0 - torch.exp(-bce)).clamp_min(0.0) ** self.gamma) * bce
            if self.alpha_scalar is not None:
                loss = loss * (self.alpha_scalar * t + (1.0 - self.alpha_scalar) * (1.0 - t))
        return reduce_loss(loss, valid, self.reduction)
