"""nnU-Net v2 as a comparator of the development suite, under the same wall-time budget as ours.

nnU-Net's own pipeline runs unchanged: our data set is written in its raw layout (our validation split
becomes its test images), its fingerprint extraction, experiment planner and preprocessing build one
configuration (``--configuration``: ``2d`` for image folders; ``3d_fullres`` by default or ``2d`` for
volume folders), its trainer trains fold ``"all"`` (every training case) with its augmentation, SGD and
poly schedule, deep supervision and loss, and its ``nnUNetPredictor`` (sliding windows, Gaussian
weighting, mirroring) predicts the test images. One thing is changed: the schedule's length. A subclass
of its trainer times a short first epoch and fits the number of epochs and iterations per epoch to what
is left of the budget (:func:`fit_schedule`), with the poly schedule spanning the shortened run. The
budget is the whole wall time from raw data to predictions, as ours runs from raw data to its final
evaluation. Predictions are scored by :mod:`unetkit.metrics` on the validation masks as our data layer
reads them, so both are scored on the same pixels.

Image folders (PNG/TIFF) are written as PNG or TIFF for nnU-Net's ``NaturalImage2DIO`` (:func:`convert`).
Volume folders (``images/`` + ``masks/`` of NIfTI, NRRD, ... volumes) are read case by case with unetkit's
volume readers and written as NIfTI on their own voxel grid with their affine, for nnU-Net's
``SimpleITKIO`` (:func:`convert_volumes`), so its planner sees the real (possibly anisotropic) spacing.
Their predictions are taken to our slice grid as our masks are and scored per case (Dice, HD95, NSD with
the case's spacing) and over all voxels (:func:`score_volumes`); ``per_case_mean`` holds the means over
cases that ``benchmarks/bench_volumes.py`` reports for its own variants.

The trainer subclass is never looked up by name: it is instantiated directly in Python, and the trained
network is handed to the predictor with ``nnUNetPredictor.manual_initialization`` (as nnU-Net's own final
validation does), so nothing is copied into nnU-Net's package.

    python benchmarks/nnunet_compare.py --data devsuite/ct-coronal --budget 180 --json nnunet.json
    python benchmarks/nnunet_compare.py --data devvol/mri-brain --budget 600 \\
        --configuration 3d_fullres --seed 0 --json nnunet-3d.json

``benchmarks/bench_datasets.py --compare nnunet`` runs it next to ours on image folders, and
``benchmarks/bench_volumes.py --variants ...,nnunet-3d,nnunet-2d`` on volume folders, one process per run.
``--seed`` draws our validation split as ``unetkit train --seed`` does. nnU-Net reads ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` when it is first imported, so :func:`run` sets them (to
folders in its work folder) before importing it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATASET_ID = 501  # any id works: every run has its own nnU-Net folders
PLANS = "nnUNetPlans"  # nnU-Net's default planner (ExperimentPlanner) writes these plans
CONFIGURATIONS = ("2d", "3d_fullres")  # image folders: 2d only; volume folders: either (3d_fullres by default)
FOLD = "all"  # train on every training case; nnU-Net then validates on the same cases
ITERATIONS = 250  # nnU-Net's iterations per epoch, the most a fitted epoch gets
VAL_RATIO = 50 / 250  # nnU-Net's validation iterations per training iteration
MIN_EPOCHS = 10  # so the poly schedule decays in at least this many steps when the budget allows


# ----------------------------------------------------------------------------- budget arithmetic (pure)
@dataclass(frozen=True)
class Schedule:
    """Fitted epochs after the timing epoch, training and validation iterations per epoch."""

    epochs: int
    iterations: int
    val_iterations: int

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations


def fit_schedule(seconds: float, train_s: float, val_s: float, epoch_s: float = 0.0, *,
                 max_iterations: int = ITERATIONS, val_ratio: float = VAL_RATIO,
                 min_epochs: int = MIN_EPOCHS) -> Schedule:
    """Epochs x iterations that fit ``seconds`` at ``train_s`` per training and ``val_s`` per validation
    iteration plus ``epoch_s`` per epoch (checkpoints, logs).

    Epochs keep nnU-Net's shape (``max_iterations`` training iterations and ``val_ratio`` as many
    validation iterations) when at least ``min_epochs`` of them fit; shorter budgets shorten the epochs
    instead, so the per-epoch poly schedule still decays in ``min_epochs`` steps.
    """
    if seconds <= 0 or train_s <= 0:
        return Schedule(0, 0, 0)

    def val_iterations(iterations: int) -> int:
        return max(1, round(iterations * val_ratio))

    def epoch_cost(iterations: int) -> float:
        return iterations * train_s + val_iterations(iterations) * max(val_s, 0.0) + max(epoch_s, 0.0)

    iterations = max_iterations
    while iterations > 1 and seconds / epoch_cost(iterations) < min_epochs:
        # the most iterations that give min_epochs epochs (per-epoch costs make it a fixed point)
        fit = int((seconds / min_epochs - max(epoch_s, 0.0)) / (train_s + val_ratio * max(val_s, 0.0)))
        iterations = max(1, min(iterations - 1, fit))
    epochs = int(seconds // epoch_cost(iterations))
    if epochs == 0:
        return Schedule(0, 0, 0)
    return Schedule(epochs, iterations, val_iterations(iterations))


def refit_epochs(left_s: float, epoch_times: Sequence[float]) -> int:
    """How many more epochs fit in ``left_s`` seconds at the mean of the epochs run so far."""
    if not epoch_times or left_s <= 0:
        return 0
    return int(left_s // (sum(epoch_times) / len(epoch_times)))


def probe_done(timed: int, wanted: int, now: float, last_s: float, deadline: float) -> bool:
    """Whether the timing epoch has timed enough training iterations: ``wanted`` of them, or (on a machine
    far slower than the budget assumes) at least one when another would end past ``deadline``."""
    return timed >= wanted or (timed >= 1 and now + last_s > deadline)


def poly_lr(initial_lr: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: the learning rate of ``epoch`` in a run of ``epochs`` epochs."""
    return initial_lr * (1 - epoch / epochs) ** exponent


