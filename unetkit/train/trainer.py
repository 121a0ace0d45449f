"""The training loop: :func:`fit` trains a UNet from a :class:`TrainConfig` and writes a run directory.

One process or many (DDP under torchrun): every rank trains on its shard of each epoch, validation is
sharded without repeats and merged by all-reducing the confusion matrix, and only rank 0 writes files.
The run directory holds ``config.yaml``, ``metrics.csv``, ``curves.png``, ``samples/epoch_XXX.png``,
``last.pt`` and ``best.pt`` (by validation mIoU), and at the end ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
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

from ..atomic import atomic_write, claim_run_folder
from ..checkpoint import DataInfo, read_checkpoint, save_checkpoint
from ..data import BUILTIN_DATASETS, AugmentConfig, SegmentationDataset
from ..data.base import describe_split
from ..data.fingerprint import Fingerprint
from ..data.patches import PatchDataset
from ..data.preprocess import Normalization
from ..device import describe_amp
from ..evaluate import EvalResult, evaluate
from ..infer import predict
from ..losses import DeepSupervisionLoss, build_loss
from ..models import UNet
from ..timing import synchronize
from ..viz import sample_panel
from .budget import Budget
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .optim import build_optimizer, build_scheduler, resolve_amp, rng_state, seed_everything, set_rng_state
from .plan import Plan, apply_plan, load_and_plan, load_data, plan_length, validation_windows
from .report import (
    TensorBoardLog,
    curves_png,
    png_bytes,
    save_png,
    write_case_csv,
    write_metrics_csv,
    write_report,
)

#: Seconds between redraws of ``curves.png`` during a run, at least: it is redrawn no sooner than
#: ``CURVES_COST_FACTOR`` times its last drawing time, so drawing stays under 2 % of a run (matplotlib takes
#: 0.3-0.8 s a picture on 2 cores; at every 10 s it took 5-8 % of the demo, benchmarks/bench_epoch.py). It is
#: always redrawn at the end.
CURVES_EVERY_S = 30.0
CURVES_COST_FACTOR = 50.0
#: ``last.pt`` and ``best.pt`` are written after the first epoch, at the end, and otherwise at most this often
#: (seconds); a better score in between is kept in memory until then (:meth:`Trainer.write_checkpoints`). A
#: killed run loses at most this much training, and a run that validates and improves often does not
#: serialise two checkpoints and draw a picture each time (4 % of the demo on a CPU, a fifth on a GPU).
CHECKPOINT_EVERY_S = 30.0


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
    steps: int = 0
    time: dict[str, Any] | None = None


# --------------------------------------------------------------------------- building blocks
def augment_config(cfg: TrainConfig) -> AugmentConfig | None:
    if not cfg.augment:
        return None
    return AugmentConfig(hflip=cfg.hflip, vflip=cfg.vflip, rotate=cfg.rotate, scale=cfg.scale,
                         elastic=cfg.elastic, color_jitter=cfg.color_jitter)


def default_run_dir() -> Path:
    """``runs/<timestamp>``; under torchrun ``runs/<run id>``, the same for every process and restart."""
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


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks in place (a no-op in a single process): "any rank says stop"."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _host_copy(obj: Any) -> Any:
    """A copy of a checkpoint state with every tensor copied to host memory (a kept best state must not
    hold a second copy of the weights and optimizer state on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_host_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _unwrap(model: nn.Module) -> UNet:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


# --------------------------------------------------------------------------- the trainer
#: Optimizer steps timed (after one untimed) before a time-budgeted run fixes its length.
PROBE_STEPS = 6
#: Provisional length of a run that only a time budget bounds, until its first steps are timed.
UNBOUNDED_STEPS = 10**9


class Trainer:
    """Holds a run's state; :meth:`run` trains until the planned steps or the time budget are spent.

    ``clock`` (seconds, monotonic) is injectable so tests can check the time budget without waiting.
    Most users call :func:`fit`.
    """

    def __init__(self, cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic, overwrite: bool = False) -> None:
        self.clock = clock
        self.overwrite = overwrite
        t_setup = clock()
        restarted = elastic_restart_of(cfg)
        if resume is None and restarted is not None:  # torchrun restarted the job: continue where it was
            resume = restarted
            log(f"restarted by torchrun (restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')}): resuming "
                f"from {restarted / 'last.pt'}")
        ckpt = None
        if resume is not None:  # the saved config, except that cfg.epochs / cfg.time may extend the run
            path = Path(resume)
            if path.is_dir() and not (path / "last.pt").is_file():
                raise ValueError(f"{path}: no last.pt in this folder, so there is nothing to resume; start the run "
                                 "without --resume (add --overwrite to reuse the folder)")
            ckpt = read_checkpoint(path / "last.pt" if path.is_dir() else path)
            saved = TrainConfig.from_dict({**ckpt["config"], "model": ckpt["model_config"]}, where=ckpt["path"])
            if cfg is not None:
                saved.epochs, saved.time = cfg.epochs or saved.epochs, cfg.time or saved.time
            cfg = saved
            cfg.out = str(Path(ckpt["path"]).parent)
        cfg = cfg or TrainConfig()
        if cfg.data.lower() not in BUILTIN_DATASETS and Path(cfg.data).exists():
            cfg.data = str(Path(cfg.data).resolve())  # so --resume works from any working directory
        self.dist: DistInfo = init_distributed(cfg.device)
        self.progress = progress
        self._log = log
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        dev = self.dist.device

        # Data first: bad input fails here, before anything is written. Then the plan: from the data's
        # fingerprint, or from the checkpoint when resuming.
        self.fingerprint: Fingerprint | None = None
        if ckpt is not None and "plan" in ckpt:
            plan = Plan.from_dict(ckpt["plan"])
            self.train_ds, val_ds = load_data(cfg, plan.norm, augment_config(cfg), plan.volume)
            if cfg.epochs is not None or cfg.time is not None:  # a longer run asked for on resume
                plan.max_steps, plan.time_budget_s, plan.reasons["length"] = plan_length(
                    cfg, plan.samples_per_epoch, plan.batch_size, dev)
                plan.epochs = cfg.epochs
        else:
            self.train_ds, val_ds, self.fingerprint, plan = load_and_plan(cfg, dev, augment_config(cfg))
        if val_ds is None:
            raise ValueError(f"{cfg.data}: no validation data; add val/images + val/masks or set val_fraction > 0")
        self.val_ds: SegmentationDataset = val_ds
        ds = self.train_ds
        self.plan = plan
        self.cfg = cfg = apply_plan(cfg, plan)
        cfg.model = cfg.model.replace(num_classes=ds.num_classes, in_channels=ds.in_channels)

        model = UNet(cfg.model)
        if plan.normalization == "imagenet" and model.encoder.mean is not None and ckpt is None:
            plan.norm = Normalization(model.encoder.mean, model.encoder.std)  # the statistics of its weights
            for d in (self.train_ds, self.val_ds):
                d.set_normalization(plan.norm)
        self.data_info = DataInfo.from_dataset(self.train_ds, plan.patch_size)
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

        self.eval_loss = build_loss(plan.loss, ds.num_classes, cfg.ignore_index, plan.class_weights)
        self.loss = DeepSupervisionLoss(self.eval_loss) if cfg.model.deep_supervision else self.eval_loss
        self.amp_dtype = resolve_amp(cfg.amp, dev, training=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.patches = PatchDataset(ds, plan.patch_size, plan.foreground_fraction, seed=cfg.seed,
                                    min_length=plan.batch_size * self.dist.world_size)
        workers = cfg.num_workers if cfg.num_workers is not None else (0 if dev.type == "cpu" else 4)
        self.sampler = DistributedSampler(self.patches, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                          shuffle=True, seed=cfg.seed)
        per_rank = len(self.sampler)
        self.loader = DataLoader(self.patches, batch_size=plan.batch_size, sampler=self.sampler,
                                 num_workers=workers, pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                                 drop_last=per_rank > plan.batch_size)
        self.steps_per_epoch = max(1, len(self.loader) // cfg.grad_accum)
        self.optimizer = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        self.total_steps = (plan.epochs * self.steps_per_epoch if plan.epochs else
                            plan.max_steps or UNBOUNDED_STEPS)
        self.val_every = cfg.val_every or plan.val_every or 1
        self.scheduler = build_scheduler(cfg, self.optimizer, lambda: self.total_steps,
                                         lambda: min(cfg.warmup_epochs * self.steps_per_epoch,
                                                     self.total_steps // 10 or 1))

        self.history: list[dict[str, Any]] = []
        self.best_miou, self.best_epoch, self.start_epoch, self.step = -1.0, 0, 0, 0
        self.budget = Budget(limit=plan.time_budget_s, clock=clock, start=t_setup)
        self.sized = plan.time_budget_s is None  # the run's length is known (no budget to measure against)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.history = list(ckpt["history"])
            self.best_miou, self.best_epoch = float(ckpt["best_miou"]), int(ckpt["best_epoch"])
            self.start_epoch = int(ckpt["epoch"])
            run = ckpt.get("run", {})
            self.step = int(run.get("step", self.start_epoch * self.steps_per_epoch))
            self.val_every = int(run.get("val_every", self.val_every))
            if run.get("total_steps") and not (cfg.epochs or cfg.time) and run.get("sized"):
                self.total_steps, self.sized = int(run["total_steps"]), True
            saved_time = run.get("time") or {}
            for k in ("setup", "train", "validation", "final", "step_s", "val_s"):
                if k in saved_time:
                    setattr(self.budget, k, saved_time[k])
            self.budget.before = float(saved_time.get("elapsed", 0.0))
            if self.dist.is_main:
                set_rng_state(ckpt["rng"])
        self.run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        self._curves_written, self._curves_cost = -math.inf, 0.0
        self._saved = -math.inf  # the first epoch writes last.pt: a run that fails early can resume
        self._pending_best: tuple[int, dict[str, Any], dict[int, torch.Tensor]] | None = None
        n = len(self.val_ds)
        self.sample_idx = sorted({round(i * (n - 1) / max(1, cfg.samples - 1)) for i in range(cfg.samples)}) \
            if cfg.samples > 0 else []
        self.budget.setup += clock() - t_setup

    # ----------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    def autocast(self) -> contextlib.AbstractContextManager:
        dev = self.dist.device.type
        return torch.autocast(dev, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        m = _unwrap(self.model)
        return {"model": m.state_dict(), "model_config": m.config.to_dict(), "data": self.data_info.to_dict(),
                "config": self.training_options(), "plan": self.plan.to_dict(), "epoch": epoch,
                "best_miou": self.best_miou, "best_epoch": self.best_epoch, "history": self.history,
                "run": {"step": self.step, "total_steps": self.total_steps, "sized": self.sized,
                        "val_every": self.val_every, "time": self.budget.to_dict()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state()}

    def training_options(self) -> dict[str, Any]:
        """The run's options without the model's, which the checkpoint stores once, as ``model_config``."""
        options = self.cfg.to_dict()
        options.pop("model")
        return options

    def describe(self) -> str:
        cfg, ds, w, plan = self.cfg, self.train_ds, self.dist.world_size, self.plan
        m = _unwrap(self.model)
        params = sum(p.numel() for p in m.parameters())
        amp = describe_amp(cfg.amp, self.amp_dtype, self.dist.device, training=True)
        mc = m.config
        width = f", base {mc.base_channels}" if mc.encoder == "plain" else ""
        return (f"data {cfg.data}: {describe_split(ds, self.val_ds)}, {ds.num_classes} classes, "
                f"{ds.in_channels} channel(s)\nmodel UNet({mc.encoder}{width}, depth {mc.depth}): "
                f"{params / 1e6:.2f}M parameters on {self.dist.device} ({amp})"
                f"{f', {w} processes' if w > 1 else ''}\nglobal batch {plan.batch_size * w * cfg.grad_accum} "
                f"(= {plan.batch_size}/process x {w} x {cfg.grad_accum} accumulation) of "
                f"{plan.patch_size[0]}x{plan.patch_size[1]} patches, lr {cfg.lr:g} {cfg.optimizer} + "
                f"{cfg.scheduler}, loss {plan.loss}\nplan:\n  " + plan.table().replace("\n", "\n  ")
                + f"\nrun directory {self.run_dir}")

    def _size_the_run(self, step_s: float) -> None:
        """Fix the run's length from the measured step and validation times and the budget (the validation
        schedule is the plan's, so which epochs are validated does not depend on the machine's load)."""
        dev = self.dist.device
        model = _unwrap(self.model)
        x = torch.zeros(self.plan.batch_size, self.train_ds.in_channels, *self.plan.patch_size, device=dev)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was = model.training
        model.eval()
        with torch.inference_mode(), self.autocast():
            model(x)
            synchronize(dev)
            t0 = self.clock()
            model(x)
            synchronize(dev)
            fwd = (self.clock() - t0) / self.plan.batch_size
        model.train(was)
        val_s = fwd * validation_windows(self.val_ds, self.plan.patch_size) * 1.2 + 0.01 * len(self.val_ds)
        self.budget.step_s, self.budget.val_s = step_s, val_s
        if self.budget.limit is not None:
            left = self.budget.limit - self.budget.elapsed() - self._reserve()
            per_step = step_s + val_s / (self.val_every * self.steps_per_epoch)
            fit_steps = self.step + int(max(0.0, left) / per_step)
            self.total_steps = max(self.step, min(self.total_steps, fit_steps))
        totals = torch.tensor([float(self.total_steps), -float(self.val_every)], device=dev)
        if self.dist.enabled:  # every rank runs the same number of steps: the smallest estimate
            import torch.distributed as dist

            dist.all_reduce(totals, op=dist.ReduceOp.MIN)
        self.total_steps, self.val_every = int(totals[0]), int(-totals[1])
        self.sized = True
        self._sized_at = (self.step, self.budget.elapsed())
        self.log(f"measured {step_s:.3f} s/step and about {val_s:.1f} s per validation: {self.total_steps} steps "
                 f"({self.total_steps / self.steps_per_epoch:.1f} epochs), validating every "
                 f"{self.val_every} epoch(s)")

    def _resize(self) -> None:
        """Refit the remaining steps to the budget from the pace so far (checkpoints and validation included),
        so the learning-rate schedule ends when the time does. Changes under 2 % are ignored."""
        if self.budget.limit is None or not self.sized or not hasattr(self, "_sized_at"):
            return
        step0, t0 = self._sized_at
        if self.step - step0 < 2 * self.steps_per_epoch:
            return
        pace = (self.budget.elapsed() - t0) / (self.step - step0)
        left = self.budget.limit - self.budget.elapsed() - self._reserve()
        cap = self.plan.epochs * self.steps_per_epoch if self.plan.epochs else (self.plan.max_steps or UNBOUNDED_STEPS)
        total = torch.tensor([float(min(cap, self.step + max(0, int(left / pace))))], device=self.dist.device)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(total, op=dist.ReduceOp.MIN)
        new = int(total.item())
        if abs(new - self.total_steps) > 0.02 * self.total_steps:
            self.total_steps = max(new, self.step)

    def _reserve(self) -> float:
        """Seconds kept for the end: the last validation (with Boundary F1) and, when that was not the best
        epoch, the best checkpoint's evaluation, plus the report."""
        return 2.5 * (self.budget.val_s or 0.0) + 2.0

    def _out_of_time(self) -> bool:
        """The budget (less the final evaluation's share) is spent, agreed by every rank."""
        if self.budget.limit is None:
            return False
        late = self.budget.elapsed() >= self.budget.limit - self._reserve()
        flag = torch.tensor([1.0 if late else 0.0], device=self.dist.device)
        all_reduce_max(flag)
        return bool(flag.item())

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> tuple[float, bool]:
        """Train one epoch (or up to the run's last step); return (mean loss, out of time)."""
        cfg, dev = self.cfg, self.dist.device
        self.model.train()
        self.sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64, device=dev)  # loss sum, batches
        n = len(self.loader)
        stop_after = min(n, (self.total_steps - self.step) * cfg.grad_accum)
        bar = tqdm(total=stop_after, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        out_of_time = False
        t0 = self.clock()
        probe_t0 = None
        for i, (images, masks) in enumerate(self.loader):
            images = images.to(dev, non_blocking=True)
            masks = masks.to(dev, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            boundary = (i + 1) % cfg.grad_accum == 0 or i + 1 == n
            no_sync = self.model.no_sync() if self.dist.enabled and not boundary else contextlib.nullcontext()
            with no_sync:
                with self.autocast():
                    out = self.model(images)
                loss = self.loss(out, masks)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            if boundary:
                self.optimizer_step()
            total[0] += loss.detach().double()
            total[1] += 1
            bar.update(1)
            if not self.sized and boundary:  # time the first steps, then fix the run's length
                if probe_t0 is None:
                    synchronize(dev)
                    probe_t0, probe_step = self.clock(), self.step
                elif self.step - probe_step >= PROBE_STEPS or i + 1 == n:
                    synchronize(dev)
                    self._size_the_run((self.clock() - probe_t0) / (self.step - probe_step))
            last = i + 1 >= stop_after or self.step >= self.total_steps
            if i % 10 == 0 or last or i + 1 == n:  # the only host syncs: every 10 steps
                mean = float(total[0] / total[1])
                if not math.isfinite(mean):
                    raise TrainingError(
                        f"the training loss became {mean} at epoch {epoch + 1}, step {self.step}; the last good "
                        f"checkpoint is {self.run_dir / 'last.pt'}; lower --lr (now {cfg.lr:g}) or set "
                        f"--grad-clip, then resume with --resume {self.run_dir}")
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if not last and self._out_of_time():
                    out_of_time = True
                    break
            if last:
                break
        bar.close()
        self.budget.train += self.clock() - t0
        all_reduce_sum(total)
        return float(total[0] / max(total[1], 1)), out_of_time

    def optimizer_step(self) -> None:
        """One optimizer step on the accumulated gradients: clip (``grad_clip``), step through the GradScaler,
        zero the gradients, advance a per-step learning-rate schedule and the step count."""
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        self.step += 1

    def validate(self, boundary: bool = False) -> EvalResult:
        """Evaluate on whole validation images (sharded across ranks, merged exactly)."""
        if self.dist.enabled:  # evaluate rank 0's BatchNorm statistics, the ones the checkpoint holds
            import torch.distributed as dist

            for buf in _unwrap(self.model).buffers():
                dist.broadcast(buf, 0)
        return evaluate(_unwrap(self.model), self.val_ds, num_classes=self.train_ds.num_classes,
                        ignore_index=self.cfg.ignore_index, loss_fn=self.eval_loss, boundary=boundary,
                        batch_size=max(1, self.plan.batch_size), device=self.dist.device,
                        class_names=self.train_ds.class_names, autocast_dtype=self.amp_dtype,
                        tile_size=self.plan.patch_size, keep=self.sample_idx)

    @torch.inference_mode()
    def sample_png(self, kept: dict[int, torch.Tensor] | None = None, title: str | None = None) -> np.ndarray | None:
        """``image | truth | prediction`` rows for a fixed set of validation images.

        ``kept``: predictions the validation already made (``EvalResult.kept``); others are predicted here.
        """
        if not self.sample_idx:
            return None
        model = _unwrap(self.model)
        imgs, truths, preds = [], [], []
        for i in self.sample_idx:
            image, mask = self.val_ds[i]
            labels = (kept or {}).get(i)
            if labels is None:
                labels = predict(model, image.to(self.dist.device), tile_size=self.plan.patch_size,
                                 pad_value=self.plan.norm.pad_value(), autocast_dtype=self.amp_dtype).cpu()
            img = self.val_ds.denormalize(image)
            settings = getattr(self.val_ds, "settings", None)
            if settings is not None and settings.context:  # 2.5D: show the slice itself, not its neighbours
                img = img[settings.context:settings.context + 1]
            imgs.append(img)
            truths.append(mask)
            preds.append(labels)
        return sample_panel(imgs, truths, preds, self.train_ds.class_colors, min_size=256, max_size=512,
                            names=self.train_ds.class_names, title=title)

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        """Train, evaluate the best checkpoint, write the report; the run folder is locked meanwhile."""
        lock = None
        if self.dist.is_main:
            lock = claim_run_folder(self.run_dir, resume=self.start_epoch > 0, overwrite=self.overwrite)
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> RunResult:
        cfg = self.cfg
        self.tensorboard = TensorBoardLog(self.run_dir) if self.dist.is_main else None
        if self.dist.is_main and self.sample_idx:
            (self.run_dir / "samples").mkdir(exist_ok=True)
            atomic_write(self.run_dir / "config.yaml",
                         lambda tmp: tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
            if self.fingerprint is not None:
                plan_doc = {"fingerprint": self.fingerprint.to_dict(), "plan": self.plan.to_dict()}
                atomic_write(self.run_dir / "plan.yaml",
                             lambda tmp: tmp.write_text(yaml.safe_dump(plan_doc, sort_keys=False)))
        self.log(self.describe())
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch}, step {self.step} (best val mIoU "
                     f"{self.best_miou:.4f})")
        try:
            stopped_early = self._epochs(self.start_epoch)
        except KeyboardInterrupt:
            if self.dist.is_main:
                self.write_checkpoints(None)  # a better state not yet on disk, with last.pt rolled back to it
            self.log(f"interrupted in epoch {len(self.history) + 1}; continue with: unetkit train --resume "
                     f"{self.run_dir}")
            raise
        final = self.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.log(self.budget.describe(self.step, sum("val_miou" in r for r in self.history)))
        return RunResult(run_dir=self.run_dir, best_miou=self.best_miou, best_epoch=self.best_epoch,
                         epochs_run=len(self.history), history=self.history, final=final,
                         stopped_early=stopped_early, steps=self.step, time=self.budget.to_dict())

    def _epochs(self, epoch: int) -> bool:
        """Train epoch after epoch until the steps or the time run out; return whether it stopped early."""
        cfg = self.cfg
        stopped_early = False
        while self.step < self.total_steps:
            t0 = self.clock()
            train_loss, out_of_time = self.train_epoch(epoch)
            finished = out_of_time or self.step >= self.total_steps
            row: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "train_loss": round(train_loss, 6)}
            improved = False
            if finished or (epoch + 1) % self.val_every == 0:
                t_val = self.clock()
                val = self.validate(boundary=finished and cfg.boundary_f1)  # the last one may be the report's
                self.budget.validation += self.clock() - t_val
                self._last_validation = (epoch + 1, val)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val.miou)
                row.update(val_loss=round(val.loss or 0.0, 6), val_miou=round(val.miou, 6),
                           val_dice=round(val.mdice, 6), val_pixel_accuracy=round(val.pixel_accuracy, 6))
                improved = val.miou > self.best_miou
                if improved:
                    self.best_miou, self.best_epoch = val.miou, epoch + 1
            row.update(lr=self.optimizer.param_groups[0]["lr"], seconds=round(self.clock() - t0, 2))
            self.history.append(row)
            epoch += 1
            if self.dist.is_main:
                if improved:  # kept in host memory; written with last.pt, so the two always agree on disk
                    self._pending_best = (epoch, _host_copy(self.checkpoint_state(epoch)), val.kept)
                if finished or time.monotonic() - self._saved >= CHECKPOINT_EVERY_S:
                    self.write_checkpoints(epoch)
                write_metrics_csv(self.history, self.run_dir / "metrics.csv")
                if self.tensorboard is not None:
                    self.tensorboard.epoch(row)
                if time.monotonic() - self._curves_written >= max(CURVES_EVERY_S,
                                                                  CURVES_COST_FACTOR * self._curves_cost):
                    self.write_curves()
                if "val_miou" in row:
                    self.log(f"epoch {epoch:3d}  step {self.step}/{self.total_steps}  train loss {train_loss:.4f}"
                             f"  val loss {row['val_loss']:.4f}  val mIoU {row['val_miou']:.4f}  Dice "
                             f"{row['val_dice']:.4f}  ({row['seconds']:.1f}s){'  *best' if improved else ''}")
                else:
                    self.log(f"epoch {epoch:3d}  step {self.step}/{self.total_steps}  train loss {train_loss:.4f}"
                             f"  ({row['seconds']:.1f}s)")
            if out_of_time:
                self.log(f"time budget reached after {self.step} steps")
                break
            self._resize()
            if cfg.early_stopping and "val_miou" in row:
                since = [r for r in self.history if r["epoch"] > self.best_epoch and "val_miou" in r]
                if len(since) >= cfg.early_stopping:
                    self.log(f"early stopping: no better val mIoU for {cfg.early_stopping} validations")
                    stopped_early = True
                    if self.dist.is_main:
                        self.write_checkpoints(epoch)
                    break
        return stopped_early

    def write_checkpoints(self, epoch: int | None) -> None:
        """Write the best state kept since the last write (``best.pt`` and its sample picture), then ``last.pt``
        after ``epoch`` completed epochs.

        Called when a run finishes or stops early, and otherwise at most every ``CHECKPOINT_EVERY_S``: a killed
        run loses at most that much, ``best.pt`` and ``last.pt`` always agree on the best score (so a resumed
        run cannot overwrite a better ``best.pt``), and a run that improves at most validations does not
        serialise two checkpoints and draw a picture each time (on a GPU that was a fifth of the demo).
        ``epoch=None`` (an interrupted epoch, whose weights are mid-epoch): ``last.pt`` becomes the kept best
        state itself, if there is one, else stays as it is.
        """
        pending, self._pending_best = self._pending_best, None
        if pending is not None:
            best_epoch, state, kept = pending
            save_checkpoint(state, self.run_dir / "best.pt")
            panel = self.sample_png(kept, f"epoch {best_epoch}")
            if panel is not None:
                save_png(panel, self.run_dir / "samples" / f"epoch_{best_epoch:03d}.png")
        if epoch is not None or pending is not None:
            save_checkpoint(self.checkpoint_state(epoch) if epoch is not None else pending[1],
                            self.run_dir / "last.pt")
            self._saved = time.monotonic()

    def write_curves(self) -> None:
        """Redraw ``curves.png``; :meth:`run` does it at most every ``CURVES_EVERY_S`` (or 50 drawing times)."""
        t0 = time.monotonic()
        atomic_write(self.run_dir / "curves.png",
                     lambda tmp: tmp.write_bytes(curves_png(self.history, best_epoch=self.best_epoch or None)))
        self._curves_written = time.monotonic()
        self._curves_cost = self._curves_written - t0

    def finish(self) -> EvalResult | None:
        """Evaluate the best checkpoint (with Boundary F1) and write ``report.html`` and ``metrics.json``."""
        t0 = self.clock()
        best = self.run_dir / "best.pt"
        if self.dist.is_main and self.history:
            self.write_curves()
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written best.pt
        if not best.is_file():
            return None
        last_epoch, last = getattr(self, "_last_validation", (None, None))
        if last is not None and last_epoch == self.best_epoch and (last.boundary_f1 is not None or
                                                                   not self.cfg.boundary_f1):
            result = last  # the model in memory is best.pt: its last validation is the report's
        else:
            _unwrap(self.model).load_state_dict(read_checkpoint(best)["model"])
            result = self.validate(boundary=self.cfg.boundary_f1)
        self.budget.final += self.clock() - t0
        if self.dist.is_main:
            panel = self.sample_png(result.kept, f"best checkpoint (epoch {self.best_epoch})")
            samples = png_bytes(panel) if panel is not None else None
            facts = {"data": self.cfg.data, "best epoch": f"{self.best_epoch} of {len(self.history)}",
                     "training": self.budget.describe(self.step, sum("val_miou" in r for r in self.history)),
                     "model": self.describe().splitlines()[1].removeprefix("model "),
                     "plan": self.plan.table()}
            write_report(self.run_dir / "report.html", title=f"unetkit run {self.run_dir.name}", result=result,
                         history=self.history, samples_png=samples, config=self.cfg.to_dict(), facts=facts,
                         colors=self.train_ds.class_colors, best_epoch=self.best_epoch)
            if result.per_case is not None:
                write_case_csv(result.per_case, self.run_dir / "per_case.csv")
            summary = {**result.to_json(), "steps": self.step, "time": self.budget.to_dict()}
            atomic_write(self.run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
        return result


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
        overwrite: bool = False) -> RunResult:
    """Train a UNet as ``cfg`` says (default: the ``ct-chest`` demo) and return the run's outcome.

    ``resume``: a run directory (or its ``last.pt``) to continue; its saved config and plan are used, except
    that ``cfg.epochs`` / ``cfg.time`` (when ``cfg`` is given) may extend the run. A run folder holding an
    earlier run is refused unless ``resume`` or ``overwrite`` (its run files are deleted first).
    """
    return Trainer(cfg, resume=resume, progress=progress, log=log, clock=clock, overwrite=overwrite).run()
