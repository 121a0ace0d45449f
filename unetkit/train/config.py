"""Training configuration: one flat dataclass, readable from YAML and overridable by CLI flags.

The defaults are the ``unetkit train`` demo: a compact plain UNet trained from scratch on the embedded
``ct-chest`` CT, tuned to finish in a few minutes on two CPU cores (see the README for what it reaches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory and in every checkpoint.

    ``data_options`` go to the built-in dataset (e.g. ``{"size": 64, "num_samples": 32}`` for ``shapes``).
    Model fields are passed to :class:`unetkit.UNet`; data fields to :func:`unetkit.data.get_datasets`;
    augmentation fields to :class:`unetkit.data.AugmentConfig` (``augment=False`` turns them all off).
    """

    # data
    data: str = "ct-chest"
    num_classes: int | None = None
    in_channels: int | None = None
    ignore_index: int = 255
    val_fraction: float = 0.2
    # model
    encoder: str = "plain"
    encoder_weights: str | None = None
    freeze_encoder: bool = False
    base_channels: int = 16
    depth: int = 5
    upsample: str = "transpose"
    skip: str = "interpolate"
    norm: str = "batch"
    attention: str | None = None
    deep_supervision: bool = False
    multiscale_fusion: bool = False
    # augmentation (training split only)
    augment: bool = True
    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    scale: tuple[float, float] | None = None
    elastic: float = 0.0
    color_jitter: float = 0.1
    crop_size: int | None = None
    # optimisation
    epochs: int = 120
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: int = 1
    plateau_patience: int = 5
    loss: str = "ce+dice"
    class_weights: list[float] | None = None
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    amp: str = "auto"
    early_stopping: int | None = None
    # reproducibility and hardware
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int | None = None
    channels_last: bool = True
    sync_bn: bool = False
    # outputs
    out: str | None = None
    samples: int = 4
    boundary_f1: bool = True
    data_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["scale"] is not None:
            d["scale"] = list(d["scale"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a dict (e.g. a YAML file); unknown keys are an error naming them and the file."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; see 'unetkit train --help'")
        d = dict(d)
        if d.get("scale") is not None:
            d["scale"] = tuple(float(v) for v in d["scale"])
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"{p}: config file not found; pass an existing YAML file to --config")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a mapping of option: value")
        return cls.from_dict(d, where=str(p))

    def model_kwargs(self, num_classes: int, in_channels: int) -> dict[str, Any]:
        return dict(num_classes=num_classes, in_channels=in_channels, encoder=self.encoder,
                    encoder_weights=self.encoder_weights, freeze_encoder=self.freeze_encoder,
                    base_channels=self.base_channels, depth=self.depth, upsample=self.upsample,
                    skip=self.skip, norm=self.norm, attention=self.attention,
                    deep_supervision=self.deep_supervision, multiscale_fusion=self.multiscale_fusion)
