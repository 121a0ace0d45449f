"""Boundary F1 (BF) score of Csurka et al., "What is a good evaluation measure for semantic
segmentation?" (BMVC 2013).

For each image and class, the boundary pixels of the predicted and target masks are matched
within a distance tolerance: precision is the fraction of predicted boundary pixels lying within
the tolerance of a target boundary pixel, recall the fraction of target boundary pixels within the
tolerance of a predicted one, and BF = 2PR / (P + R). Per-class scores are averaged over the
images where the class occurs (in the prediction or the target).

Definitions used here:

* Boundary of a class mask: pixels of the mask having at least one 4-neighbour *inside the image*
  with another label. The image border is not a boundary (a mask touching the border does not
  get a boundary along it), and an ignored pixel counts as "another label", so a target object
  next to an ``ignore_index`` band has a boundary there.
* Distances are exact Euclidean distances (``scipy.ndimage.distance_transform_edt``) and a pixel
  matches if its distance is ``<= tolerance``. The default tolerance is 0.75 % of the image
  diagonal, ``0.0075 * sqrt(H**2 + W**2)`` (e.g. 1.36 px at 128x128, 5.43 px at 512x512); a
  number is a tolerance in pixels.
* ``ignore_index``: the class is "present in the prediction" only through non-ignored pixels, and
  predicted boundary pixels that fall on ignored target pixels are not scored (the truth there is
  unknown), though they still count as matches for target boundary pixels.
* Edge cases per image and class: absent from both → skipped; both boundaries empty (e.g. the
  class fills the whole image in both) → 1 if the class is present in both, else 0; exactly one
  boundary empty → 0; P = R = 0 → 0.

Computation runs on the CPU with NumPy/SciPy (inputs on another device are copied).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from .base import CumulativeMetric
from .confusion import _check_range, to_label_map

__all__ = ["BoundaryF1", "boundary_f1", "boundary_mask", "default_tolerance"]


def default_tolerance(height: int, width: int) -> float:
    """0.75 % of the image diagonal, the BF tolerance of Csurka et al. (2013)."""
    return 0.0075 * math.sqrt(height**2 + width**2)


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Bool map of pixels with an in-image 4-neighbour carrying a different label."""
    edge = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    dh = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge


def boundary_mask(mask: Tensor | np.ndarray) -> np.ndarray:
    """Boundary of a binary 2-D mask: mask pixels with a 4-neighbour outside it (border excluded)."""
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(bool)
    return _label_edges(m) & m


