"""Per-case volume metrics: Dice, IoU, HD95 and normalised surface Dice, one row per case.

Dataset-level scores (:class:`SegmentationMetrics`) pool every voxel; medical segmentation is
usually reported per case instead (one volume = one patient), with distances in millimetres taken
from the voxel spacing. These functions follow MONAI's definitions so numbers agree with
``monai.metrics`` (checked in ``tests/test_surface_metrics.py``):

* Surface of a binary mask: the mask minus its binary erosion (``scipy.ndimage.binary_erosion``,
  cross-shaped structuring element, outside the array counts as background), as MONAI's
  ``get_mask_edges`` without ``spacing``. A mask touching the array border has surface voxels there.
* Surface distances: from each surface voxel of one mask to the nearest surface voxel of the other,
  exact Euclidean in mm (``distance_transform_edt(..., sampling=spacing)``), computed on the joint
  bounding box plus a 1-voxel margin.
* :func:`hausdorff95`: ``max(p95(d(pred→truth)), p95(d(truth→pred)))`` with NumPy's default
  (linear) percentile, as ``compute_hausdorff_distance(..., percentile=95)``.
* :func:`surface_dice`: normalised surface Dice of Nikolov et al. (2021) counting surface voxels
  (``compute_surface_dice`` with ``use_subvoxels=False``): the fraction of both surfaces lying within
  ``tolerance_mm`` (``<=``) of the other.

Empty masks (per class):

============================  ========  ============  ===========
pred / truth                  Dice/IoU  HD95          NSD
============================  ========  ============  ===========
both empty                    NaN       NaN           NaN
exactly one empty             0         ``inf``       0
============================  ========  ============  ===========

NSD equals MONAI's in every case, HD95 too except when exactly one mask is empty: MONAI (1.6)
then returns NaN for any ``percentile`` (its directed distances are then all ``inf`` and ``torch.quantile``
interpolates ``inf + 0 * (inf - inf) = NaN``; only ``percentile=None`` gives ``inf``). We return
``inf`` on purpose: a missed (or hallucinated) structure must not drop out of nan-aware means as if
the class were absent. MONAI's Dice/IoU differ on an empty truth:
``compute_dice``/``compute_iou`` give NaN there by default (``ignore_empty=True``), even for a
false-positive prediction, and 1 for both empty with ``ignore_empty=False``; ours are NaN only when the
class is absent from both, so a false positive scores 0 and means over cases skip only true absences
(as nnU-Net reports them).

Computation runs on the CPU with NumPy/SciPy (tensors are copied to NumPy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt

from .confusion import confusion_counts

__all__ = [
    "CASE_METRIC_NAMES", "PerCaseMetrics", "case_metrics", "hausdorff95", "surface_dice", "surface_distances",
]

CASE_METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "nsd")
"""The per-class metrics of :func:`case_metrics`, in column order."""

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tensor(labels: np.ndarray) -> torch.Tensor:
    """A label map as a tensor sharing memory (bool as uint8), for :func:`confusion_counts`."""
    return torch.from_numpy(np.ascontiguousarray(labels.view(np.uint8) if labels.dtype == bool else labels))


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """``spacing`` as one positive finite float per axis (a number or ``None`` (=1) is isotropic)."""
    if spacing is None:
        spacing = 1.0
    sp = (float(spacing),) * ndim if np.ndim(spacing) == 0 else tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} values but the arrays have {ndim} axes")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {sp}")
    return sp


def _masks(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _numpy(pred).astype(bool, copy=False), _numpy(truth).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} does not match truth shape {t.shape}")
    if p.ndim < 1:
        raise ValueError("pred and truth must have at least one axis")
    return p, t


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its binary erosion (outside the array is background)."""
    return mask & ~binary_erosion(mask)


