"""``build_loss``: the losses the trainer and the CLI choose by name."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .combine import CombinedLoss
from .overlap import DiceLoss, TverskyLoss
from .pixel import BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss

__all__ = ["LOSS_NAMES", "build_loss"]

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