def _match_fraction(src: np.ndarray, dst: np.ndarray, tol: float) -> float:
    """Fraction of ``src`` pixels within ``tol`` (Euclidean) of a ``dst`` pixel; both non-empty."""
    rows = np.flatnonzero(src.any(1) | dst.any(1))
    cols = np.flatnonzero(src.any(0) | dst.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Every dst pixel lies in the crop, so distances inside it are the exact nearest distances.
    dist = distance_transform_edt(~dst[r0:r1, c0:c1])
    return float(np.count_nonzero(dist[src[r0:r1, c0:c1]] <= tol)) / float(np.count_nonzero(src))


def _image_scores(
    pred: np.ndarray, target: np.ndarray, num_classes: int, tol: float, ignore_index: int | None
) -> dict[int, float]:
    """BF score of each class occurring in one image (``{class: score}``)."""
    valid = None if ignore_index is None else target != ignore_index
    pred_valid = pred if valid is None else pred[valid]
    tgt_valid = target if valid is None else target[valid]
    in_pred = np.bincount(pred_valid.ravel(), minlength=num_classes)[:num_classes] > 0
    in_tgt = np.bincount(tgt_valid.ravel(), minlength=num_classes)[:num_classes] > 0
    edge_p = _label_edges(pred)
    edge_t = _label_edges(target)
    scores: dict[int, float] = {}
    for c in np.flatnonzero(in_pred | in_tgt):
        bt = edge_t & (target == c)
        bp_all = edge_p & (pred == c)
        bp = bp_all if valid is None else bp_all & valid
        has_t, has_p = bool(bt.any()), bool(bp.any())
        if not has_t and not has_p:
            scores[int(c)] = 1.0 if (in_pred[c] and in_tgt[c]) else 0.0
            continue
        if not (has_t and has_p):
            scores[int(c)] = 0.0
            continue
        precision = _match_fraction(bp, bt, tol)
        recall = _match_fraction(bt, bp_all, tol)
        s = precision + recall
        scores[int(c)] = 2.0 * precision * recall / s if s > 0 else 0.0
    return scores


def _prepare(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(N, H, W)`` int64 NumPy label maps."""
    if torch.is_floating_point(target):
        raise TypeError(f"target must be an integer label map, got {target.dtype}")
    if target.ndim == 2:
        target = target.unsqueeze(0)
        if not torch.is_floating_point(pred):
            pred = pred.unsqueeze(0)
    if target.ndim == 4 and target.shape[1] == 1 and torch.is_floating_point(pred):
        target = target[:, 0]
    if target.ndim != 3:
        raise ValueError(f"target must be a label map (H, W) or (N, H, W), got shape {tuple(target.shape)}")
    user_labels = not torch.is_floating_point(pred)
    labels = to_label_map(pred, num_classes, target.ndim)
    if labels.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    t = target.detach().cpu().long()
    p = labels.detach().cpu().long()
    valid = None if ignore_index is None else t != ignore_index
    _check_range(t if valid is None else t.masked_fill(~valid, 0), num_classes, "target", ignore_index)
    if user_labels:
        _check_range(p if valid is None else p.masked_fill(~valid, 0), num_classes, "pred", ignore_index)
    return p.numpy(), t.numpy()


def _bf_sums(
    pred: Tensor, target: Tensor, num_classes: int, tolerance: float | None, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Per-class sums of per-image BF scores (float64) and image counts (int64)."""
    p, t = _prepare(pred, target, num_classes, ignore_index)
    sums = np.zeros(num_classes, dtype=np.float64)
    counts = np.zeros(num_classes, dtype=np.int64)
    h, w = t.shape[1:]
    tol = default_tolerance(h, w) if tolerance is None else float(tolerance)
    if tol < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    for i in range(t.shape[0]):
        for c, score in _image_scores(p[i], t[i], num_classes, tol, ignore_index).items():
            sums[c] += score
            counts[c] += 1
    return torch.from_numpy(sums), torch.from_numpy(counts)


def boundary_f1(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    tolerance: float | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-class Boundary F1 score (float64, shape ``(num_classes,)``), averaged over images.

    ``pred`` is logits ``(N, C, H, W)`` (argmax; one channel is binary with ``num_classes=2``) or a
    label map ``(N, H, W)``/``(H, W)``; ``target`` an integer label map of the same shape.
    ``tolerance`` is in pixels (default: 0.75 % of the image diagonal). A class absent from
    prediction and target in every image is NaN; use ``torch.nanmean`` for the mean BF.
    """
    sums, counts = _bf_sums(pred, target, num_classes, tolerance, ignore_index)
    return _finish(sums, counts)


def _finish(sums: Tensor, counts: Tensor) -> Tensor:
    out = sums / counts.clamp_min(1).double()
    return out.masked_fill(counts == 0, math.nan)


class BoundaryF1(CumulativeMetric):
    """Cumulative :func:`boundary_f1`: per-class sums of per-image scores and image counts.

    ``compute()`` returns the per-class mean over all images seen since ``reset()`` (NaN for
    classes never present). ``sync()`` all-reduces sums and counts over DDP ranks (every rank must
    call it); like :class:`SegmentationMetrics.sync`, it is idempotent (both come from
    :class:`CumulativeMetric`).
    """

    def __init__(
        self, num_classes: int, tolerance: float | None = None, ignore_index: int | None = None
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        super().__init__()
        self.num_classes = int(num_classes)
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.add_state("sums", torch.zeros(self.num_classes, dtype=torch.float64))
        self.add_state("counts", torch.zeros(self.num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Score a batch and add it to the running sums."""
        sums, counts = _bf_sums(pred, target, self.num_classes, self.tolerance, self.ignore_index)
        self.accumulate(sums=sums, counts=counts)

    def compute(self) -> Tensor:
        """Per-class BF over all images (the synced totals if ``sync()`` ran since the last update)."""
        return _finish(self.state("sums"), self.state("counts"))