def sliding_tiles(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> int:
    """Number of patches a sliding window with overlap ``1 - step`` needs over ``shape`` (padded to the
    patch where smaller), as nnU-Net's predictor places them. Any number of axes: axes of ``shape`` before
    the patch's (a 2D patch over a volume) are slices, each tiled on its own."""
    lead = len(shape) - len(patch)
    if lead < 0:
        raise ValueError(f"shape {tuple(shape)} has fewer axes than the patch {tuple(patch)}")
    n = math.prod(int(s) for s in shape[:lead])
    for s, p in zip(shape[lead:], patch):
        n *= math.ceil((max(s, p) - p) / (p * step)) + 1
    return n


def preprocessed_shape(shape: Sequence[int], spacing: Sequence[float], plans: dict[str, Any],
                       configuration: str) -> tuple[int, ...]:
    """A case's shape once nnU-Net has transposed it and resampled it to ``configuration``'s spacing
    (before its crop to the non-zero box), as its preprocessor computes it. ``shape`` and ``spacing`` are
    in its reader's axis order (SimpleITK's: ``(K, J, I)``); the ``2d`` configuration keeps the spacing
    between slices."""
    order = plans["transpose_forward"]
    old_shape, old_spacing = [shape[i] for i in order], [float(spacing[i]) for i in order]
    target = [float(v) for v in plans["configurations"][configuration]["spacing"]]
    target = old_spacing[:len(old_shape) - len(target)] + target
    return tuple(int(round(s * o / t)) for s, o, t in zip(old_shape, old_spacing, target))


def prediction_seconds(shapes: Sequence[Sequence[int]], patch: Sequence[int], first_case_s: float,
                       fixed_s: float = 15.0) -> float:
    """Seconds to reserve for predicting ``shapes`` when the first of them took ``first_case_s``:
    each case in proportion to its sliding-window tiles, plus ``fixed_s`` (start, writing, any workers)."""
    first = sliding_tiles(shapes[0], patch)
    return sum(sliding_tiles(s, patch) for s in shapes) / first * first_case_s + fixed_s


# ----------------------------------------------------------------------------- conversion
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", name) or "data"


def is_volume_set(dataset: Any) -> bool:
    """Whether ``dataset`` is a split of a volume folder (cases of NIfTI/NRRD/... volumes)."""
    from unetkit.data.volume_dataset import VolumeSliceDataset

    return isinstance(dataset, VolumeSliceDataset)


def _labels_json(class_names: Sequence[str], has_ignore: bool) -> dict[str, int]:
    """dataset.json ``labels``: our class names (unique; ``background`` first), plus ``ignore`` one above
    the classes when a training mask has our ``ignore_index``."""
    labels: dict[str, int] = {}
    for k, name in enumerate(["background", *class_names[1:]]):
        labels[name if name not in labels and name != "ignore" else f"{name} ({k})"] = k
    if has_ignore:
        labels["ignore"] = len(class_names)
    return labels


def channel_names(data: str, channels: int) -> dict[str, str]:
    """dataset.json ``channel_names``: ``CT`` for the CT sets (nnU-Net's CT normalisation, as a user of
    nnU-Net would declare them), else a name that selects its per-image z-score."""
    kind = "CT" if Path(str(data)).name.lower().startswith("ct") else "image"
    return {str(c): kind for c in range(channels)}


def _write(path: Path, plane: np.ndarray) -> None:
    """One 2D array as PNG (8/16-bit) or TIFF (anything else), whichever ``path`` ends with."""
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(plane)).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, np.ascontiguousarray(plane))


