"""Training configuration: one dataclass, read from YAML, overridden by CLI flags, completed by the plan.

Options left at ``None`` where the help says "planned" are decided from the data by
:func:`unetkit.plan.make_plan` (patch and batch size, network depth and width, normalisation, foreground
sampling, loss, class weights, training length, validation schedule); any value given here wins over the
plan. The model's options are one :class:`unetkit.UNetConfig` under ``model``. Help text and allowed
values live in each field's metadata, so the ``unetkit train`` flags are generated from this file.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..data.config import field_names as data_field_names
from ..device import DEVICE_HELP
from ..fields import check_value, option
from ..models.config import UNetConfig
from ..models.config import field_names as model_field_names
from ..yamlfile import read_yaml
from .checks import check_training_values

NORMALIZATIONS = ("zscore", "percentile", "ct", "imagenet")
LOSSES = ("ce", "dice", "ce+dice", "bce", "bce+dice", "focal", "tversky")
#: Model fields that come from the data, not from model flags (``num_classes``, ``in_channels``).
DATA_MODEL_FIELDS = ("num_classes", "in_channels")
#: The ``--help`` groups: the first field of each group and its title, in field order.
GROUPS = {"model": "model", "patch_size": "plan (decided from the data unless given)",
          "augment": "augmentation (training only)", "lr": "optimisation",
          "seed": "hardware and reproducibility", "out": "outputs"}


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory and in every checkpoint.

    The data's options are one :class:`unetkit.data.DataConfig` under ``data`` (a bare string is its
    ``source``), the model's one :class:`unetkit.UNetConfig` under ``model``. Augmentation fields go to
    :class:`unetkit.data.AugmentConfig` (``augment=False`` turns them all off).
    """

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the data's options"})
    # model
    model: UNetConfig = field(default_factory=UNetConfig, metadata={"help": "the model's options"})
    # plan: None = decided from the data
    patch_size: tuple[int, ...] | None = option(None, "training patch size, one or two numbers (H W), three for "
                                                        "a 3D network (D H W) (default: planned)")
    batch_size: int | None = option(None, "patches per step per process (default: planned)")
    spatial_dims: int | None = option(None, "volumes: 2 (a 2D network on slices, 2.5D with --context) or 3 (a 3D "
                                            "UNet on volume patches) (default: planned from the cases' spacing "
                                            "and shape)", (None, 2, 3))
    normalization: str | None = option(None, "zscore (dataset mean/std), percentile (clip to the 0.5-99.5 "
                                             "percentiles, then z-score), ct (the same over the voxels inside "
                                             "the labels, as nnU-Net) or imagenet (default: planned)",
                                       (None, *NORMALIZATIONS))
    foreground_fraction: float | None = option(None, "share of patches centred on a foreground pixel "
                                                     "(default: planned)")
    time: str | None = option(None, "time budget for the whole run, e.g. 90s, 10m, 2h (default: planned "
                                    "length, capped at 30m on a CPU)")
    epochs: int | None = option(None, "train this many epochs exactly (an epoch covers every training "
                                      "image's area once) instead of a planned length")
    val_every: int | None = option(None, "validate every N epochs, and always at the end (default: planned)")
    loss: str | None = option(None, "loss (default: planned; ce+dice, or bce+dice for one output channel)",
                              (None, *LOSSES))
    class_weights: list[float] | None = option(None, "per-class loss weights (CE weight / focal alpha / BCE "
                                                     "pos_weight) (default: planned)")
    # augmentation (training split only)
    augment: bool = option(True, "turn all augmentation on/off")
    hflip: float = option(0.0, "probability of a horizontal flip (off by default: it swaps left and right "
                               "anatomy)")
    vflip: float = option(0.0, "probability of a vertical flip")
    rotate: float = option(0.0, "maximum rotation in degrees")
    scale: tuple[float, float] | None = option(None, "zoom range as two factors, e.g. 0.9 1.1 (default: no zoom)")
    affine_p: float = option(1.0, "share of training patches that get the rotation and zoom of --rotate/--scale "
                                  "(nnU-Net: 0.2)")
    elastic: float = option(0.0, "probability of an elastic deformation")
    color_jitter: float = option(0.1, "brightness/contrast jitter strength")
    # optimisation
    lr: float = option(3e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay")
    optimizer: str = option("adamw", "optimizer", ("adamw", "adam", "sgd"))
    scheduler: str = option("cosine", "cosine, poly, plateau (halve on a val-mIoU plateau) or none",
                            ("cosine", "poly", "plateau", "none"))
    warmup_epochs: int = option(1, "linear warm-up epochs (cosine/poly)")
    plateau_patience: int = option(5, "validations without improvement before the plateau scheduler halves "
                                      "the lr")
    grad_clip: float | None = option(1.0, "clip the gradient norm to this (0 disables)")
    grad_accum: int = option(1, "accumulate gradients over this many batches")
    amp: str = option("auto", "mixed precision: auto (bf16 autocast on CUDA GPUs that support it and on CPUs "
                              "that run bf16 natively, fp16 on older GPUs, else fp32), off (fp32), fp16 (CUDA) "
                              "or bf16",
                      ("auto", "off", "fp16", "bf16"))
    early_stopping: int | None = option(None, "stop after this many validations without a better val mIoU")
    # reproducibility and hardware
    seed: int = option(0, "random seed")
    deterministic: bool = option(False, "deterministic kernels (slower on GPU)")
    device: str = option("auto", DEVICE_HELP)
    num_workers: int | None = option(None, "data-loading processes (default: 0 on CPU, 4 on GPU)")
    channels_last: bool = option(True, "NHWC memory layout (measured faster for training on CPU, as on recent "
                                       "GPUs)")
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across processes (DDP)")
    # outputs
    out: str | None = option(None, "run directory (default: runs/<timestamp>)")
    samples: int = option(4, "validation images drawn in samples/epoch_XXX.png")
    boundary_f1: bool = option(True, "compute Boundary F1 for the final report")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = UNetConfig.from_dict(self.model)
        if isinstance(self.data, (str, dict)):
            self.data = DataConfig.from_dict(self.data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["data"] = self.data.to_dict()
        for name in ("scale", "patch_size"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a mapping (e.g. a YAML file), checking every option's type and range.

        Model and data options may be given flat (``encoder: vgg16``, ``num_classes: 3``, as flags are) or
        under ``model:`` / ``data:``; ``data: DIR`` is the data's source (configs and checkpoints of earlier
        versions wrote the data options flat). Errors name the option and ``where`` (the file).
        """
        d = dict(d)
        if "crop_size" in d:  # configs of earlier versions: a random crop is now a training patch
            crop = d.pop("crop_size")
            d.setdefault("patch_size", crop)
        model = d.pop("model", None) or {}
        if not isinstance(model, dict):
            raise ValueError(f"{where}: 'model' must be a mapping of model options")
        data = d.pop("data", None)
        data = {} if data is None else ({"source": data} if isinstance(data, str) else data)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: 'data' must be a folder, a built-in name or a mapping of data options")
        model, data = dict(model), dict(data)
        if "data_options" in d:
            data["options"] = d.pop("data_options")
        for name in data_field_names():
            if name in d and name != "source":
                data[name] = d.pop(name)
        own = {f.name for f in dataclasses.fields(cls)}
        for name in model_field_names():
            if name in d and name not in DATA_MODEL_FIELDS and name not in own:
                model[name] = d.pop(name)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; see 'unetkit train --help'")
        hints = typing.get_type_hints(cls)
        values = {k: check_value(k, v, hints[k], where) for k, v in d.items()}
        mhints = typing.get_type_hints(UNetConfig)
        model = {k: check_value(k, v, mhints[k], where) if k in mhints else v for k, v in model.items()}
        values["model"] = UNetConfig.from_dict(model, where)
        values["data"] = DataConfig.from_dict(data, where)
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"{p}: config file not found; pass an existing YAML file to --config")
        d = read_yaml(p) or {}  # bounded: no aliases, at most 1 MB
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a mapping of option: value")
        return cls.from_dict(d, where=str(p))

    def validate(self, where: str = "config") -> None:
        """Range checks that types alone do not catch; errors name the option and ``where``."""
        self.data.validate(where)
        check_training_values(self, where)  # NaN/inf and ranges of the non-data options
        positive = ("batch_size", "epochs", "val_every", "grad_accum")
        for name in positive:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{where}: {name} must be >= 1, not {v}")
        for name in ("hflip", "vflip", "elastic", "affine_p", "foreground_fraction"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{where}: {name} is a probability in [0, 1], not {v}")
        for name in ("lr", "weight_decay", "rotate", "color_jitter", "warmup_epochs", "plateau_patience",
                     "samples"):
            if getattr(self, name) < 0 or (name == "lr" and self.lr == 0):
                raise ValueError(f"{where}: {name} must be {'> 0' if name == 'lr' else '>= 0'}, "
                                 f"not {getattr(self, name)}")
        if self.patch_size is not None:
            ps = tuple(int(v) for v in self.patch_size)
            if len(ps) == 1:
                ps = (ps[0], ps[0])
            if len(ps) not in (2, 3) or min(ps) < 1:
                raise ValueError(f"{where}: patch_size takes one, two or three (3D: D H W) positive numbers, not "
                                 f"{self.patch_size}")
            self.patch_size = ps  # type: ignore[assignment]
        if self.time is not None:
            parse_duration(self.time, where)
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(f"{where}: early_stopping must be >= 1, not {self.early_stopping}")
        if self.scale is not None and (len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]):
            raise ValueError(f"{where}: scale takes two numbers 0 < low <= high, not {self.scale}")


def parse_duration(text: str | float | int, where: str = "time") -> float:
    """Seconds in ``"90s"``, ``"10m"``, ``"2h"``, ``"1h30m"`` or a plain number of seconds."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", s).strip():
            raise ValueError(f"{where}: time {text!r} is not a duration; write e.g. 90s, 10m, 2h or 1h30m")
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if seconds <= 0:
        raise ValueError(f"{where}: time must be positive, not {text!r}")
    return seconds
