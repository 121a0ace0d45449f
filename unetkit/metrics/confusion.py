"""Dataset-level segmentation metrics from one accumulated confusion matrix."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.outputs import logits_to_labels
from .base import CumulativeMetric

__all__ = ["SegmentationMetrics", "confusion_counts", "metrics_from_confusion", "to_label_map"]


def _as_target(pred: Tensor, target: Tensor) -> Tensor:
    """Drop a singleton channel axis of ``target`` when ``pred`` carries a channel axis."""
    if target.ndim == pred.ndim and torch.is_floating_point(pred) and target.ndim >= 2 and target.shape[1] == 1:
        return target[:, 0]
    return target


def to_label_map(pred: Tensor, num_classes: int, target_ndim: int | None = None) -> Tensor:
    """Turn logits ``(N, C, *spatial)`` into a label map ``(N, *spatial)``; pass label maps through.

    Logits are read by :func:`unetkit.models.outputs.logits_to_labels`, the project's one reading
    (first maximum over channels; one channel is a binary model labelled ``logit > 0``), after
    checking that they fit ``num_classes`` (one channel needs ``num_classes == 2``). Integer/bool
    tensors are label maps already. ``target_ndim`` (the target's number of axes) disambiguates
    floating inputs: a floating tensor with as many axes as the target is rejected, since it is
    neither logits nor an integer label map.
    """
    if not torch.is_floating_point(pred):
        if pred.is_complex():
            raise TypeError(f"pred must be logits or an integer label map, got {pred.dtype}")
        return pred
    if pred.ndim < 2 or (target_ndim is not None and pred.ndim != target_ndim + 1):
        raise TypeError(
            f"floating pred of shape {tuple(pred.shape)} is neither logits (N, C, *spatial) nor an integer "
            "label map; pass logits or convert labels to an integer dtype"
        )
    channels = pred.shape[1]
    if channels == 1 and num_classes != 2:
        raise ValueError(
            f"pred has one logit channel (binary, thresholded at logit > 0) so num_classes must be 2, "
            f"got {num_classes}"
        )
    if channels not in (1, num_classes):
        raise ValueError(f"pred has {channels} channels but num_classes is {num_classes}")
    return logits_to_labels(pred)


def _check_range(values: Tensor, num_classes: int, what: str, ignore_index: int | None) -> None:
    """Raise ``ValueError`` naming a value outside ``[0, num_classes)`` (``values`` already masked)."""
    if values.numel() == 0:
        return
    if values.dtype == torch.bool:
        lo_v, hi_v = 0, 1 if bool(values.any()) else 0
    else:
        lo, hi = torch.aminmax(values)
        lo_v, hi_v = (int(v) for v in torch.stack([lo, hi]).tolist())
    if lo_v < 0 or hi_v >= num_classes:
        _raise_bad_value(hi_v if hi_v >= num_classes else lo_v, num_classes, what, ignore_index)


def confusion_counts(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """Return the ``(C, C)`` int64 confusion matrix (rows = target, cols = prediction) of one batch.

    ``pred`` is logits or a label map (see :func:`to_label_map`), ``target`` an integer label map.
    Computed with one ``torch.bincount`` on ``pred``'s device. Fast path: with non-negative
    targets, ``bincount(target * C + pred)`` counts *every* target value at once (one row of C
    bins per value), so ``ignore_index`` (e.g. 255) needs no mask: its row is dropped, and any
    other row at or beyond C names an invalid target value.
    """
    if torch.is_floating_point(target):
        raise TypeError(f"target must be an integer label map, got {target.dtype}")
    target = _as_target(pred, target)
    user_labels = not torch.is_floating_point(pred)
    labels = to_label_map(pred, num_classes, target.ndim)
    if labels.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    c = num_classes
    t = target.to(labels.device).reshape(-1)
    p = labels.reshape(-1)
    if t.numel() == 0:
        return torch.zeros(c, c, dtype=torch.int64, device=labels.device)
    lo, hi = (int(v) for v in torch.stack(list(torch.aminmax(t.long() if t.dtype == torch.bool else t))).tolist())
    pred_ok = True
    if user_labels:
        plo, phi = (int(v) for v in torch.stack(list(torch.aminmax(p.long() if p.dtype == torch.bool else p))).tolist())
        pred_ok = plo >= 0 and phi < c
    rows = max(hi + 1, c)  # one row of C bins per target value; at least C rows
    if lo >= 0 and pred_ok and rows * c < 2**24:
        idx = t.to(torch.int32).mul_(c).add_(p.to(torch.int32))  # int32: half the memory traffic
        counts = torch.bincount(idx, minlength=rows * c).reshape(rows, c)
        if rows > c:
            extra = counts[c:].sum(1)
            if ignore_index is not None and c <= ignore_index < rows:
                extra[ignore_index - c] = 0
            bad = torch.nonzero(extra)
            if bad.numel():
                _raise_bad_value(int(bad[0, 0]) + c, c, "target", ignore_index)
            counts = counts[:c]
        if ignore_index is not None and 0 <= ignore_index < c:
            counts = counts.clone()
            counts[ignore_index] = 0  # an ignored *valid* class index: its pixels are skipped
        return counts
    # General path: negative values, out-of-range predictions at ignored pixels, huge labels.
    valid = None if ignore_index is None else t != ignore_index
    tv = t if valid is None else t.masked_fill(~valid, 0)
    pv = p if valid is None else p.masked_fill(~valid, 0)
    _check_range(tv, c, "target", ignore_index)
    if user_labels:
        _check_range(pv, c, "pred", ignore_index)
    idx = tv.long() * c + pv.long()
    if valid is None:
        return torch.bincount(idx, minlength=c * c).reshape(c, c)
    idx.masked_fill_(~valid, c * c)
    return torch.bincount(idx, minlength=c * c + 1)[: c * c].reshape(c, c)


def _raise_bad_value(bad: int, num_classes: int, what: str, ignore_index: int | None) -> None:
    raise ValueError(
        f"{what} contains class {bad} but num_classes is {num_classes} "
        f"(valid values are 0..{num_classes - 1}, ignore_index={ignore_index})"
    )


def _safe_ratio(num: Tensor, den: Tensor, absent: Tensor) -> Tensor:
    """``num / den`` in float64; 0 where ``den == 0`` and NaN where the class is absent."""
    out = num / torch.where(den > 0, den, torch.ones_like(den))
    out = torch.where(den > 0, out, torch.zeros_like(out))
    return out.masked_fill(absent, math.nan)


def metrics_from_confusion(cm: Tensor) -> dict[str, float | Tensor]:
    """Pixel accuracy, per-class IoU/Dice/precision/recall and their NaN-ignoring means.

    A class absent from both target and prediction (zero row and column) gets NaN everywhere and
    is left out of the means; a class present in only one of them scores 0 (e.g. its precision is
    0 when it is never predicted). Counts are int64 and ratios float64, so results are exact for
    any realistic number of pixels.
    """
    cm64 = cm.detach().to("cpu", torch.int64)
    tp_i = cm64.diagonal()
    row = cm64.sum(1)  # target count per class
    col = cm64.sum(0)  # predicted count per class
    absent = (row == 0) & (col == 0)
    tp = tp_i.double()
    fp = (col - tp_i).double()
    fn = (row - tp_i).double()
    total = int(cm64.sum())
    iou = _safe_ratio(tp, tp + fp + fn, absent)
    dice = _safe_ratio(2 * tp, 2 * tp + fp + fn, absent)
    precision = _safe_ratio(tp, tp + fp, absent)
    recall = _safe_ratio(tp, tp + fn, absent)

    def nanmean(x: Tensor) -> float:
        return float(torch.nanmean(x)) if bool((~absent).any()) else math.nan

    return {
        "pixel_accuracy": int(tp_i.sum()) / total if total else math.nan,
        "iou": iou,
        "miou": nanmean(iou),
        "dice": dice,
        "mdice": nanmean(dice),
        "precision": precision,
        "mprecision": nanmean(precision),
        "recall": recall,
        "mrecall": nanmean(recall),
        "confusion_matrix": cm64.clone(),
    }


class SegmentationMetrics(CumulativeMetric):
    """Cumulative dataset-level metrics: one int64 confusion matrix over all ``update`` calls.

    ``update(pred, target)`` takes logits ``(N, C, *spatial)`` (argmax; one channel = binary,
    thresholded at logit > 0, so a one-logit binary model uses ``num_classes=2``) or an integer
    label map, and an integer target ``(N, *spatial)``. Pixels equal to ``ignore_index`` are
    skipped; other target values outside ``[0, num_classes)`` raise ``ValueError``. The matrix
    lives on ``device`` (default: the device of the first ``pred``). ``compute()`` returns the
    metrics of :func:`metrics_from_confusion` over everything seen since the last ``reset()``, so
    the mIoU is the dataset-level one, not a mean of per-batch values.

    For DDP, every rank calls ``sync()`` (a collective, see :class:`CumulativeMetric`) before
    ``compute()``: it all-reduces the local counts and ``compute()`` then reports the global
    totals. The local counts are kept, so calling ``sync()`` twice, or ``update()`` + ``sync()``
    again, never double-counts.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 2:
            raise ValueError(
                "num_classes must be >= 2 (a binary model with one logit channel uses num_classes=2), "
                f"got {num_classes}"
            )
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.device = None if device is None else torch.device(device)
        self.add_state("confusion", torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64,
                                                device=self.device))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch to the confusion matrix."""
        counts = confusion_counts(pred, target, self.num_classes, self.ignore_index)
        if self.device is None and self.update_count == 0:
            self.to(counts.device)
        self.accumulate(confusion=counts)

    @property
    def confusion_matrix(self) -> Tensor:
        """Counts ``compute()`` uses: the synced global ones if ``sync()`` ran since the last update."""
        return self.state("confusion")

    def compute(self) -> dict[str, float | Tensor]:
        """Metrics over all pixels seen (see :func:`metrics_from_confusion`)."""
        return metrics_from_confusion(self.confusion_matrix)
