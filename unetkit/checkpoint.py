"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled beyond
that), so loading it never runs code:

``model``
    the model's state dict.
``model_config``
    :attr:`unetkit.UNet.config`, enough to rebuild the architecture with :meth:`UNet.from_config`.
``data``
    what inference needs to know about the data: ``num_classes``, ``in_channels``, ``class_names``,
    ``class_colors``, the normalisation (``mean``, ``std``, ``clip``), ``ignore_index`` and the training
    ``patch_size`` (the tile size inference uses, so it sees what training saw).
``plan``
    the training plan (:class:`unetkit.train.plan.Plan`) with the reason for each choice.
``config``
    the training options (:class:`unetkit.train.TrainConfig` without ``model``, which is ``model_config``).
``epoch``, ``best_miou``, ``history``, ``run``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``
    training state (present in checkpoints written by :mod:`unetkit.train`), so ``--resume`` continues
    a run exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .checkpoint_bounds import check_checkpoint
from .data.preprocess import Normalization
from .data.volumes import VolumeSettings
from .models import UNet


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict weights-only; a run directory means its ``best.pt`` (else ``last.pt``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise CheckpointError(f"{p}: no best.pt or last.pt in this run directory; pass a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; pass a .pt file or a run directory")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear message
        raise CheckpointError(f"{p}: not a readable unetkit checkpoint ({type(e).__name__}); "
                              "pass a file written by 'unetkit train'") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{p}: not a unetkit checkpoint (no model/model_config); "
                              "pass a file written by 'unetkit train'")
    ckpt["path"] = str(p)
    return ckpt


@dataclass
class DataInfo:
    """What a model needs to know about its data at inference time."""

    num_classes: int
    in_channels: int
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ignore_index: int = 255
    clip: tuple[tuple[float, float], ...] | None = None
    patch_size: tuple[int, int] | None = None
    volume: VolumeSettings | None = None  # models trained on volumes: how scans become slices

    @classmethod
    def from_dataset(cls, ds: Any, patch_size: tuple[int, int] | None = None) -> DataInfo:
        """Take the fields from a :class:`unetkit.data.SegmentationDataset` (and the training patch size)."""
        norm = ds.normalization
        return cls(ds.num_classes, ds.in_channels, list(ds.class_names), [tuple(c) for c in ds.class_colors],
                   norm.mean, norm.std, ds.ignore_index, norm.clip,
                   None if patch_size is None else (int(patch_size[0]), int(patch_size[1])),
                   getattr(ds, "settings", None))

    @property
    def normalization(self) -> Normalization:
        """The preprocessing the model was trained with."""
        return Normalization(self.mean, self.std, self.clip)

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels,
                "class_names": list(self.class_names), "class_colors": [list(c) for c in self.class_colors],
                "mean": list(self.mean), "std": list(self.std), "ignore_index": self.ignore_index,
                "clip": None if self.clip is None else [list(c) for c in self.clip],
                "patch_size": None if self.patch_size is None else list(self.patch_size),
                "volume": None if self.volume is None else self.volume.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        clip, patch, volume = d.get("clip"), d.get("patch_size"), d.get("volume")
        return cls(int(d["num_classes"]), int(d["in_channels"]), list(d["class_names"]),
                   [tuple(int(v) for v in c) for c in d["class_colors"]],
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                   int(d.get("ignore_index", 255)),
                   None if clip is None else tuple((float(lo), float(hi)) for lo, hi in clip),
                   None if patch is None else (int(patch[0]), int(patch[1])),
                   None if volume is None else VolumeSettings.from_dict(volume))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, DataInfo, dict[str, Any]]:
    """Rebuild the model of a checkpoint (file or run directory) in eval mode.

    Returns ``(model, data_info, checkpoint)``. No weights are fetched: the architecture comes from
    ``model_config`` and every tensor from the file.
    """
    ckpt = read_checkpoint(path)
    check_checkpoint(ckpt)  # bounds and self-consistency before anything is built
    try:
        model = UNet.from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt['path']}: model weights do not match its config ({e}); "
                              "the file is damaged or from another version") from e
    return model.to(device).eval(), DataInfo.from_dict(ckpt["data"]), ckpt


def checkpoint_datasets(ckpt: dict[str, Any], data: str | None = None) -> tuple[Any, Any]:
    """``(train, val)`` datasets for a checkpoint, normalised as it was trained, never augmented.

    ``data`` defaults to the dataset the checkpoint was trained on (with the same split seed and
    options); a different folder or name is read with the checkpoint's classes and channels.
    """
    from .data import get_datasets

    cfg = ckpt.get("config", {})
    info = DataInfo.from_dict(ckpt["data"])
    name = data or cfg.get("data")
    if not name:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: it does not say which data it was trained on; "
                              "pass --data DIR|NAME")
    same = data is None or data == cfg.get("data")
    options = dict(cfg.get("data_options") or {}) if same else {}
    if info.volume is not None:  # slice the scans as the model was trained
        options.update(context=info.volume.context, slice_axis=info.volume.slice_axis,
                       spacing=info.volume.spacing or "native")
        if info.volume.slice_axis is None:
            options.pop("slice_axis")
    train, val = get_datasets(name, mean=info.mean, std=info.std, num_classes=info.num_classes,
                              in_channels=None if info.volume else info.in_channels,
                              ignore_index=info.ignore_index,
                              seed=int(cfg.get("seed", 0)), val_fraction=float(cfg.get("val_fraction", 0.2)),
                              **options)
    for ds in (train, val):
        if ds is not None:
            ds.set_normalization(info.normalization)
    return train, val
