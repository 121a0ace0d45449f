"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled beyond
that), so loading it never runs code. Each fact is stored once:

``model``
    the model's state dict.
``model_config``
    :attr:`unetkit.UNet.config`, enough to rebuild the architecture with :meth:`UNet.from_config` (it
    holds ``num_classes`` and ``in_channels``).
``config``
    the training options as given (:class:`unetkit.train.TrainConfig` without ``model``), with the data's
    options (:class:`unetkit.data.DataConfig`) under ``data``.
``plan``
    the training plan (:class:`unetkit.train.plan.Plan`): the normalisation, the training ``patch_size``
    (the tile size inference uses, so it sees what training saw), how volumes were sliced, each choice with
    its reason.
``classes``
    ``names`` and ``colors`` of the classes.
``epoch``, ``best_miou``, ``history``, ``run``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``
    training state, so ``--resume`` continues a run exactly where it stopped (``last.pt`` only: ``best.pt``
    holds what evaluating, predicting and exporting need).

:class:`DataInfo` is the inference-time view assembled from these parts
(:meth:`DataInfo.from_checkpoint`); checkpoints of earlier versions, which stored it whole under ``data``,
load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .checkpoint_bounds import check_checkpoint
from .data.config import DataConfig
from .data.config import field_names as data_field_names
from .data.preprocess import Normalization
from .data.registry import open_datasets, open_test_set
from .data.volume_dataset import as_cases
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
    patch_size: tuple[int, ...] | None = None  # (H, W), or (D, H, W) for a 3D network
    volume: VolumeSettings | None = None  # models trained on volumes: how scans become slices
    flip_axes: tuple[int, ...] | None = None  # axes training flipped (-1 W, -2 H); None: not recorded

    @classmethod
    def from_dataset(cls, ds: Any, patch_size: tuple[int, int] | None = None) -> DataInfo:
        """Take the fields from a :class:`unetkit.data.SegmentationDataset` (and the training patch size)."""
        norm = ds.normalization
        return cls(ds.num_classes, ds.in_channels, list(ds.class_names), [tuple(c) for c in ds.class_colors],
                   norm.mean, norm.std, ds.ignore_index, norm.clip,
                   None if patch_size is None else tuple(int(v) for v in patch_size),
                   getattr(ds, "settings", None))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> DataInfo:
        """The view of a checkpoint's stored parts (or, for earlier versions, its stored ``data``)."""
        if isinstance(ckpt.get("data"), dict):
            return cls.from_dict(ckpt["data"])
        mc, plan, classes = ckpt["model_config"], ckpt["plan"], ckpt["classes"]
        norm = Normalization.from_dict(plan["norm"])
        data = checkpoint_data_config(ckpt)
        volume = plan.get("volume")
        return cls(int(mc["num_classes"]), int(mc["in_channels"]), list(classes["names"]),
                   [tuple(int(v) for v in c) for c in classes["colors"]], norm.mean, norm.std,
                   data.ignore_index, norm.clip, tuple(int(v) for v in plan["patch_size"]),
                   None if volume is None else VolumeSettings.from_dict(volume),
                   trained_flip_axes(ckpt.get("config") or {}))

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
                "volume": None if self.volume is None else self.volume.to_dict(),
                "flip_axes": None if self.flip_axes is None else list(self.flip_axes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        clip, patch, volume, flips = d.get("clip"), d.get("patch_size"), d.get("volume"), d.get("flip_axes")
        return cls(int(d["num_classes"]), int(d["in_channels"]), list(d["class_names"]),
                   [tuple(int(v) for v in c) for c in d["class_colors"]],
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                   int(d.get("ignore_index", 255)),
                   None if clip is None else tuple((float(lo), float(hi)) for lo, hi in clip),
                   None if patch is None else tuple(int(v) for v in patch),
                   None if volume is None else VolumeSettings.from_dict(volume),
                   None if flips is None else tuple(int(v) for v in flips))


def trained_flip_axes(options: dict[str, Any]) -> tuple[int, ...] | None:
    """The spatial axes training flipped its patches along (``-1`` width for ``hflip``, ``-2`` height for
    ``vflip``; 2D and 3D training alike), from the training options as stored; ``None`` when they do not
    say (checkpoints of earlier versions). Test-time augmentation averages over these flips."""
    if "hflip" not in options:
        return None
    if not options.get("augment", True):
        return ()
    return tuple(axis for axis, key in ((-1, "hflip"), (-2, "vflip")) if float(options.get(key) or 0) > 0)


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
    return model.to(device).eval(), DataInfo.from_checkpoint(ckpt), ckpt


def checkpoint_data_config(ckpt: dict[str, Any]) -> DataConfig:
    """The :class:`DataConfig` a checkpoint was trained with (earlier versions stored its options flat)."""
    cfg = ckpt.get("config") or {}
    data = cfg.get("data")
    if isinstance(data, dict):
        return DataConfig.from_dict(data, where=ckpt.get("path", "checkpoint"))
    flat = {k: cfg[k] for k in data_field_names() if k in cfg and k != "source"}
    if "data_options" in cfg:
        flat["options"] = cfg["data_options"]
    return DataConfig.from_dict({**flat, "source": data or ""}, where=ckpt.get("path", "checkpoint"))


#: Data options a trained model fixes: another value would feed it input it was not trained on.
MODEL_BOUND = ("num_classes", "in_channels", "context", "slice_axis", "spacing")


def checkpoint_datasets(ckpt: dict[str, Any], data: str | None = None, **overrides: Any) -> tuple[Any, Any]:
    """``(train, val)`` datasets for a checkpoint, normalised as it was trained, never augmented.

    ``data`` defaults to the dataset the checkpoint was trained on (with the same split seed and
    options); a different folder or name is read with the checkpoint's classes and channels. ``overrides``:
    :class:`DataConfig` fields to change (e.g. ``val_fraction``); those the model fixes (:data:`MODEL_BOUND`)
    must equal the model's.
    """
    spec, kw = checkpoint_data(ckpt, data, **overrides)
    train, val = open_datasets(spec, **kw)
    if _is_3d(ckpt):
        train, val = as_cases(train), (None if val is None else as_cases(val))
    return train, val


def checkpoint_test_set(ckpt: dict[str, Any], data: str | None = None, **overrides: Any) -> Any:
    """Every image of ``data`` (default: the training folder) as one dataset, preprocessed as the checkpoint was
    trained: a test set scored whole."""
    spec, kw = checkpoint_data(ckpt, data, **overrides)
    ds = open_test_set(spec, kw["normalization"], kw["volume"])
    return as_cases(ds) if _is_3d(ckpt) else ds


def _is_3d(ckpt: dict[str, Any]) -> bool:
    """A 3D network, whose samples are whole cases."""
    return int(ckpt["model_config"].get("spatial_dims", 2)) == 3


def checkpoint_data(ckpt: dict[str, Any], data: str | None = None, **overrides: Any
                    ) -> tuple[DataConfig, dict[str, Any]]:
    """``(DataConfig, open_datasets keywords)`` that read ``data`` (default: the training data) as the
    checkpoint's model was trained: its classes, channels, normalisation and volume slicing."""
    where = ckpt.get("path", "checkpoint")
    info = DataInfo.from_checkpoint(ckpt)
    spec = checkpoint_data_config(ckpt)
    if not (data or spec.source):
        raise CheckpointError(f"{where}: it does not say which data it was trained on; pass --data DIR|NAME")
    if data is not None and data != spec.source:  # another data set: the model's classes and channels
        spec = DataConfig(source=data, val_fraction=spec.val_fraction, split_seed=spec.split_seed,
                          ignore_index=spec.ignore_index)
    trained = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    if info.volume is not None:
        trained.update(context=info.volume.context, slice_axis=info.volume.slice_axis, spacing=info.volume.spacing)
    for name in MODEL_BOUND:
        given = overrides.pop(name, None)
        if given is not None and (tuple(given) if name == "spacing" else given) != trained.get(name):
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"{where}: the model was trained with {name} {trained.get(name)}, not {given}; drop "
                                  f"{flag} (a model is applied to data as it was trained)")
    spec = spec.replace(**overrides).replace(num_classes=info.num_classes,
                                             in_channels=None if info.volume else info.in_channels)
    seed = int((ckpt.get("config") or {}).get("seed", 0))
    return spec, {"seed": seed, "normalization": info.normalization, "volume": info.volume}