def surface_distances(
    pred: ArrayLike, truth: ArrayLike, spacing: float | Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm, float64) from each surface voxel of ``pred`` to the nearest of ``truth``, and back.

    ``pred`` and ``truth`` are binary masks of one shape (2-D or 3-D; any number of axes works),
    ``spacing`` the voxel size per axis (a number: isotropic). Returns ``(d_pred_to_truth,
    d_truth_to_pred)``, one value per surface voxel of ``pred`` resp. ``truth`` in C order. Both masks
    are cropped to their joint bounding box plus one voxel first, so big volumes with small objects
    stay cheap; the crop changes nothing (everything outside is background in both).

    Empty masks: both empty -> two empty arrays; only ``truth`` empty -> ``d_pred_to_truth`` is all
    ``inf`` (no surface to reach) and ``d_truth_to_pred`` empty; only ``pred`` empty -> the mirror.
    """
    p, t = _masks(pred, truth)
    sp = _spacing(spacing, p.ndim)
    union = p | t
    if not union.any():
        return np.zeros(0), np.zeros(0)
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    sp_, st_ = _surface(p[tuple(box)]), _surface(t[tuple(box)])
    return _directed(sp_, st_, sp), _directed(st_, sp_, sp)


def _directed(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from each ``src`` voxel to the nearest ``dst`` voxel (``inf`` if ``dst`` is empty)."""
    n = int(np.count_nonzero(src))
    if n == 0:
        return np.zeros(0)
    if not dst.any():
        return np.full(n, np.inf)
    return distance_transform_edt(~dst, sampling=spacing)[src]


