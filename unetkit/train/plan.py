"""The plan: training choices derived from the data's fingerprint, each with its one-line reason.

nnU-Net showed that most of a segmentation recipe follows from a few facts about the data; this module
writes down our version of those rules for 2D images:

* **normalisation**: ImageNet statistics for a pretrained encoder; for CT volumes, clipping to the 0.5-99.5
  percentiles of the Hounsfield units inside the labels, then z-score with their mean and std (nnU-Net's CT
  scheme: the window follows the structures being segmented, not the air around the patient); percentile clipping (0.5-99.5) plus
  z-score for 16-bit images and for float images outside [0, 1] (sensor and scanner ranges with outliers);
  z-score with the data set's mean and std otherwise (8-bit, or floats already scaled to [0, 1]).
* **patch size and batch**: a step holds about ``TARGET_PIXELS`` patch pixels of the device in about
  ``BATCH`` patches: the patch is the median image size, shrunk (keeping its aspect) to at most
  ``TARGET_PIXELS / BATCH`` pixels, rounded up to a multiple of the network's stride. Measured on the
  development suite under a fixed time budget, many smaller patches beat a few whole images (docs/
  benchmarks.md). Memory per step is bounded by the patch, whatever the largest image.
* **depth**: as many stages as keep the bottleneck at least ``MIN_BOTTLENECK`` pixels (at most 5, the
  paper's); **width**: 16 on a CPU, 32 on a GPU.
* **batch**: ``TARGET_PIXELS`` over the patch's area (2..64), at most a quarter of an epoch's patches.
* **foreground sampling**: a third of the patches centred on a foreground pixel when patches are smaller
  than the images (half when a class covers under 1 % of the pixels); none when a patch holds a whole image.
* **loss**: CE + Dice (BCE + Dice for one output channel); no class weights: the Dice term weighs classes
  equally and foreground sampling shows rare classes often.
* **length**: 120 epochs (an epoch covers every training image's area once), at least 2,000 and at most
  25,000 steps, within a time budget (``--time``; 30 min on a CPU and 4 h on a GPU when not given).

Every choice given in the :class:`TrainConfig` (flag or ``--config``) wins over the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.fingerprint import Fingerprint
from ..data.normalization import choose_normalization
from ..data.preprocess import Normalization
from ..models.config import UNetConfig
from ..models.encoders import encoder_normalisation
from .config import TrainConfig, parse_duration
from .memory import check_plan_size

#: Patch pixels per training step, per device type (the CPU value: what the demo's 4 x 128 x 128 costs).
TARGET_PIXELS = {"cpu": 4 * 128 * 128, "cuda": 16 * 256 * 256}
#: Patches per step the patch size is planned for (so the patch area is at most TARGET_PIXELS / BATCH).
BATCH = 16
#: Plain-encoder width per device type (measured: narrower and longer wins on CPU under a time budget).
BASE_CHANNELS = {"cpu": 16, "cuda": 32}
#: Default time budget per device type when neither --time nor --epochs is given.
DEFAULT_BUDGET_S = {"cpu": 30 * 60.0, "cuda": 4 * 3600.0}
MIN_BOTTLENECK = 4
MAX_DEPTH = 5
EPOCHS = 120
MIN_STEPS, MAX_STEPS = 2000, 25_000
RARE_CLASS = 0.01
#: Validation is scheduled to cost about this share of the training compute.
VAL_SHARE = 0.1


@dataclass
class Plan:
    """The resolved choices of a run (``plan.yaml``); ``reasons`` says why, one line per choice."""

    normalization: str
    norm: Normalization
    patch_size: tuple[int, int]
    batch_size: int
    depth: int | None
    base_channels: int | None
    foreground_fraction: float
    loss: str
    class_weights: list[float] | None
    epochs: int | None  # exact epochs (given), else None: the length is planned in steps
    max_steps: int | None  # the planned length before any time budget (None: the budget decides)
    time_budget_s: float | None
    samples_per_epoch: int
    reasons: dict[str, str] = field(default_factory=dict)
    volume: dict[str, Any] | None = None  # volumes: VolumeSettings.to_dict() (slice axis, context, spacing)
    val_every: int | None = None  # validate every N epochs (and always at the end)
    augment: str | None = None  # what augmentation training applies (its reason in reasons["augment"])
    spatial_dims: int = 2  # 3: a 3D UNet on volume patches (patch_size (D, H, W)); see train/plan3d.py
    strides: list[list[int]] | None = None  # 3D: per-stage pool strides (D, H, W)
    kernel_sizes: list[list[int]] | None = None  # 3D: per-stage conv kernel sizes
    norm_layer: str | None = None  # 3D: the network's normalisation layers (instance)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.samples_per_epoch, self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {"normalization": self.normalization, "norm": self.norm.to_dict(),
                "patch_size": list(self.patch_size), "batch_size": self.batch_size, "depth": self.depth,
                "base_channels": self.base_channels, "foreground_fraction": self.foreground_fraction,
                "loss": self.loss, "class_weights": self.class_weights, "epochs": self.epochs,
                "max_steps": self.max_steps, "time_budget_s": self.time_budget_s,
                "samples_per_epoch": self.samples_per_epoch, "reasons": dict(self.reasons),
                "volume": self.volume, "val_every": self.val_every, "augment": self.augment,
                "spatial_dims": self.spatial_dims, "strides": self.strides, "kernel_sizes": self.kernel_sizes,
                "norm_layer": self.norm_layer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["norm"] = Normalization.from_dict(d["norm"])
        d["patch_size"] = tuple(int(v) for v in d["patch_size"])
        return cls(**d)

    def table(self) -> str:
        """The choices with their reasons, for ``unetkit plan`` and the start of ``unetkit train``."""
        norm = self.normalization + (f" (clip {_clip_text(self.norm)})" if self.norm.clip else "")
        if self.epochs:
            length = f"{self.epochs} epochs"
        elif self.max_steps:
            length = (f"{self.max_steps} steps ({self.max_steps / self.steps_per_epoch:.0f} epochs of "
                      f"{self.steps_per_epoch})")
        else:
            length = "the steps that fit"
        if self.time_budget_s:
            length += f", within {format_duration(self.time_budget_s)}"
        rows = [("normalisation", norm), ("patch size", "x".join(map(str, self.patch_size))),
                ("batch size", str(self.batch_size)), ("depth", str(self.depth or "encoder's")),
                ("width", str(self.base_channels or "encoder's")),
                ("foreground patches", f"{self.foreground_fraction:.2f}"), ("loss", self.loss),
                ("class weights", "none" if not self.class_weights else
                 " ".join(f"{w:.2f}" for w in self.class_weights)), ("length", length)]
        keys = ["normalization", "patch_size", "batch_size", "depth", "base_channels", "foreground_fraction",
                "loss", "class_weights", "length"]
        if self.val_every is not None:
            rows.append(("validation", f"every {self.val_every} epoch(s) and at the end"))
            keys.append("val_every")
        if self.augment is not None:
            rows.append(("augmentation", self.augment))
            keys.append("augment")
        if self.volume is not None:
            from ..data.volumes import VolumeSettings

            network = ("3D UNet on volume patches" if self.spatial_dims == 3 else
                       "2D UNet on slices" + (" with context" if self.volume.get("context") else ""))
            rows.insert(0, ("network", network))
            keys.insert(0, "spatial_dims")
            rows.insert(1, ("slices", VolumeSettings.from_dict(self.volume).describe()))
            keys.insert(1, "volume")
        if self.norm_layer is not None:
            rows.append(("norm layers", self.norm_layer))
            keys.append("norm_layer")
        w1 = max(len(r[0]) for r in rows)
        w2 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w1}}  {b:<{w2}}  {self.reasons.get(k, '')}".rstrip()
                         for (a, b), k in zip(rows, keys))


def _clip_text(norm: Normalization) -> str:
    assert norm.clip is not None
    return ", ".join(f"{lo:.4g}..{hi:.4g}" for lo, hi in norm.clip)


def format_duration(seconds: float) -> str:
    """``90s``, ``10m``, ``2.5h``: the units ``--time`` takes."""
    if seconds >= 7200:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    if seconds >= 120:
        return f"{seconds / 60:.1f}m".replace(".0m", "m")
    return f"{seconds:.0f}s"


def steps_per_epoch(samples: int, batch: int) -> int:
    """Optimizer steps in an epoch of ``samples`` patches: full batches only, at least one."""
    return max(1, samples // batch)


def patches_per_epoch(sizes: list[tuple[int, int]], patch: tuple[int, int]) -> int:
    """Patches that cover every image's area once (at least one per image)."""
    area = patch[0] * patch[1]
    return sum(max(1, math.ceil(h * w / area)) for h, w in sizes)


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def _plan_patch(median: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    h, w = max(1, median[0]), max(1, median[1])
    if h * w > max_pixels:  # shrink, keeping the aspect ratio, but never beyond the image on an axis
        f = math.sqrt(max_pixels / (h * w))
        h, w = max(1, int(h * f)), max(1, int(w * f))
    return h, w


def _depth_for(side: int) -> int:
    """Stages that keep the bottleneck (reduction ``2**(depth-1)``) at least ``MIN_BOTTLENECK`` pixels."""
    return max(2, min(MAX_DEPTH, int(math.floor(math.log2(max(side, 1) / MIN_BOTTLENECK))) + 1))


def make_plan(fp: Fingerprint, cfg: TrainConfig, device: torch.device | str = "cpu",
              num_classes: int | None = None) -> Plan:
    """The plan for training ``cfg`` on data fingerprinted as ``fp`` on ``device``; ``cfg``'s values win.

    ``num_classes``: the model's output channels (1 for a binary model read through a sigmoid; default:
    the fingerprint's classes).
    """
    dev = "cuda" if torch.device(device).type == "cuda" else "cpu"
    why: dict[str, str] = {}
    model = cfg.model
    plain = model.encoder == "plain"

    # Normalisation: the one rule, from the fingerprint and the encoder's weights.
    weights = encoder_normalisation(model.encoder, model.encoder_weights, fp.in_channels)
    scheme, norm, why["normalization"] = choose_normalization(fp, cfg.normalization, weights)

    # Patch, depth, stride.
    stats = fp.size_stats()
    if cfg.patch_size is not None:
        patch = tuple(cfg.patch_size)
        why["patch_size"] = "given"
    else:
        limit = TARGET_PIXELS[dev] // BATCH
        patch = _plan_patch(stats["median"], limit)
        shrunk = patch[0] * patch[1] < stats["median"][0] * stats["median"][1]
        why["patch_size"] = (f"median image {stats['median'][0]}x{stats['median'][1]}"
                             + (f", shrunk to {limit} pixels so that a step holds about {BATCH} patches"
                                if shrunk else "") + ", rounded up to the network's stride")
    if model.depth is not None:
        depth: int | None = model.depth
        why["depth"] = "given"
    elif plain:
        depth = _depth_for(min(patch))
        why["depth"] = f"bottleneck keeps >= {MIN_BOTTLENECK} pixels of the {min(patch)}-pixel patch side"
    else:
        depth = None
        why["depth"] = f"all stages of {model.encoder}"
    stride = 2 ** ((depth or MAX_DEPTH) - 1) if plain else 32
    if cfg.patch_size is None:
        patch = (_round_up(patch[0], stride), _round_up(patch[1], stride))
    patch = (int(patch[0]), int(patch[1]))
    if not plain:
        base = model.base_channels
        why["base_channels"] = f"set by {model.encoder}"
    elif model.base_channels is not None:
        base = model.base_channels
        why["base_channels"] = "given"
    else:
        base = BASE_CHANNELS[dev]
        why["base_channels"] = (f"{base} on a {dev.upper()}: a narrower network trained longer scored higher "
                                "within the same time (docs/training.md)")

    # Batch.
    patches = patches_per_epoch(fp.sizes, patch)
    if cfg.batch_size is not None:
        batch = cfg.batch_size
        why["batch_size"] = "given"
    else:
        by_pixels = max(2, min(64, round(TARGET_PIXELS[dev] / (patch[0] * patch[1]))))
        batch = max(2, min(by_pixels, patches // 4))
        why["batch_size"] = (f"about {TARGET_PIXELS[dev]} patch pixels per step on a {dev.upper()}" if
                             batch == by_pixels else f"a quarter of the {patches} patches of an epoch, so an "
                             "epoch has several steps")

    # Foreground sampling.
    whole = patch[0] >= stats["max"][0] and patch[1] >= stats["max"][1]
    rarest = min(fp.class_frequency[1:], default=1.0) if fp.num_classes > 1 else 1.0
    if cfg.foreground_fraction is not None:
        fg = cfg.foreground_fraction
        why["foreground_fraction"] = "given"
    elif whole:
        fg = 0.0
        why["foreground_fraction"] = "every patch holds a whole image"
    elif rarest < RARE_CLASS:
        fg = 0.5
        why["foreground_fraction"] = (f"a class covers {100 * rarest:.2f} % of the pixels (< 1 %): half the "
                                      "patches centred on a foreground pixel")
    else:
        fg = 1 / 3
        why["foreground_fraction"] = "a third of the patches centred on a foreground pixel (nnU-Net's share)"

    # Loss and class weights.
    if cfg.loss is not None:
        loss = cfg.loss
        why["loss"] = "given"
    else:
        loss = "bce+dice" if (num_classes or fp.num_classes) == 1 else "ce+dice"
        why["loss"] = "cross-entropy for calibrated pixels + Dice for overlap"
    weights = cfg.class_weights
    if weights is not None:
        why["class_weights"] = "given"
    else:
        why["class_weights"] = (f"rarest class {100 * rarest:.2f} % of the pixels: the Dice term weighs classes "
                                "equally" + (", foreground patches show it often" if fg > 0 else ""))

    augment, why["augment"] = plan_augmentation(cfg, fp)
    samples = max(patches, batch)
    max_steps, budget, why["length"] = plan_length(cfg, samples, batch, dev)
    return Plan(normalization=scheme, norm=norm, patch_size=patch, batch_size=batch, depth=depth,
                base_channels=base, foreground_fraction=fg, loss=loss, class_weights=weights,
                epochs=cfg.epochs, max_steps=max_steps, time_budget_s=budget, samples_per_epoch=samples,
                reasons=why, augment=augment)


#: Words in class names that mean a side: a horizontal flip would swap such classes.
SIDE_WORDS = ("left", "right")


def plan_augmentation(cfg: TrainConfig, fp: Fingerprint) -> tuple[str, str]:
    """``(what training's augmentation does, why)``.

    The default is brightness/contrast jitter only: on the development suite, rotation and zoom lowered the
    demo's best mIoU (0.921 -> 0.902, thin ribs most), and flips, which raised the reslices' (ct-coronal,
    ct-sagittal), lowered the axial demo's and the digit mosaics' (docs/training.md). nnU-Net mirrors,
    rotates and scales by default; those stay a flag away.
    """
    if not cfg.augment:
        return "none", "given (--no-augment)"
    parts = [f"{name} {value:g}" for name, value in (("hflip", cfg.hflip), ("vflip", cfg.vflip)) if value]
    affine = ([f"rotate {cfg.rotate:g}"] if cfg.rotate else []) + (
        [f"zoom {cfg.scale[0]:g}-{cfg.scale[1]:g}"] if cfg.scale is not None else [])
    if affine and cfg.affine_p < 1:
        affine[-1] += f" on {cfg.affine_p:.0%} of patches"
    parts += affine + ([f"elastic {cfg.elastic:g}"] if cfg.elastic else [])
    geometric = bool(parts)
    if cfg.color_jitter:
        parts.append(f"brightness/contrast {cfg.color_jitter:g}")
    what = ", ".join(parts) or "none"
    if geometric:
        return what, "given"
    sided = [n for n in fp.class_names if any(w in n.lower().split() for w in SIDE_WORDS)]
    why = ("no flips or rotations: " + (f"classes with a side ({', '.join(sided[:3])}) would swap; " if sided else "")
           + "rotation and zoom cost thin structures on the development suite (--hflip, --rotate, --scale to "
           "turn them on)")
    return what, why


def plan_length(cfg: TrainConfig, samples: int, batch: int, device: torch.device | str = "cpu"
                ) -> tuple[int | None, float | None, str]:
    """``(max_steps, time budget in seconds, reason)`` for epochs of ``samples`` patches in batches of ``batch``.

    ``max_steps`` is ``None`` when only the budget bounds the run. Used by :func:`make_plan` and when a
    resumed run is extended with new ``epochs`` or ``time``.
    """
    dev = "cuda" if torch.device(device).type == "cuda" else "cpu"
    spe = steps_per_epoch(samples, batch)
    budget = parse_duration(cfg.time) if cfg.time is not None else None
    if cfg.epochs is not None:
        return cfg.epochs * spe, budget, "given" + (" (and a time budget)" if budget else "")
    if budget is not None:
        return None, budget, "as many steps as the time budget holds, measured on the first steps"
    budget = DEFAULT_BUDGET_S[dev]
    return (min(MAX_STEPS, max(MIN_STEPS, EPOCHS * spe)), budget,
            f"{EPOCHS} epochs of {samples} patches, kept within {MIN_STEPS}-{MAX_STEPS} steps and "
            f"{format_duration(budget)} (--time or --epochs to change)")


def validation_windows(val: Any, patch: tuple[int, ...]) -> int:
    """Forward passes of one validation: sliding windows of the patch size (50 % overlap) per image (case)."""
    from ..inference import tile_starts

    total = 0
    for i in range(len(val)):
        total += math.prod(len(tile_starts(max(n, p), p, 0.5)) for n, p in zip(val.image_size(i), patch))
    return total


def plan_validation(cfg: TrainConfig, val: Any, plan: Plan) -> tuple[int, str]:
    """``(val_every, reason)``: validate as often as keeps validation near ``VAL_SHARE`` of the training
    compute, counted in patch forward passes (a training patch costs about 3: forward and backward).

    Planned from the data, not timed, so the epochs a run validates on (and so its best checkpoint) do not
    depend on how busy the machine was.
    """
    if cfg.val_every is not None:
        return cfg.val_every, "given"
    windows = validation_windows(val, plan.patch_size)
    epoch_patches = plan.steps_per_epoch * plan.batch_size
    every = max(1, math.ceil(windows / (VAL_SHARE * 3 * epoch_patches)))
    return every, (f"one validation ({windows} windows) costs about {100 * VAL_SHARE:.0f} % of "
                   f"{every} epoch(s) of training ({epoch_patches} patches, forward and backward)")


def model_config(cfg: TrainConfig, plan: Plan, train: Any) -> UNetConfig:
    """The model a run builds: ``cfg.model`` with the planned depth and width and the data's classes and
    channels (``cfg`` itself is left as given)."""
    model = cfg.model.replace(depth=plan.depth, base_channels=plan.base_channels, num_classes=train.num_classes,
                              in_channels=train.in_channels)
    if plan.spatial_dims == 3:
        model = model.replace(spatial_dims=3, norm=plan.norm_layer or model.norm,
                              strides=tuple(tuple(s) for s in plan.strides or ()) or None,
                              kernel_sizes=tuple(tuple(k) for k in plan.kernel_sizes or ()) or None)
    return model


def load_data(cfg: TrainConfig, norm: Normalization | None = None, augment: Any = None,
              volume: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Read and check ``cfg.data``: ``(train, val)`` (``val`` is ``None`` when there is none), normalised by
    ``norm`` (``None``: the identity, until a plan says otherwise); ``volume``: a plan's volume settings."""
    from ..data import open_datasets
    from ..data.volumes import VolumeSettings

    return open_datasets(cfg.data, seed=cfg.seed, normalization=norm, augment=augment,
                         volume=None if volume is None else VolumeSettings.from_dict(volume))


def load_and_plan(cfg: TrainConfig, device: torch.device | str = "cpu", augment: Any = None
                  ) -> tuple[Any, Any, Fingerprint, Plan]:
    """Read and check ``cfg.data``, fingerprint its training split and plan: ``(train, val, fp, plan)``.

    Both datasets come back normalised as the plan says (``val`` is ``None`` when there is none); ``cfg`` is
    not changed.
    """
    from ..data.fingerprint import fingerprint

    train, val = load_data(cfg, augment=augment)
    fp = fingerprint(train)
    plan = make_plan(fp, cfg, device, num_classes=train.num_classes)
    if val is not None:
        plan.val_every, plan.reasons["val_every"] = plan_validation(cfg, val, plan)
    settings = getattr(train, "settings", None)
    if settings is not None:  # a volume folder: how its scans became slices is part of the plan
        from .plan3d import as_planned, choose_spatial_dims, plan_3d

        dims, plan.reasons["spatial_dims"] = choose_spatial_dims(cfg, train, device)
        thinnest = min(c.shape[0] for c in train.cases + (val.cases if val is not None else []))
        if 2 * settings.context + 1 > thinnest:
            raise ValueError(f"--context {settings.context} stacks {2 * settings.context + 1} slices, but the "
                             f"thinnest case has {thinnest}; use --context {max(0, (thinnest - 1) // 2)} or less")
        plan.volume = settings.to_dict()
        plan.reasons["volume"] = train.spacing_reason
        if dims == 3:
            train, val = as_planned(train, val, 3, augment)
            plan = plan_3d(plan, cfg, train, device, plan.reasons["spatial_dims"])
            if val is not None:
                plan.val_every, plan.reasons["val_every"] = plan_validation(cfg, val, plan)
    elif cfg.spatial_dims == 3 or cfg.model.spatial_dims == 3:
        raise ValueError(f"{cfg.data.source}: --spatial-dims 3 trains on volumes (NIfTI, NRRD, MetaImage, DICOM "
                         "folders); this data holds 2D images")
    check_plan_size(plan, cfg, fp, device)  # refuse sizes that cannot fit before anything is allocated
    for d in (train, val):
        if d is not None:
            d.set_normalization(plan.norm)
    return train, val, fp, plan
