"""Evaluating a model on a dataset: dataset-level metrics, Boundary F1 and the loss, in one pass.

Used by the trainer (validation every epoch, the final report) and by ``unetkit evaluate``. Under
``torch.distributed`` every rank evaluates its own share of the samples (each counted exactly once)
and the confusion matrices are all-reduced, so the numbers equal a single-process evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .metrics import BoundaryF1, MeanMetric, SegmentationMetrics


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
        return "\n".join(lines)


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
def evaluate(model: nn.Module, dataset: Dataset, *, num_classes: int, ignore_index: int | None = 255,
             loss_fn: nn.Module | None = None, boundary: bool = False, batch_size: int = 8,
             device: torch.device | str | None = None, num_workers: int = 0,
             class_names: Sequence[str] = (), autocast_dtype: torch.dtype | None = None,
             tile_size: int | tuple[int, int] | None = None,
             pad_value: float | torch.Tensor | None = None, keep: Sequence[int] = ()) -> EvalResult:
    """Evaluate ``model`` on every sample of ``dataset`` (split across ranks under DDP), whole images.

    Images of any size are scored at their native resolution: with ``tile_size`` (the training patch
    size) through Gaussian-blended sliding windows where an image is larger, padded with ``pad_value``
    (default: the dataset's normalised black, as training pads) where it is smaller; consecutive images
    of one size are batched. Metrics are dataset-level (one confusion matrix over every pixel).
    ``boundary=True`` adds per-class Boundary F1 (CPU work, meant for final reports, not every epoch).
    The loss, when ``loss_fn`` is given, is the mean over samples. The predicted labels of the samples
    in ``keep`` (those this rank evaluates) come back in ``EvalResult.kept``, e.g. for sample pictures
    without a second prediction.
    """
    from .infer import predict
    from .models.outputs import logits_to_labels

    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world = _distributed()
    if pad_value is None and getattr(dataset, "normalization", None) is not None:
        pad_value = dataset.normalization.pad_value()  # type: ignore[union-attr]
    loader = DataLoader(_Indexed(dataset), batch_size=None, sampler=ShardSampler(len(dataset), rank, world),
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    wanted = set(keep)
    kept: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, device=device)
    bf1 = BoundaryF1(num_classes, ignore_index=ignore_index) if boundary else None
    loss_mean = MeanMetric(device)
    images_seen = MeanMetric(device)  # its total weight counts the images

    def score(indices: list[int], images: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
        x = torch.stack(images).to(device, non_blocking=True)
        y = torch.stack(masks).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = predict(model, x, tile_size=tile_size, output="logits", batch_size=batch_size,
                             pad_value=pad_value)
        metrics.update(logits, y)
        if loss_fn is not None:
            loss_mean.update(loss_fn(logits, y).detach(), weight=x.shape[0])
        if bf1 is not None:
            bf1.update(logits, y)
        images_seen.update(0.0, weight=x.shape[0])
        for j, i in enumerate(indices):
            if i in wanted:
                kept[i] = logits_to_labels(logits[j:j + 1])[0].cpu()

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
    model.train(was_training)
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
        kept=kept,
    )


class _Indexed(Dataset):
    """``dataset[i]`` as ``(i, image, mask)``, so an evaluation knows which sample it scored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        return i, image, mask
