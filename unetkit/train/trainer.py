"""The training loop: :func:`fit` trains a UNet from a :class:`TrainConfig` and writes a run directory.

One process or many (DDP under torchrun): every rank trains on its shard of each epoch, validation is
sharded without repeats and merged by all-reducing the confusion matrix, and only rank 0 writes files.
The run directory holds ``config.yaml``, ``metrics.csv``, ``curves.png``, ``samples/epoch_XXX.png``,
``last.pt`` and ``best.pt`` (by validation mIoU), and at the end ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..checkpoint import DataInfo, read_checkpoint, save_checkpoint
from ..data import AugmentConfig, SegmentationDataset, get_datasets
from ..evaluate import EvalResult, evaluate
from ..losses import DeepSupervisionLoss, build_loss
from ..models import UNet
from ..viz import sample_panel
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .report import curves_png, png_bytes, save_png, write_metrics_csv, write_report

#: Seconds between redraws of ``curves.png`` during a run (drawing costs about 0.2 s; the demo's epochs
#: take about 1 s). It is always redrawn at the end.
CURVES_EVERY_S = 10.0


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss became NaN); the message says what to change."""


@dataclass
class RunResult:
    """What :func:`fit` returns: where the run is and how it ended."""

    run_dir: Path
    best_miou: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    final: EvalResult | None
    stopped_early: bool = False