def convert(train: Any, val: Any, raw_root: Path, data: str = "data",
            dataset_id: int = DATASET_ID) -> tuple[Path, dict[str, Any]]:
    """Write our ``(train, val)`` datasets in nnU-Net's raw layout under ``raw_root``.

    ``DatasetXXX_Name/imagesTr/<case>_0000.png`` (one grey file per channel, ``_0001``... for more),
    ``labelsTr/<case>.png``, ``imagesTs/`` for the validation split and ``dataset.json`` (read by
    nnU-Net's ``NaturalImage2DIO``). Images are written as stored: 8/16-bit PNG, or 32-bit float TIFF
    for float data (e.g. the built-in ct-chest), then masks are TIFF too (one file ending per data set).
    Masks hold class indices; our ``ignore_index`` becomes nnU-Net's ``ignore`` label (one above the
    classes) when a training mask has it. Cases are ``tr_0000``... and ``ts_0000``... in dataset order;
    ``cases.json`` maps them to our sample names. Returns the dataset folder and its dataset.json.
    """
    stored = [train.load_stored(i) for i in range(len(train))]
    tests = [val.load_stored(i)[0] for i in range(len(val))]
    integer = all(img.dtype in (np.uint8, np.uint16) for img in [*(s[0] for s in stored), *tests])
    ending = ".png" if integer else ".tif"
    folder = raw_root / f"Dataset{dataset_id:03d}_{_safe(Path(str(data)).name)}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    num_classes, ignore = train.num_classes, train.ignore_index
    has_ignore = any(bool((mask == ignore).any()) for _, mask in stored)
    cases: dict[str, str] = {}
    for i, (image, mask) in enumerate(stored):
        case = f"tr_{i:04d}"
        cases[case] = train.names[i]
        for c in range(image.shape[0]):
            _write(folder / "imagesTr" / f"{case}_{c:04d}{ending}", image[c] if integer else image[c].astype(np.float32))
        labels = np.where(mask == ignore, num_classes, mask) if has_ignore else mask
        _write(folder / "labelsTr" / f"{case}{ending}", labels.astype(np.uint8))
    for i, image in enumerate(tests):
        case = f"ts_{i:04d}"
        cases[case] = val.names[i]
        for c in range(image.shape[0]):
            _write(folder / "imagesTs" / f"{case}_{c:04d}{ending}", image[c] if integer else image[c].astype(np.float32))
    dataset_json = {"channel_names": channel_names(data, train.in_channels),
                    "labels": _labels_json(train.class_names, has_ignore),
                    "numTraining": len(stored), "file_ending": ending,
                    "overwrite_image_reader_writer": "NaturalImage2DIO"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    return folder, dataset_json


#: nnU-Net's reader and writer of the converted volumes. SimpleITKIO (its default for ``.nii.gz``) reads
#: the voxels as stored, only with the axes reversed to ``(K, J, I)`` and the spacing with them, and writes
#: predictions back on the input's grid and geometry: the voxel grid stays ours. (NibabelIOWithReorient
#: would reorient to RAS first, i.e. flip or permute axes, before writing back.)
VOLUME_READER = "SimpleITKIO"
VOLUME_ENDING = ".nii.gz"


def _write_nifti(reference: Any, array: np.ndarray, path: Path) -> None:
    """``array`` on ``reference``'s grid as NIfTI, with unetkit's writer and a fresh header whose qform
    and sform are both ``reference``'s affine, so SimpleITK and nibabel read the same geometry (a source's
    own header could hold a qform and sform that disagree; NRRD and DICOM sources have none)."""
    from unetkit.data.formats.nifti import write
    from unetkit.data.volume_io import Volume

    write(Volume(reference.array, reference.affine, reference.path, reference.format), array, path)


def convert_volumes(train: Any, val: Any, raw_root: Path, data: str = "data",
                    dataset_id: int = DATASET_ID) -> tuple[Path, dict[str, Any]]:
    """Write the cases of a volume folder's ``(train, val)`` splits in nnU-Net's raw layout under ``raw_root``.

    ``imagesTr/tr_XXXX_0000.nii.gz`` (one channel per case), ``labelsTr/tr_XXXX.nii.gz``, ``imagesTs/``
    for the validation cases and ``dataset.json`` (reader :data:`VOLUME_READER`). Each stored volume is
    read with unetkit's reader (any of its formats) and written as NIfTI on its own voxel grid, with its
    affine, so nnU-Net's fingerprint sees each case's real spacing (its anisotropy rules depend on it); the
    labels are written with their image's geometry. Our ``ignore_index`` becomes nnU-Net's ``ignore`` label
    (one above the classes) when a training mask has it. ``cases.json`` maps the cases to ours. Returns the
    dataset folder and its dataset.json.
    """
    from unetkit.data.volume_io import read_volume

    folder = raw_root / f"Dataset{dataset_id:03d}_{_safe(Path(str(data)).name)}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    num_classes, ignore = train.num_classes, train.ignore_index
    label_type = np.uint8 if num_classes < 255 else np.uint16  # the ignore label (num_classes) must fit
    has_ignore = False
    cases: dict[str, str] = {}
    for i, case in enumerate(train.cases):
        name = f"tr_{i:04d}"
        cases[name] = case.name
        image = read_volume(case.image)
        _write_nifti(image, image.array, folder / "imagesTr" / f"{name}_0000{VOLUME_ENDING}")
        labels = read_volume(case.mask, label=True).array
        ignored = labels == ignore
        has_ignore = has_ignore or bool(ignored.any())
        _write_nifti(image, np.where(ignored, num_classes, labels).astype(label_type),
                     folder / "labelsTr" / f"{name}{VOLUME_ENDING}")
    for i, case in enumerate(val.cases):
        name = f"ts_{i:04d}"
        cases[name] = case.name
        image = read_volume(case.image)
        _write_nifti(image, image.array, folder / "imagesTs" / f"{name}_0000{VOLUME_ENDING}")
    dataset_json = {"channel_names": channel_names(data, 1),
                    "labels": _labels_json(train.class_names, has_ignore),
                    "numTraining": len(train.cases), "file_ending": VOLUME_ENDING,
                    "overwrite_image_reader_writer": VOLUME_READER}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    return folder, dataset_json


def case_geometry(val: Any) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """``(shape, spacing)`` of each validation case in SimpleITK's axis order ``(K, J, I)``, from the headers."""
    from unetkit.data.volume_io import read_volume_geometry

    out = []
    for case in val.cases:
        shape, affine = read_volume_geometry(case.image)
        spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
        out.append((tuple(int(s) for s in shape[::-1]), tuple(float(v) for v in spacing[::-1])))
    return out


# ----------------------------------------------------------------------------- scoring
def score(pred_dir: Path, val: Any, ending: str = ".png") -> dict[str, Any]:
    """Score nnU-Net's predictions ``ts_XXXX<ending>`` against ``val``'s masks with our metrics.

    The masks are those our evaluation reads (``load_stored``), with the same ``ignore_index``; the
    scored pixel count is checked against an independent count of the labelled pixels.
    """
    import torch

    from unetkit.data.io import read_mask
    from unetkit.metrics import SegmentationMetrics

    metrics = SegmentationMetrics(val.num_classes, ignore_index=val.ignore_index)
    labelled = 0
    for i in range(len(val)):
        mask = val.load_stored(i)[1]
        pred = read_mask(pred_dir / f"ts_{i:04d}{ending}")
        if pred.shape != mask.shape:
            raise ValueError(f"prediction ts_{i:04d} is {pred.shape}, its mask {mask.shape}")
        labelled += int((mask != val.ignore_index).sum())
        metrics.update(torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(mask.astype(np.int64))[None])
    m = metrics.compute()
    pixels = int(m["confusion_matrix"].sum())
    assert pixels == labelled, f"scored {pixels} pixels but the validation masks label {labelled}"
    return {"miou": float(m["miou"]), "dice": float(m["mdice"]), "pixel_accuracy": float(m["pixel_accuracy"]),
            "iou": [float(v) for v in m["iou"]], "images": len(val), "pixels": pixels}


def on_slice_grid(case: Any, labels: Path, settings: Any) -> np.ndarray:
    """The label volume ``labels`` on ``case``'s slice grid, by the path our data layer takes for a case's
    mask (:func:`unetkit.data.volume_scan.load_case`: its geometry checked against the case's image, then
    the slice axis moved first and any in-plane resampling). Raises ``ValueError`` when ``labels`` is not
    on the image's voxel grid."""
    from unetkit.data.errors import DatasetError
    from unetkit.data.volume_scan import VolumeCase, load_case

    if not labels.exists():
        raise FileNotFoundError(f"no prediction {labels} for case {case.name}")
    probe = VolumeCase(case.name, case.image, labels, case.rel_image, labels.name)
    try:
        load_case(probe, settings)
    except DatasetError as e:
        raise ValueError(f"prediction {labels.name} is not on the voxel grid of case {case.name} "
                         f"({case.rel_image}): {e}") from e
    assert probe.mask_data is not None
    return probe.mask_data


def score_volumes(pred_dir: Path, val: Any, ending: str = VOLUME_ENDING,
                  tolerance_mm: float = 1.0) -> dict[str, Any]:
    """Score nnU-Net's predictions ``ts_XXXX<ending>`` of a volume folder's validation cases with our metrics.

    Each prediction is taken to the case's slice grid as our masks are (:func:`on_slice_grid`) and scored
    there against the mask our evaluation reads, with the same ``ignore_index``: one confusion matrix over
    every voxel (mIoU, Dice) and per-case Dice, IoU, HD95 and NSD at ``tolerance_mm`` with the case's
    spacing (:class:`unetkit.metrics.surface.PerCaseMetrics`, as ``unetkit evaluate`` scores volumes).
    The scored voxel count is checked against an independent count of the labelled voxels.
    """
    import torch

    from unetkit.evaluate import json_safe
    from unetkit.metrics import SegmentationMetrics
    from unetkit.metrics.surface import PerCaseMetrics

    metrics = SegmentationMetrics(val.num_classes, ignore_index=val.ignore_index)
    per_case = PerCaseMetrics(val.num_classes, tolerance_mm=tolerance_mm, ignore_index=val.ignore_index,
                              class_names=list(val.class_names) or None)
    labelled = 0
    for i, case in enumerate(val.cases):
        truth = case.mask_data if case.mask_data is not None else on_slice_grid(case, case.mask, val.settings)
        pred = on_slice_grid(case, pred_dir / f"ts_{i:04d}{ending}", val.settings)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction ts_{i:04d} is {pred.shape} on the slice grid, the mask of "
                             f"{case.name} {truth.shape}")
        labelled += int((truth != val.ignore_index).sum())
        metrics.update(torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(truth.astype(np.int64))[None])
        per_case.update(case.name, pred, truth, case.spacing)
    m = metrics.compute()
    voxels = int(m["confusion_matrix"].sum())
    assert voxels == labelled, f"scored {voxels} voxels but the validation masks label {labelled}"
    cases = per_case.compute()
    cases["tolerance_mm"] = tolerance_mm
    return {"miou": float(m["miou"]), "dice": float(m["mdice"]), "pixel_accuracy": float(m["pixel_accuracy"]),
            "iou": [float(v) for v in m["iou"]], "images": len(val.cases), "cases": len(val.cases),
            "pixels": voxels, "per_case_mean": json_safe(cases["mean"]), "per_case": json_safe(cases)}


