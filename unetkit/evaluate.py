"""Evaluating a model on a dataset: dataset-level metrics, Boundary F1 and the loss, in one pass.

Used by the trainer (validation every epoch, the final report) and by ``unetkit evaluate``, both through a
:class:`unetkit.inference.Predictor`, so validation scores a model exactly as ``predict`` applies it. Under
``torch.distributed`` every rank evaluates its own share of the samples (each counted exactly once)
and the confusion matrices are all-reduced, so the numbers equal a single-process evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .metrics import BoundaryF1, MeanMetric, SegmentationMetrics

if TYPE_CHECKING:
    from .inference import Predictor


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample on exactly one rank, none repeated or dropped.

    (``DistributedSampler`` pads the last round with repeats, which would count some validation images
    twice.)
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):  # noqa: ANN204 - Sampler protocol
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class EvalResult:
    """Metrics of one evaluation; per-class values are lists (NaN where a class is absent)."""

    miou: float
    mdice: float
    pixel_accuracy: float
    iou: list[float]
    dice: list[float]
    precision: list[float]
    recall: list[float]
    confusion_matrix: list[list[int]]
    loss: float | None = None
    boundary_f1: list[float] | None = None
    class_names: list[str] = field(default_factory=list)
    images: int = 0  # images scored
    pixels: int = 0  # pixels scored (every labelled pixel, ignore_index excluded)
    kept: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # sample -> predicted labels
    per_case: dict[str, Any] | None = None  # volumes: PerCaseMetrics.compute() (Dice, IoU, HD95, NSD per case)

    @property
    def mean_boundary_f1(self) -> float:
        vals = [v for v in (self.boundary_f1 or []) if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` layout: headline numbers plus ``per_class`` by class name."""
        names = self.class_names or [str(i) for i in range(len(self.iou))]
        per_class = {}
        for i, name in enumerate(names):
            per_class[name] = {"iou": _num(self.iou[i]), "dice": _num(self.dice[i]),
                               "precision": _num(self.precision[i]), "recall": _num(self.recall[i])}
            if self.boundary_f1 is not None:
                per_class[name]["boundary_f1"] = _num(self.boundary_f1[i])
        out = {"miou": _num(self.miou), "dice": _num(self.mdice), "pixel_accuracy": _num(self.pixel_accuracy),
               "boundary_f1": _num(self.mean_boundary_f1) if self.boundary_f1 is not None else None,
               "loss": _num(self.loss) if self.loss is not None else None,
               "per_class": per_class, "confusion_matrix": self.confusion_matrix,
               "images": self.images, "pixels": self.pixels}
        if self.per_case is not None:
            out["per_case"] = json_safe(self.per_case)
        return out

    def table(self) -> str:
        """A plain-text per-class table with the means at the bottom."""
        names = self.class_names or [str(i) for i in range(len(self.iou))]
        w = max(12, *(len(n) for n in names))
        bf = self.boundary_f1
        head = f"{'class':<{w}}  {'IoU':>7}  {'Dice':>7}  {'BF1':>7}  {'prec':>7}  {'recall':>7}"
        lines = [head, "-" * len(head)]
        for i, n in enumerate(names):
            lines.append(f"{n:<{w}}  {_fmt(self.iou[i])}  {_fmt(self.dice[i])}  "
                         f"{_fmt(bf[i] if bf else math.nan)}  {_fmt(self.precision[i])}  {_fmt(self.recall[i])}")
        lines.append("-" * len(head))
        lines.append(f"{'mean':<{w}}  {_fmt(self.miou)}  {_fmt(self.mdice)}  {_fmt(self.mean_boundary_f1)}")
        lines.append(f"pixel accuracy {self.pixel_accuracy:.4f}" + (f"   loss {self.loss:.4f}" if self.loss else ""))
        if self.per_case is not None:
            lines += ["", case_table(self.per_case)]
        return "\n".join(lines)


