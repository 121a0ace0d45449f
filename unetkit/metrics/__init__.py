"""Dataset-level segmentation metrics.

* :class:`SegmentationMetrics` accumulates one int64 confusion matrix over a whole evaluation
  and reports pixel accuracy and per-class IoU/Dice/precision/recall (NaN for classes absent
  from both prediction and target, left out of the means).
* :func:`boundary_f1` / :class:`BoundaryF1`: the Boundary F1 score of Csurka et al. (2013).
* :class:`MeanMetric`: a weighted running mean (e.g. the validation loss).

All three are :class:`CumulativeMetric` subclasses: ``update``, ``compute``, ``reset`` and a DDP
``sync()`` that sums their state over ranks through :func:`all_reduce_sum`, the project's one
all-reduce.

* :class:`PerCaseMetrics` / :func:`case_metrics`: per-case Dice, IoU, HD95 and normalised surface
  Dice in mm (MONAI's definitions, ``unetkit.metrics.surface``); a plain list of rows, not a
  :class:`CumulativeMetric`.
"""

from .base import CumulativeMetric, MeanMetric, all_reduce_sum, distributed_ready
from .boundary import BoundaryF1, boundary_f1, boundary_mask, default_tolerance
from .confusion import SegmentationMetrics, confusion_counts, metrics_from_confusion, to_label_map
from .surface import (
    CASE_METRIC_NAMES,
    PerCaseMetrics,
    case_metrics,
    hausdorff95,
    surface_dice,
    surface_distances,
)

__all__ = [
    "BoundaryF1",
    "CASE_METRIC_NAMES",
    "CumulativeMetric",
    "MeanMetric",
    "PerCaseMetrics",
    "SegmentationMetrics",
    "all_reduce_sum",
    "boundary_f1",
    "boundary_mask",
    "case_metrics",
    "confusion_counts",
    "default_tolerance",
    "distributed_ready",
    "hausdorff95",
    "metrics_from_confusion",
    "surface_dice",
    "surface_distances",
    "to_label_map",
]