# --------------------------------------------------------------------------- building blocks
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain numbers (``torch.load(weights_only=True)``-safe)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (``auto``/``off``/``fp16``/``bf16``) on ``device``, or ``None`` for fp32.

    ``auto`` is bf16 on CUDA GPUs that support it, fp16 on older ones, and fp32 on the CPU: bf16 autocast
    on a CPU without native bf16 instructions runs >100x slower, so it is only used when asked for.
    """
    if amp not in ("auto", "off", "fp16", "bf16"):
        raise ValueError(f"amp must be auto, off, fp16 or bf16, not {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use --amp off (or bf16 on a CPU with native bf16)")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if amp == "fp16" else torch.bfloat16


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adam, adamw or sgd, not {cfg.optimizer!r}")


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """``plateau`` (on val mIoU, stepped per epoch) or ``cosine``/``poly``/``none`` (stepped per optimizer
    step, after a linear warm-up of ``warmup_epochs``)."""
    name = cfg.scheduler.lower()
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                          patience=cfg.plateau_patience)
    if name not in ("cosine", "poly", "none"):
        raise ValueError(f"scheduler must be plateau, cosine, poly or none, not {cfg.scheduler!r}")
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
        if name == "poly":
            return max(0.0, 1 - t) ** 0.9
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def augment_config(cfg: TrainConfig) -> AugmentConfig | None:
    if not cfg.augment:
        return None
    return AugmentConfig(hflip=cfg.hflip, vflip=cfg.vflip, rotate=cfg.rotate, scale=cfg.scale,
                         elastic=cfg.elastic, color_jitter=cfg.color_jitter, crop_size=cfg.patch_size)


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _unwrap(model: nn.Module) -> UNet:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds a run's state; :meth:`run` trains epoch by epoch. Most users call :func:`fit`."""

    def __init__(self, cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        ckpt = None
        if resume is not None:  # the saved config, except that cfg.epochs may extend the run
            ckpt = read_checkpoint(Path(resume) / "last.pt" if Path(resume).is_dir() else resume)
            saved = TrainConfig.from_dict(ckpt["config"])
            if cfg is not None:
                saved.epochs = cfg.epochs
            cfg = saved
            cfg.out = str(Path(ckpt["path"]).parent)
        cfg = cfg or TrainConfig()
        # Interim: the previous fixed defaults until the planner decides them.
        cfg.epochs = cfg.epochs or 120
        cfg.batch_size = cfg.batch_size or 4
        cfg.loss = cfg.loss or "ce+dice"
        if cfg.model.base_channels is None:
            cfg.model = cfg.model.replace(base_channels=16)
        self.dist: DistInfo = init_distributed(cfg.device)
        self.progress = progress
        self._log = log
        self.cfg = cfg
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        dev = self.dist.device

        # Data first: bad input fails here, before anything is written.
        norm = {}
        if ckpt is not None:
            norm = {"mean": ckpt["data"]["mean"], "std": ckpt["data"]["std"]}
        self.train_ds, val_ds = get_datasets(
            cfg.data, augment=augment_config(cfg), num_classes=cfg.num_classes, in_channels=cfg.in_channels,
            ignore_index=cfg.ignore_index, val_fraction=cfg.val_fraction, seed=cfg.seed, **norm,
            **cfg.data_options)
        if val_ds is None:
            raise ValueError(f"{cfg.data}: no validation data; add val/images + val/masks or set val_fraction > 0")
        self.val_ds: SegmentationDataset = val_ds
        ds = self.train_ds

        model = UNet(cfg.model.replace(num_classes=ds.num_classes, in_channels=ds.in_channels))
        if model.encoder.mean is not None and ckpt is None:  # pretrained encoder: its normalisation
            for d in (self.train_ds, self.val_ds):
                d.set_normalization(model.encoder.mean, model.encoder.std)
        self.data_info = DataInfo.from_dataset(self.train_ds)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        if cfg.sync_bn and self.dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(dev)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        if self.dist.enabled:
            self.model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

        self.eval_loss = build_loss(cfg.loss, ds.num_classes, cfg.ignore_index, cfg.class_weights)
        self.loss = DeepSupervisionLoss(self.eval_loss) if cfg.model.deep_supervision else self.eval_loss
        self.amp_dtype = resolve_amp(cfg.amp, dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        workers = cfg.num_workers if cfg.num_workers is not None else (0 if dev.type == "cpu" else 4)
        self.sampler = DistributedSampler(ds, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                          shuffle=True, seed=cfg.seed)
        self.loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                                 drop_last=len(ds) // self.dist.world_size > cfg.batch_size)
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        self.optimizer = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)

        self.history: list[dict[str, Any]] = []
        self.best_miou, self.best_epoch, self.start_epoch = -1.0, 0, 0
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.history = list(ckpt["history"])
            self.best_miou, self.best_epoch = float(ckpt["best_miou"]), int(ckpt["best_epoch"])
            self.start_epoch = int(ckpt["epoch"])
            if self.dist.is_main:
                set_rng_state(ckpt["rng"])
        self.run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        self._curves_written = -math.inf
        n = len(self.val_ds)
        self.sample_idx = sorted({round(i * (n - 1) / max(1, cfg.samples - 1)) for i in range(cfg.samples)}) \
            if cfg.samples > 0 else []

    # ----------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dev = self.dist.device.type
        return torch.autocast(dev, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {"model": _unwrap(self.model).state_dict(), "model_config": _unwrap(self.model).config.to_dict(),
                "data": self.data_info.to_dict(), "config": self.cfg.to_dict(), "epoch": epoch,
                "best_miou": self.best_miou, "best_epoch": self.best_epoch, "history": self.history,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state()}

    def describe(self) -> str:
        cfg, ds, w = self.cfg, self.train_ds, self.dist.world_size
        m = _unwrap(self.model)
        params = sum(p.numel() for p in m.parameters())
        amp = "fp32" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")
        return (f"data {cfg.data}: {len(ds)} train / {len(self.val_ds)} val images, {ds.num_classes} classes, "
                f"{ds.in_channels} channel(s)\nmodel UNet({m.config.encoder}, base {m.config.base_channels}, depth {m.config.depth})"
                f": {params / 1e6:.2f}M parameters on {self.dist.device} ({amp})"
                f"{f', {w} processes' if w > 1 else ''}\nglobal batch {cfg.batch_size * w * cfg.grad_accum} "
                f"(= {cfg.batch_size}/process x {w} x {cfg.grad_accum} accumulation), lr {cfg.lr:g} "
                f"{cfg.optimizer} + {cfg.scheduler}, loss {cfg.loss}, {cfg.epochs} epochs\nrun directory {self.run_dir}")

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> float:
        cfg, dev = self.cfg, self.dist.device
        self.model.train()
        self.sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64, device=dev)  # loss sum, batches
        n = len(self.loader)
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        for step, (images, masks) in enumerate(bar):
            images = images.to(dev, non_blocking=True)
            masks = masks.to(dev, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            boundary = (step + 1) % cfg.grad_accum == 0 or step + 1 == n
            no_sync = self.model.no_sync() if self.dist.enabled and not boundary else contextlib.nullcontext()
            with no_sync:
                with self._autocast():
                    out = self.model(images)
                loss = self.loss(out, masks)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            if boundary:
                if cfg.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step()
            total[0] += loss.detach().double()
            total[1] += 1
            if step % 10 == 0 or step + 1 == n:  # the only host syncs: every 10 steps
                mean = float(total[0] / total[1])
                if not math.isfinite(mean):
                    raise TrainingError(
                        f"the training loss became {mean} at epoch {epoch + 1}, step {step + 1}; the last good "
                        f"checkpoint is {self.run_dir / 'last.pt'}; lower --lr or set --grad-clip, then "
                        f"resume with --resume {self.run_dir}")
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        all_reduce_sum(total)
        return float(total[0] / total[1])

    def validate(self, boundary: bool = False) -> EvalResult:
        """Evaluate on the validation split (sharded across ranks, merged exactly)."""
        if self.dist.enabled:  # evaluate rank 0's BatchNorm statistics, the ones the checkpoint holds
            import torch.distributed as dist

            for buf in _unwrap(self.model).buffers():
                dist.broadcast(buf, 0)
        return evaluate(_unwrap(self.model), self.val_ds, num_classes=self.train_ds.num_classes,
                        ignore_index=self.cfg.ignore_index, loss_fn=self.eval_loss, boundary=boundary,
                        batch_size=max(1, self.cfg.batch_size * 2), device=self.dist.device,
                        class_names=self.train_ds.class_names, autocast_dtype=self.amp_dtype)

    @torch.inference_mode()
    def sample_png(self) -> np.ndarray | None:
        """``image | truth | prediction`` rows for a fixed set of validation images."""
        if not self.sample_idx:
            return None
        model = _unwrap(self.model)
        was = model.training
        model.eval()
        imgs, truths, preds = [], [], []
        for i in self.sample_idx:
            image, mask = self.val_ds[i]
            logits = model(image[None].to(self.dist.device)).float()
            preds.append(logits.argmax(1)[0].cpu())
            imgs.append(self.val_ds.denormalize(image))
            truths.append(mask)
        model.train(was)
        return sample_panel(imgs, truths, preds, self.train_ds.class_colors, min_size=256)

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        cfg = self.cfg
        if self.dist.is_main:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.yaml",
                         lambda tmp: tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        self.log(self.describe())
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch} (best val mIoU {self.best_miou:.4f})")
        stopped_early = False
        t_run = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            try:
                train_loss = self.train_epoch(epoch)
            except KeyboardInterrupt:
                self.log(f"interrupted in epoch {epoch + 1}; continue with: unetkit train --resume {self.run_dir}")
                raise
            val = self.validate()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(val.miou)
            row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val.loss or 0.0, 6),
                   "val_miou": round(val.miou, 6), "val_dice": round(val.mdice, 6),
                   "val_pixel_accuracy": round(val.pixel_accuracy, 6),
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
            self.history.append(row)
            improved = val.miou > self.best_miou
            if improved:
                self.best_miou, self.best_epoch = val.miou, epoch + 1
            if self.dist.is_main:
                state = self.checkpoint_state(epoch + 1)
                save_checkpoint(state, self.run_dir / "last.pt")
                if improved:
                    save_checkpoint(state, self.run_dir / "best.pt")
                write_metrics_csv(self.history, self.run_dir / "metrics.csv")
                if time.monotonic() - self._curves_written >= CURVES_EVERY_S:
                    self.write_curves()
                panel = self.sample_png()
                if panel is not None:
                    save_png(panel, self.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png")
                self.log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {train_loss:.4f}  val loss "
                         f"{val.loss:.4f}  val mIoU {val.miou:.4f}  Dice {val.mdice:.4f}  "
                         f"({row['seconds']:.1f}s){'  *best' if improved else ''}")
            if cfg.early_stopping and epoch + 1 - self.best_epoch >= cfg.early_stopping:
                self.log(f"early stopping: no better val mIoU for {cfg.early_stopping} epochs")
                stopped_early = True
                break
        final = self.finish(time.perf_counter() - t_run)
        return RunResult(run_dir=self.run_dir, best_miou=self.best_miou, best_epoch=self.best_epoch,
                         epochs_run=len(self.history), history=self.history, final=final,
                         stopped_early=stopped_early)

    def write_curves(self) -> None:
        """Redraw ``curves.png`` (about 0.2 s, so :meth:`run` does it at most every ``CURVES_EVERY_S``)."""
        atomic_write(self.run_dir / "curves.png", lambda tmp: tmp.write_bytes(curves_png(self.history)))
        self._curves_written = time.monotonic()

    def finish(self, seconds: float) -> EvalResult | None:
        """Evaluate the best checkpoint (with Boundary F1) and write ``report.html`` and ``metrics.json``."""
        best = self.run_dir / "best.pt"
        if self.dist.is_main and self.history:
            self.write_curves()
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written best.pt
        if not best.is_file():
            return None
        _unwrap(self.model).load_state_dict(torch.load(best, map_location=self.dist.device,
                                                       weights_only=True)["model"])
        result = self.validate(boundary=self.cfg.boundary_f1)
        if self.dist.is_main:
            panel = self.sample_png()
            samples = png_bytes(panel) if panel is not None else None
            facts = {"data": self.cfg.data, "best epoch": f"{self.best_epoch} of {len(self.history)}",
                     "training time": f"{seconds / 60:.1f} min (this session)",
                     "model": self.describe().splitlines()[1].removeprefix("model ")}
            write_report(self.run_dir / "report.html", title=f"unetkit run {self.run_dir.name}", result=result,
                         history=self.history, samples_png=samples, config=self.cfg.to_dict(), facts=facts)
            atomic_write(self.run_dir / "metrics.json",
                         lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=2)))
        return result


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] = print) -> RunResult:
    """Train a UNet as ``cfg`` says (default: the ``ct-chest`` demo) and return the run's outcome.

    ``resume``: a run directory (or its ``last.pt``) to continue; its saved config is used, except that
    ``cfg.epochs`` (when ``cfg`` is given) may extend the run.
    """
    return Trainer(cfg, resume=resume, progress=progress, log=log).run()