def case_table(per_case: dict[str, Any]) -> str:
    """Per-case means over classes (Dice, IoU, HD95 mm, NSD), one line per case, then the means over cases."""
    head = f"{'case':<16}  {'Dice':>7}  {'IoU':>7}  {'HD95 mm':>8}  {'NSD':>7}"
    lines = [f"per case ({per_case['num_cases']} case(s); means over classes present; NSD at "
             f"{per_case.get('tolerance_mm', 1.0):g} mm)", head, "-" * len(head)]

    def row(name: str, m: dict[str, Any]) -> str:
        vals = [_mean_of(m[k], finite=k == "hd95") for k in ("dice", "iou", "hd95", "nsd")]
        return (f"{name[:16]:<16}  {_fmt(vals[0])}  {_fmt(vals[1])}  {_fmt(vals[2]).rjust(8)}  {_fmt(vals[3])}")

    for case in per_case["cases"]:
        lines.append(row(case["case"], case))
    lines.append("-" * len(head))
    lines.append(row("mean", per_case["mean"]))
    return "\n".join(lines)


def _mean_of(values: Sequence[float], finite: bool) -> float:
    vals = [v for v in values if not math.isnan(v) and (math.isfinite(v) or not finite)]
    return sum(vals) / len(vals) if vals else math.nan


