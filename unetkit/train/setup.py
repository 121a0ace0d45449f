"""Setting a run up: what :class:`unetkit.train.Trainer` holds before its first step.

In order (the order fixes how random numbers are drawn, so a seeded run repeats exactly): the options
(a resumed run's own, from its ``last.pt``), the data and the plan (from the data's fingerprint, or the
resumed run's), the model, the loss, the training patches and their loader, the optimizer and schedule.
Bad input fails here, before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import read_checkpoint
from ..checkpoint_bounds import check_checkpoint
from ..data import BUILTIN_DATASETS, AugmentConfig, SegmentationDataset
from ..data.fingerprint import Fingerprint
from ..data.patches import PatchDataset
from ..models import UNet
from .config import TrainConfig
from .distributed import DistInfo
from .plan import Plan, load_and_plan, load_data, model_config, plan_length
from .plan3d import as_planned


def augment_config(cfg: TrainConfig) -> AugmentConfig | None:
    """The training split's augmentation (``None`` when ``augment`` is off)."""
    if not cfg.augment:
        return None
    return AugmentConfig(hflip=cfg.hflip, vflip=cfg.vflip, rotate=cfg.rotate, scale=cfg.scale,
                         affine_p=cfg.affine_p, elastic=cfg.elastic, color_jitter=cfg.color_jitter)