def hausdorff95(
    pred: ArrayLike, truth: ArrayLike, spacing: float | Sequence[float] | None, percentile: float = 95.0
) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm: ``max`` of the two directed percentiles.

    Equals ``monai.metrics.compute_hausdorff_distance(..., percentile=95, spacing=spacing)`` for one
    class. Both masks empty -> NaN (nothing to measure; skipped by nan-aware means, as MONAI's);
    exactly one empty -> ``inf`` (MONAI gives NaN there, an artefact of interpolating between ``inf``
    values; see the module docstring).
    ``percentile=100`` is the classic Hausdorff distance.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return _hd_from(*surface_distances(pred, truth, spacing), percentile)


def surface_dice(
    pred: ArrayLike, truth: ArrayLike, spacing: float | Sequence[float] | None, tolerance_mm: float
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021): share of both surfaces within ``tolerance_mm``.

    ``(#{d_pt <= tol} + #{d_tp <= tol}) / (#surface(pred) + #surface(truth))``, counting surface voxels,
    as ``monai.metrics.compute_surface_dice(..., class_thresholds=[tol], spacing=spacing)`` with
    ``use_subvoxels=False``. Both masks empty -> NaN; exactly one empty -> 0 (as MONAI).
    """
    return _nsd_from(*surface_distances(pred, truth, spacing), _tolerance(tolerance_mm))


def _tolerance(tolerance_mm: float) -> float:
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    return tol


def _classes(num_classes: int, include_background: bool) -> list[int]:
    if num_classes < 1 or (num_classes < 2 and not include_background):
        raise ValueError(f"num_classes must be >= 2 (or >= 1 with include_background), got {num_classes}")
    return list(range(0 if include_background else 1, num_classes))


def _check_labels(labels: np.ndarray, num_classes: int, what: str, ignore_index: int | None) -> None:
    if labels.dtype.kind not in "biu":
        raise TypeError(f"{what} must be an integer label map, got {labels.dtype}")
    vals = labels if ignore_index is None else labels[labels != ignore_index]
    if vals.size and (int(vals.min()) < 0 or int(vals.max()) >= num_classes):
        bad = int(vals.max()) if int(vals.max()) >= num_classes else int(vals.min())
        raise ValueError(
            f"{what} contains class {bad} but num_classes is {num_classes} "
            f"(valid values are 0..{num_classes - 1}, ignore_index={ignore_index})"
        )


def case_metrics(
    pred_labels: ArrayLike,
    truth_labels: ArrayLike,
    num_classes: int,
    spacing: float | Sequence[float] | None,
    tolerance_mm: float = 1.0,
    ignore_index: int | None = None,
    include_background: bool = False,
) -> dict[str, list[float]]:
    """Per-class ``dice``, ``iou``, ``hd95`` (mm) and ``nsd`` (at ``tolerance_mm``) of one case.

    ``pred_labels`` and ``truth_labels`` are integer label maps of one volume (or image), values in
    ``0..num_classes-1``. Each list holds classes ``1..num_classes-1`` in order (``0..`` with
    ``include_background``). Dice/IoU of a class absent from both is NaN, so nan-aware means over
    cases skip it; see the module docstring for the empty cases of HD95/NSD.

    ``ignore_index``: truth voxels with this value are left out of Dice/IoU (as are the predictions
    there) and count as background in *both* masks for HD95/NSD, i.e. a prediction inside an ignored
    region neither scores nor costs anything (MONAI's masking of ``y_pred`` and ``y`` does the same).
    The predicted labels may hold anything at ignored voxels. If ``ignore_index`` is itself one of the
    reported classes, its four values are NaN.
    """
    pred, truth = _numpy(pred_labels), _numpy(truth_labels)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} does not match truth shape {truth.shape}")
    classes = _classes(num_classes, include_background)
    _check_labels(truth, num_classes, "truth", ignore_index)
    valid = None if ignore_index is None else truth != ignore_index
    if valid is not None:
        pred = np.where(valid, pred, 0) if pred.dtype.kind in "iu" else pred & valid
    _check_labels(pred, num_classes, "pred", None)
    spacing = _spacing(spacing, pred.ndim)
    tol = _tolerance(tolerance_mm)
    # confusion matrix of the valid voxels (rows truth, cols pred): Dice/IoU for every class at once
    cm = confusion_counts(_tensor(pred), _tensor(truth), num_classes, ignore_index).numpy()
    out: dict[str, list[float]] = {name: [] for name in CASE_METRIC_NAMES}
    for c in classes:
        if c == ignore_index:
            for name in CASE_METRIC_NAMES:
                out[name].append(math.nan)
            continue
        tp, n_truth, n_pred = int(cm[c, c]), int(cm[c].sum()), int(cm[:, c].sum())
        absent = n_truth + n_pred == 0
        out["dice"].append(math.nan if absent else 2.0 * tp / (n_truth + n_pred))
        out["iou"].append(math.nan if absent else tp / (n_truth + n_pred - tp))
        # ignored voxels are neither pred (zeroed above, unless c == 0) nor truth (ignore_index != c)
        p_mask = pred == c if valid is None else (pred == c) & valid
        t_mask = truth == c
        d_pt, d_tp = surface_distances(p_mask, t_mask, spacing)
        out["hd95"].append(_hd_from(d_pt, d_tp, 95.0))
        out["nsd"].append(_nsd_from(d_pt, d_tp, tol))
    return out


def _hd_from(d_pt: np.ndarray, d_tp: np.ndarray, percentile: float) -> float:
    if d_pt.size == 0 and d_tp.size == 0:
        return math.nan
    if d_pt.size == 0 or d_tp.size == 0:
        return math.inf
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def _nsd_from(d_pt: np.ndarray, d_tp: np.ndarray, tol: float) -> float:
    total = d_pt.size + d_tp.size
    if total == 0:
        return math.nan
    return float(np.count_nonzero(d_pt <= tol) + np.count_nonzero(d_tp <= tol)) / total


def _mean(values: Sequence[float], finite_only: bool) -> float:
    """Mean over the NaN-free (``finite_only``: finite) values; NaN if there are none."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)] if finite_only else a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


class PerCaseMetrics:
    """Per-case Dice/IoU/HD95/NSD collected over an evaluation, with means over cases.

    ``update(case, pred_labels, truth_labels, spacing)`` scores one case with :func:`case_metrics`
    (each case keeps its own spacing); ``compute()`` returns the table and the means; ``rows()`` the
    same flat, for ``csv.DictWriter`` or an HTML table; ``reset()`` forgets everything.

    Means, per class over cases:

    * ``dice``, ``iou``, ``nsd``: ``np.nanmean`` (a case where the class is absent from both masks
      has NaN and is skipped, as MONAI's reductions and nnU-Net's summaries do).
    * ``hd95``: mean over the *finite* values only. ``inf`` (the class missed entirely, or predicted
      where the truth has none) would make the mean ``inf`` whatever the other cases score, so those
      cases are left out of the mean and counted instead in ``compute()["hd95_inf"]`` (per class);
      Dice/NSD = 0 already penalise them. MONAI's ``aggregate()`` would return ``inf`` instead.
    * ``overall``: the nan-aware mean over classes of the per-class means (nnU-Net's
      ``foreground_mean``; not MONAI's ``"mean"`` reduction, which averages over classes per case first).

    Rows live in Python lists; under DDP each rank holds its own cases (gather them with
    ``torch.distributed.all_gather_object`` on ``compute()["cases"]`` if needed).
    """

    def __init__(
        self,
        num_classes: int,
        tolerance_mm: float = 1.0,
        ignore_index: int | None = None,
        class_names: Sequence[str] | None = None,
        include_background: bool = False,
    ) -> None:
        self.num_classes = int(num_classes)
        self.classes = _classes(self.num_classes, include_background)
        self.tolerance_mm = _tolerance(tolerance_mm)
        self.ignore_index = ignore_index
        self.include_background = include_background
        if class_names is None:
            names = [f"class_{i}" for i in range(self.num_classes)]
        else:
            names = list(class_names)
            if len(names) != self.num_classes:
                raise ValueError(f"{len(names)} class_names for num_classes={self.num_classes}")
        self.class_names = names
        self._cases: list[tuple[str, dict[str, list[float]]]] = []

    @property
    def reported_names(self) -> list[str]:
        """Names of the reported classes (those of :attr:`classes`), in column order."""
        return [self.class_names[c] for c in self.classes]

    def __len__(self) -> int:
        return len(self._cases)

    def update(
        self, case: str, pred_labels: ArrayLike, truth_labels: ArrayLike, spacing: float | Sequence[float] | None
    ) -> dict[str, list[float]]:
        """Score one case (label maps of one volume, ``spacing`` in mm per axis) and return its metrics.

        Case names must be unique (they key the table).
        """
        case = str(case)
        if any(name == case for name, _ in self._cases):
            raise ValueError(f"case {case!r} was already added")
        m = case_metrics(pred_labels, truth_labels, self.num_classes, spacing, self.tolerance_mm,
                         self.ignore_index, self.include_background)
        self._cases.append((case, m))
        return m

    def compute(self) -> dict[str, Any]:
        """The table and the means over cases (see the class docstring for how means treat NaN/inf).

        Returns ``{"classes": names, "cases": [{"case": name, "dice": [...], "iou": [...], "hd95": [...],
        "nsd": [...]}, ...], "mean": {metric: [per class]}, "overall": {metric: float},
        "hd95_inf": [per class count of inf HD95], "num_cases": n}``; the lists follow ``classes``.
        """
        mean: dict[str, list[float]] = {}
        for name in CASE_METRIC_NAMES:
            mean[name] = [
                _mean([m[name][j] for _, m in self._cases], finite_only=name == "hd95")
                for j in range(len(self.classes))
            ]
        return {
            "classes": self.reported_names,
            "cases": [{"case": case, **{k: list(v) for k, v in m.items()}} for case, m in self._cases],
            "mean": mean,
            "overall": {name: _mean(mean[name], finite_only=False) for name in CASE_METRIC_NAMES},
            "hd95_inf": [sum(1 for _, m in self._cases if math.isinf(m["hd95"][j])) for j in range(len(self.classes))],
            "num_cases": len(self._cases),
        }

    def rows(self, include_mean: bool = True) -> list[dict[str, str | float]]:
        """One flat dict per case (``case``, then ``dice_<class>``, ``iou_<class>``, ``hd95_<class>``,
        ``nsd_<class>`` per metric and class), plus a last row with ``case = "mean"`` holding the means.

        Every row has the same keys in the same order, ready for ``csv.DictWriter(f, rows[0].keys())``.
        Values are floats (NaN/inf kept as such).
        """
        names = self.reported_names

        def flat(case: str, m: dict[str, list[float]]) -> dict[str, str | float]:
            row: dict[str, str | float] = {"case": case}
            for metric in CASE_METRIC_NAMES:
                for name, v in zip(names, m[metric]):
                    row[f"{metric}_{name}"] = float(v)
            return row

        out = [flat(case, m) for case, m in self._cases]
        if include_mean and self._cases:
            out.append(flat("mean", self.compute()["mean"]))
        return out

    table = rows

    def scored(self) -> list[tuple[str, dict[str, list[float]]]]:
        """The ``(case, metrics)`` pairs scored so far (e.g. to gather them across processes)."""
        return list(self._cases)

    def merge(self, scored: list[tuple[str, dict[str, list[float]]]]) -> None:
        """Replace the cases with ``scored`` (pairs from :meth:`scored` of every process), in case order."""
        self._cases = sorted(scored, key=lambda c: c[0])

    def reset(self) -> None:
        """Forget every case."""
        self._cases.clear()