def json_safe(obj: Any) -> Any:
    """JSON-safe: NaN -> None, inf -> "inf"."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) else ("inf" if math.isinf(obj) else round(obj, 6))
    return obj


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


def _fmt(v: float) -> str:
    return f"{'-':>7}" if math.isnan(v) else f"{v:7.4f}"


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.inference_mode()
def evaluate(predictor: Predictor, dataset: Dataset, *, loss_fn: nn.Module | None = None, boundary: bool = False,
             num_workers: int = 0, keep: Sequence[int] = (), tolerance_mm: float = 1.0) -> EvalResult:
    """Evaluate ``predictor`` on every sample of ``dataset`` (split across ranks under DDP), whole images.

    Images of any size are scored at their native resolution, as the predictor applies its model (sliding
    windows of its tile where an image is larger, padded with the normalised black where smaller, its
    precision); consecutive images of one size are batched (``predictor.batch_size``). Metrics are
    dataset-level (one confusion matrix over every pixel), for the predictor's classes and ignore index.
    ``boundary=True`` adds per-class Boundary F1 (CPU work, meant for final reports, not every epoch), and
    for a volume dataset (:class:`unetkit.data.volumes.VolumeSliceDataset`) per-case Dice, IoU, HD95 and
    normalised surface Dice at ``tolerance_mm`` on each case's slice grid (``EvalResult.per_case``).
    The loss, when ``loss_fn`` is given, is the mean over samples. The predicted labels of the samples
    in ``keep`` (those this rank evaluates) come back in ``EvalResult.kept``, e.g. for sample pictures
    without a second prediction. Only the model's forward passes run in reduced precision: the logits, the
    loss and the metrics are float32.
    """
    from .models.outputs import logits_to_labels

    info = predictor.info
    num_classes, ignore_index, class_names = info.num_classes, info.ignore_index, info.class_names
    batch_size = predictor.batch_size
    device = predictor.device
    rank, world = _distributed()
    cases = getattr(dataset, "cases", None) if boundary else None  # volumes: per-case metrics in final reports
    if cases is not None:  # whole cases per rank, so each rank can score its cases
        sampler: Sampler[int] = _CaseSampler(dataset, rank, world)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(_Indexed(dataset), batch_size=None, sampler=sampler,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    per_case = None
    open_cases: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    if cases is not None:
        from .metrics.surface import PerCaseMetrics

        per_case = PerCaseMetrics(num_classes, tolerance_mm=tolerance_mm, ignore_index=ignore_index,
                                  class_names=list(class_names) or None)
    wanted = set(keep)
    kept: dict[int, torch.Tensor] = {}
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, device=device)
    planar = getattr(dataset, "spatial_dims", 2) == 2  # Boundary F1 is a 2D measure; volumes get HD95 and NSD
    bf1 = BoundaryF1(num_classes, ignore_index=ignore_index) if boundary and planar else None
    loss_mean = MeanMetric(device)
    images_seen = MeanMetric(device)  # its total weight counts the images

    def score(indices: list[int], images: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        x = torch.stack(images).to(device, non_blocking=True)
        y = torch.stack(masks).to(device, non_blocking=True)
        logits = predictor.predict_tensor(x, output="logits")  # float32 logits
        metrics.update(logits, y)
        if loss_fn is not None:
            loss_mean.update(loss_fn(logits, y).detach(), weight=x.shape[0])
        if bf1 is not None:
            bf1.update(logits, y)
        images_seen.update(0.0, weight=x.shape[0])
        labels = logits_to_labels(logits).cpu() if wanted or per_case is not None else None
        for j, i in enumerate(indices):
            if i in wanted:
                kept[i] = labels[j]
            if per_case is not None:
                _collect(per_case, dataset, open_cases, i, labels[j], masks[j])

    group: tuple[list[int], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for index, image, mask in loader:
        if group[0] and (image.shape != group[1][0].shape or len(group[0]) >= batch_size):
            score(*group)
            group = ([], [], [])
        group[0].append(int(index))
        group[1].append(image)
        group[2].append(mask)
    if group[0]:
        score(*group)
    case_result = None
    if per_case is not None:
        case_result = _gather_cases(per_case)
        case_result["tolerance_mm"] = tolerance_mm
    for metric in (metrics, loss_mean, images_seen, bf1):
        if metric is not None:
            metric.sync()
    m = metrics.compute()
    loss = loss_mean.compute() if loss_fn is not None and loss_mean.update_count else None
    cm = m["confusion_matrix"].cpu()
    return EvalResult(
        miou=float(m["miou"]), mdice=float(m["mdice"]), pixel_accuracy=float(m["pixel_accuracy"]),
        iou=[float(v) for v in m["iou"]], dice=[float(v) for v in m["dice"]],
        precision=[float(v) for v in m["precision"]], recall=[float(v) for v in m["recall"]],
        confusion_matrix=cm.tolist(), loss=loss,
        boundary_f1=[float(v) for v in bf1.compute()] if bf1 is not None else None,
        class_names=list(class_names), images=int(images_seen.state("weight").item()), pixels=int(cm.sum()),
        kept=kept, per_case=case_result,
    )


def _collect(per_case: Any, dataset: Any, open_cases: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]],
             index: int, labels: torch.Tensor, truth: torch.Tensor) -> None:
    """Keep slice ``index``'s prediction; once its case is complete, score the case and free its slices (a 3D
    sample is a whole case, scored at once)."""
    c = dataset.case_of[index]
    if labels.ndim == 3:
        case = dataset.cases[c]
        per_case.update(case.name, labels.numpy(), truth.cpu().numpy(), case.spacing)
        return
    slices = open_cases.setdefault(c, {})
    slices[dataset.slice_of[index]] = (labels, truth.cpu())
    case = dataset.cases[c]
    if len(slices) == case.shape[0]:
        pred = torch.stack([slices[s][0] for s in range(case.shape[0])]).numpy()
        true = torch.stack([slices[s][1] for s in range(case.shape[0])]).numpy()
        per_case.update(case.name, pred, true, case.spacing)
        del open_cases[c]


def _gather_cases(per_case: Any) -> dict[str, Any]:
    """``per_case.compute()`` over every rank's cases (each rank scored whole cases of its own)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, per_case.scored())
        per_case.merge([c for part in everyone for c in part])
    return per_case.compute()


class _CaseSampler(Sampler[int]):
    """The slices of cases ``rank, rank + world, ...``, in order: every case whole on exactly one rank."""

    def __init__(self, dataset: Any, rank: int, world: int) -> None:
        self.indices = [i for c in range(rank, len(dataset.cases), world) for i in dataset.case_slices(c)]

    def __iter__(self):  # noqa: ANN204 - Sampler protocol
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Indexed(Dataset):
    """``dataset[i]`` as ``(i, image, mask)``, so an evaluation knows which sample it scored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        return i, image, mask