def default_run_dir() -> Path:
    """``runs/<timestamp>``; under torchrun ``runs/<run id>``, the same for every process and restart."""
    from datetime import datetime

    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return Path("runs") / run_id
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def elastic_restart_of(cfg: TrainConfig | None) -> Path | None:
    """The run folder to resume when torchrun restarted this job after a failure (``--max-restarts``)."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) < 1:
        return None
    out = Path(cfg.out) if cfg is not None and cfg.out else default_run_dir()
    return out if (out / "last.pt").is_file() else None


def resolve_options(cfg: TrainConfig | None, resume: str | Path | None, log: Callable[[str], None]
                    ) -> tuple[TrainConfig, dict[str, Any] | None]:
    """``(options, checkpoint to resume or None)``: a resumed run keeps its own options, except that
    ``cfg.epochs`` / ``cfg.time`` may extend it; a folder data source is made absolute (so ``--resume`` works
    from any working directory)."""
    restarted = elastic_restart_of(cfg)
    if resume is None and restarted is not None:  # torchrun restarted the job: continue where it was
        resume = restarted
        log(f"restarted by torchrun (restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')}): resuming "
            f"from {restarted / 'last.pt'}")
    ckpt = None
    if resume is not None:
        path = Path(resume)
        if path.is_dir() and not (path / "last.pt").is_file():
            raise ValueError(f"{path}: no last.pt in this folder, so there is nothing to resume; start the run "
                             "without --resume (add --overwrite to reuse the folder)")
        ckpt = read_checkpoint(path / "last.pt" if path.is_dir() else path)
        check_checkpoint(ckpt)  # its config against sane bounds and its own tensors, before anything is built
        if "optimizer" not in ckpt:
            raise ValueError(f"{ckpt['path']}: holds the model but no training state (best.pt does not); resume from "
                             f"{Path(ckpt['path']).parent / 'last.pt'} or the run folder")
        saved = TrainConfig.from_dict({**ckpt["config"], "model": ckpt["model_config"]}, where=ckpt["path"])
        if cfg is not None:
            saved.epochs, saved.time = cfg.epochs or saved.epochs, cfg.time or saved.time
        cfg = saved
        cfg.out = str(Path(ckpt["path"]).parent)
    cfg = cfg or TrainConfig()
    source = cfg.data.source
    if source.lower() not in BUILTIN_DATASETS and Path(source).exists():
        cfg.data.source = str(Path(source).resolve())
    return cfg, ckpt


def data_and_plan(cfg: TrainConfig, ckpt: dict[str, Any] | None, device: torch.device
                  ) -> tuple[SegmentationDataset, SegmentationDataset, Fingerprint | None, Plan]:
    """``(train, val, fingerprint, plan)``: planned from the data, or a resumed run's plan (lengthened when
    ``cfg.epochs`` / ``cfg.time`` ask for more); both splits normalised as the plan says."""
    fp: Fingerprint | None = None
    if ckpt is not None and "plan" in ckpt:
        plan = Plan.from_dict(ckpt["plan"])
        train, val = load_data(cfg, plan.norm, augment_config(cfg), plan.volume)
        train, val = as_planned(train, val, plan.spatial_dims, augment_config(cfg))
        if cfg.epochs is not None or cfg.time is not None:  # a longer run asked for on resume
            plan.max_steps, plan.time_budget_s, plan.reasons["length"] = plan_length(
                cfg, plan.samples_per_epoch, plan.batch_size, device)
            plan.epochs = cfg.epochs
    else:
        train, val, fp, plan = load_and_plan(cfg, device, augment_config(cfg))
    check_run(cfg, plan, train, val)
    assert val is not None
    return train, val, fp, plan


def build_model(cfg: TrainConfig, plan: Plan, train: SegmentationDataset, ckpt: dict[str, Any] | None,
                dist: DistInfo) -> tuple[UNet, nn.Module]:
    """``(model, the module to train)``: the planned UNet (a resumed run's weights), SyncBatchNorm and the
    memory layout as asked, wrapped for DDP when several processes train."""
    model = UNet(model_config(cfg, plan, train))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    module: nn.Module = model
    if cfg.sync_bn and dist.enabled:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    module.to(dist.device)
    if channels_last(cfg, plan):
        module.to(memory_format=torch.channels_last)
    if dist.enabled:
        module = DistributedDataParallel(module, device_ids=[dist.device.index] if dist.device.type == "cuda"
                                         else None)
    return model, module


def channels_last(cfg: TrainConfig, plan: Plan) -> bool:
    """Whether training runs in channels_last (asked for, and a 2D network)."""
    return cfg.channels_last and plan.spatial_dims == 2


@dataclass
class Batches:
    """The training patches, their per-process sampler and loader, and the optimizer steps of an epoch."""

    patches: PatchDataset
    sampler: DistributedSampler
    loader: DataLoader
    steps_per_epoch: int


def build_batches(cfg: TrainConfig, plan: Plan, train: SegmentationDataset, dist: DistInfo) -> Batches:
    """Patches of the planned size (a planned share centred on foreground), sharded and batched."""
    dev = dist.device
    patches = PatchDataset(train, plan.patch_size, plan.foreground_fraction, seed=cfg.seed,
                           min_length=plan.batch_size * dist.world_size)
    workers = cfg.num_workers if cfg.num_workers is not None else (0 if dev.type == "cpu" else 4)
    sampler = DistributedSampler(patches, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed)
    per_rank = len(sampler)
    loader = DataLoader(patches, batch_size=plan.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                        drop_last=per_rank > plan.batch_size)
    return Batches(patches, sampler, loader, max(1, len(loader) // cfg.grad_accum))


def check_run(cfg: TrainConfig, plan: Plan, train: SegmentationDataset, val: SegmentationDataset | None) -> None:
    """What ``unetkit train`` would refuse once it builds the run, checked without building it, so that
    ``unetkit plan`` approves only runs that start: a validation split, a loss that fits the classes, one
    class weight per class, a weights file that exists (the architecture: :func:`check_architecture`)."""
    from ..losses import build_loss

    if val is None:
        raise ValueError(f"{cfg.data.source}: no validation data; add val/images + val/masks or set val_fraction > 0 "
                         "(a folder needs at least two images)")
    k = train.num_classes
    if plan.loss.startswith("bce") and k != 1:
        raise ValueError(f"loss {plan.loss} is for a binary model with one output; this data has {k} classes: use "
                         "ce or ce+dice (or --num-classes 1 for 0/255 masks)")
    if plan.class_weights is not None and k > 1 and len(plan.class_weights) != k:
        raise ValueError(f"class_weights has {len(plan.class_weights)} values; this data has {k} classes, so give "
                         f"{k}")
    build_loss(plan.loss, k, cfg.data.ignore_index, plan.class_weights)
    config = model_config(cfg, plan, train)
    if config.encoder_weights not in (None, "imagenet") and not Path(config.encoder_weights).is_file():
        raise ValueError(f"{config.encoder_weights}: encoder weights file not found; pass an existing "
                         ".pth/.safetensors file, imagenet or none to --encoder-weights")


def check_architecture(cfg: TrainConfig, plan: Plan, train: SegmentationDataset) -> None:
    """The planned network built on the meta device (no memory, no weights): an unknown encoder or an
    impossible architecture is refused by ``unetkit plan`` as training would refuse it when it builds the
    model."""
    with torch.device("meta"):
        UNet(model_config(cfg, plan, train).replace(encoder_weights=None))