# ----------------------------------------------------------------------------- nnU-Net (lazy imports)
def set_paths(work: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``work``; must run before nnunetv2 is first imported."""
    if "nnunetv2.paths" in sys.modules:
        raise RuntimeError("nnunetv2 was imported before its folders were set")
    paths = {k: work / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in paths.items():
        v.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(v)
    return paths


def plan_and_preprocess(dataset_id: int = DATASET_ID, configuration: str = "2d",
                        processes: int = 2) -> dict[str, Any]:
    """``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION`` in Python (its default: no integrity check,
    which :func:`convert`'s own layout does not need); returns the plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(dataset_id, num_processes=processes, check_dataset_integrity=False,
                                clean=True, verbose=False, show_progress_bar=False)
    plans, _ = plan_experiment_dataset(dataset_id)
    if configuration not in plans["configurations"]:
        raise ValueError(f"nnU-Net planned {sorted(plans['configurations'])} for this data, not {configuration!r}")
    preprocess_dataset(dataset_id, PLANS, (configuration,), (processes,), show_progress_bar=False)
    return plans


def budget_trainer_class() -> type:
    """nnU-Net's trainer with its schedule length fitted to a deadline (built lazily: needs nnunetv2)."""
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        """Times a first epoch of a few iterations, then fits epochs x iterations to the deadline.

        Everything else (data loading, augmentation, SGD, loss, deep supervision, checkpoints) is the
        base class's. ``deadline`` (on ``clock``) and ``reserve`` are set by :meth:`set_budget`: the
        base class records its ``__init__`` arguments for checkpoints, so the signature stays its own.
        """

        probe_warmup = 2  # untimed first iterations (allocations, compilation)
        probe_timed = 5

        def set_budget(self, deadline: float, reserve: Callable[[Any], float],
                       clock: Callable[[], float] = time.perf_counter) -> None:
            """Train until ``deadline``, leaving ``reserve(self)`` seconds (timed after the first epoch)
            for prediction."""
            self.deadline, self.reserve, self.clock = deadline, reserve, clock
            self.fitted: dict[str, Any] = {}

        def run_training(self) -> None:
            self.on_train_start()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs, times = [], []
            for i in range(self.probe_warmup + self.probe_timed):
                t0 = self.clock()
                outputs.append(self.train_step(next(self.dataloader_train)))
                took = self.clock() - t0
                if i >= self.probe_warmup:
                    times.append(took)
                if probe_done(len(times), self.probe_timed, self.clock(), took, self.deadline):
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs, val_times = [], []
                for _ in range(2):  # the first warms up; one only when the deadline has passed
                    t0 = self.clock()
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                    val_times.append(self.clock() - t0)
                    if self.clock() > self.deadline:
                        break
                self.on_validation_epoch_end(val_outputs)
            t0 = self.clock()
            self.on_epoch_end()
            epoch_s = self.clock() - t0
            train_s, val_s = float(np.median(times)), val_times[-1]
            # the prediction reserve costs a timed prediction: only worth it when an epoch could fit without it
            timed_reserve = fit_schedule(self.deadline - self.clock(), train_s, val_s, epoch_s).epochs > 0
            reserve = self.reserve(self) if timed_reserve else 0.0
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
            left = self.deadline - self.clock() - reserve
            plan = fit_schedule(left, train_s, val_s, epoch_s)
            self.num_epochs = 1 + plan.epochs
            self.num_iterations_per_epoch = plan.iterations
            self.num_val_iterations_per_epoch = plan.val_iterations
            self.lr_scheduler = PolyLRScheduler(self.optimizer, self.initial_lr, self.num_epochs)
            self.fitted = {**asdict(plan), "train_s": train_s, "val_s": val_s, "epoch_s": epoch_s,
                           "reserve_s": reserve, "reserve_timed": timed_reserve, "probe_iterations": len(outputs)}
            self.print_to_log_file(f"budget: {self.fitted}")
            iterations, epoch_took, took = len(outputs), 0.0, []
            while self.current_epoch < self.num_epochs:
                if self.clock() + epoch_took > self.deadline - reserve:  # a slower machine than timed
                    self.fitted["stopped_at_epoch"] = self.current_epoch
                    break
                t0 = self.clock()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = [self.train_step(next(self.dataloader_train))
                           for _ in range(self.num_iterations_per_epoch)]
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    self.on_validation_epoch_end([self.validation_step(next(self.dataloader_val))
                                                  for _ in range(self.num_val_iterations_per_epoch)])
                self.on_epoch_end()
                iterations += len(outputs)
                epoch_took = self.clock() - t0
                took.append(epoch_took)
                # the timing epoch's first iterations run slower than the rest: fit the remaining epochs to the
                # fitted epochs' own mean time, so the run ends at the deadline rather than minutes short of it
                self.num_epochs = self.current_epoch + refit_epochs(self.deadline - reserve - self.clock(), took)
                self.lr_scheduler.max_steps = self.num_epochs  # the poly schedule still ends with the run
            self.fitted.update(epochs_run=self.current_epoch, iterations_run=iterations, epochs_refit=self.num_epochs - 1)
            self.on_train_end()

    return BudgetTrainer


def train(dataset_id: int, deadline: float, reserve: Callable[[Any], float], device: str = "cpu",
          clock: Callable[[], float] = time.perf_counter, configuration: str = "2d") -> Any:
    """Train nnU-Net's ``configuration`` on fold "all" until ``deadline``; returns the trainer."""
    import multiprocessing

    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    if device == "cpu":  # as nnUNetv2_train sets the threads
        torch.set_num_threads(multiprocessing.cpu_count())
    else:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    base = join(nnUNet_preprocessed, convert_id_to_dataset_name(dataset_id))
    plans = load_json(join(base, PLANS + ".json"))
    plans["continue_training"] = False
    trainer = budget_trainer_class()(plans=plans, configuration=configuration, fold=FOLD,
                                     dataset_json=load_json(join(base, "dataset.json")), device=torch.device(device))
    trainer.set_budget(deadline, reserve, clock)
    trainer.run_training()
    return trainer


def predictor_for(trainer: Any, weights: dict | None = None) -> Any:
    """nnUNetPredictor with its defaults (step 0.5, Gaussian, mirroring) around the trainer's network
    (deep supervision off), with ``weights`` (default: the network's current ones)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer.set_deep_supervision_enabled(False)
    network = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile'd on CUDA: the module
    network.eval()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=trainer.device.type == "cuda",  # CUDA only
                                device=trainer.device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    params = weights if weights is not None else {k: v.detach().clone() for k, v in network.state_dict().items()}
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, [params],
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    return predictor


def time_first_prediction(trainer: Any, files: list[str]) -> float:
    """Seconds nnU-Net's predictor takes for one case (``files``: its channel files), in this process,
    read by the reader its plans name (NaturalImage2DIO for images, SimpleITKIO for volumes)."""
    t0 = time.perf_counter()
    image, props = trainer.plans_manager.image_reader_writer_class().read_images(files)
    predictor_for(trainer).predict_single_npy_array(image, props)
    seconds = time.perf_counter() - t0
    trainer.network.train()
    return seconds


def predict(trainer: Any, images: Path, out: Path, processes: int = 0) -> None:
    """nnUNetPredictor on ``images`` with the weights of the trainer's ``checkpoint_final.pth``.

    ``processes=0`` is its sequential mode (``nnUNetv2_predict -npp 0 -nps 0``), the choice on a CPU:
    preprocessing and export workers would compete for the cores the network runs on.
    """
    import torch

    out.mkdir(parents=True, exist_ok=True)  # the sequential mode writes its arguments there first
    final = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    predictor = predictor_for(trainer, final["network_weights"])
    if processes == 0:
        predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=False, overwrite=True)
    else:
        predictor.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=processes,
                                     num_processes_segmentation_export=processes)


def default_configuration(volumes: bool) -> str:
    """``3d_fullres`` for a volume folder, ``2d`` for an image folder."""
    return "3d_fullres" if volumes else "2d"


def run(data: str, budget: float, work: Path, device: str = "cpu", configuration: str | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Raw data to scored predictions within ``budget`` seconds (conversion, planning, preprocessing,
    training and prediction all count). ``configuration``: nnU-Net's (default :func:`default_configuration`);
    ``seed``: our validation split's, as ``unetkit train --seed`` draws it."""
    t_start = time.perf_counter()
    deadline = t_start + budget
    set_paths(work)
    from unetkit.data import get_datasets

    train_ds, val = get_datasets(data, seed=seed)
    if val is None:
        raise ValueError(f"{data} has no validation split to predict")
    volumes = is_volume_set(train_ds)
    configuration = configuration or default_configuration(volumes)
    allowed = CONFIGURATIONS if volumes else ("2d",)
    if configuration not in allowed:
        raise ValueError(f"configuration {configuration!r} for {'a volume' if volumes else 'an image'} folder; "
                         f"choose one of {', '.join(allowed)}")
    folder, dataset_json = (convert_volumes if volumes else convert)(train_ds, val, work / "nnUNet_raw", data)
    t_converted = time.perf_counter()
    processes = min(2, os.cpu_count() or 1)
    plans = plan_and_preprocess(DATASET_ID, configuration, processes)
    t_planned = time.perf_counter()
    patch = plans["configurations"][configuration]["patch_size"]
    if volumes:
        shapes = [preprocessed_shape(s, sp, plans, configuration) for s, sp in case_geometry(val)]
    else:
        shapes = [val.image_size(i) for i in range(len(val))]
    first = sorted(str(p) for p in (folder / "imagesTs").glob(f"ts_0000_*{dataset_json['file_ending']}"))
    trainer = train(DATASET_ID, deadline,
                    lambda t: prediction_seconds(shapes, patch, time_first_prediction(t, first)), device,
                    configuration=configuration)
    t_trained = time.perf_counter()
    predict(trainer, folder / "imagesTs", work / "predictions", 0 if device == "cpu" else processes)
    t_done = time.perf_counter()
    if volumes:
        result = score_volumes(work / "predictions", val, dataset_json["file_ending"])
    else:
        result = score(work / "predictions", val, dataset_json["file_ending"])
    t_scored = time.perf_counter()
    result.update(seconds=round(t_done - t_start, 1), budget_s=budget, device=device, configuration=configuration,
                  seed=seed, patch=list(patch), spacing=list(plans["configurations"][configuration]["spacing"]),
                  batch=int(trainer.batch_size),
                  steps=trainer.fitted.get("iterations_run"), schedule=trainer.fitted,
                  time={"convert": round(t_converted - t_start, 1), "plan_preprocess": round(t_planned - t_converted, 1),
                        "train": round(t_trained - t_planned, 1), "predict": round(t_done - t_trained, 1),
                        "score": round(t_scored - t_done, 1)})
    return result


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    p = argparse.ArgumentParser(description="nnU-Net v2 under a wall-time budget, scored by unetkit's metrics.")
    p.add_argument("--data", required=True, help="a unetkit dataset folder or built-in name")
    p.add_argument("--budget", type=float, default=180.0, help="seconds from raw data to predictions")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--configuration", choices=CONFIGURATIONS,
                   help="nnU-Net's configuration (default: 3d_fullres for a volume folder, 2d for images)")
    p.add_argument("--seed", type=int, default=0, help="our validation split's seed (unetkit train --seed)")
    p.add_argument("--work", type=Path, help="folder for nnU-Net's raw/preprocessed/results (default: a temp one)")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="unetkit-nnunet-"))
    result = run(args.data, args.budget, work, args.device, args.configuration, args.seed)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
