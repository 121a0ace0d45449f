"""The training loop: :func:`fit` trains a UNet from a :class:`TrainConfig` and writes a run directory.

One process or many (DDP under torchrun): every rank trains on its shard of each epoch, validation is
sharded without repeats and merged by all-reducing the confusion matrix, and only rank 0 writes files.
The run directory holds ``config.yaml``, ``metrics.csv``, ``curves.png``, ``samples/epoch_XXX.png``,
``last.pt`` and ``best.pt`` (by validation mIoU), and at the end ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write, claim_run_folder
from ..checkpoint import DataInfo, trained_flip_axes
from ..evaluate import EvalResult, evaluate
from ..inference import Predictor
from ..losses import DeepSupervisionLoss, build_loss
from ..signals import Terminated, sigterm_as_interrupt
from ..timing import synchronize
from .budget import Budget
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, init_distributed
from .optim import build_optimizer, build_scheduler, resolve_amp, seed_everything, set_rng_state
from .outputs import CHECKPOINT_EVERY_S, CURVES_COST_FACTOR, CURVES_EVERY_S, RunOutputs, host_copy, unwrap
from .plan import format_duration
from .report import TensorBoardLog, write_metrics_csv
from .sanity import data_warnings
from .setup import build_batches, build_model, channels_last, data_and_plan, default_run_dir, resolve_options
from .sizing import PROBE_STEPS, UNBOUNDED_STEPS, RunSizing


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


# --------------------------------------------------------------------------- the trainer
class Trainer(RunSizing, RunOutputs):
    """Holds a run's state; :meth:`run` trains until the planned steps or the time budget are spent.

    ``clock`` (seconds, monotonic) is injectable so tests can check the time budget without waiting.
    Most users call :func:`fit`.
    """

    def __init__(self, cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic, overwrite: bool = False, verbose: bool = False) -> None:
        self.clock = clock
        self.verbose = verbose
        self.overwrite = overwrite
        t_setup = clock()
        cfg, ckpt = resolve_options(cfg, resume, log)
        self.cfg = cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self._lock = None
        if ckpt is not None and self.dist.is_main:  # a second --resume of a live run: refused before the data loads
            self._lock = claim_run_folder(Path(cfg.out), resume=True, overwrite=overwrite)
        self.progress = progress
        self._log = log
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        dev = self.dist.device

        self.train_ds, self.val_ds, self.fingerprint, self.plan = data_and_plan(cfg, ckpt, dev)
        plan, ds = self.plan, self.train_ds
        self.channels_last = channels_last(cfg, plan)
        model, self.model = build_model(cfg, plan, ds, ckpt, self.dist)
        self.classes = {"names": list(ds.class_names), "colors": [list(c) for c in ds.class_colors]}
        # what inference needs (Predictor), as a checkpoint of this run will give it
        self.info = replace(DataInfo.from_dataset(ds, plan.patch_size), flip_axes=trained_flip_axes(cfg.to_dict()))

        self.eval_loss = build_loss(plan.loss, ds.num_classes, cfg.data.ignore_index, plan.class_weights)
        self.loss = DeepSupervisionLoss(self.eval_loss) if model.config.deep_supervision else self.eval_loss
        self.amp_dtype = resolve_amp(cfg.amp, dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        batches = build_batches(cfg, plan, ds, self.dist)
        self.patches, self.sampler, self.loader = batches.patches, batches.sampler, batches.loader
        self.steps_per_epoch = batches.steps_per_epoch
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
            self._restore(ckpt)
        self.run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        self._curves_written, self._curves_cost = -math.inf, 0.0
        self._saved = -math.inf  # the first epoch writes last.pt: a run that fails early can resume
        self._pending_best: tuple[int, dict[str, Any], dict[int, torch.Tensor]] | None = None
        n = len(self.val_ds)
        self.sample_idx = sorted({round(i * (n - 1) / max(1, cfg.samples - 1)) for i in range(cfg.samples)}) \
            if cfg.samples > 0 else []
        self.bar, self._first_step = tqdm(disable=True), self.step  # the run's progress bar, made by run()
        self._probe: list[float] = []  # seconds of the first steps, until the run is sized
        self.budget.setup += clock() - t_setup

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Continue a resumed run: optimizer, schedule, scaler, history, step count, time spent, RNG."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history = list(ckpt["history"])
        self.best_miou, self.best_epoch = float(ckpt["best_miou"]), int(ckpt["best_epoch"])
        self.start_epoch = int(ckpt["epoch"])
        run = ckpt.get("run", {})
        self.step = int(run.get("step", self.start_epoch * self.steps_per_epoch))
        self.val_every = int(run.get("val_every", self.val_every))
        if run.get("total_steps") and not (self.cfg.epochs or self.cfg.time) and run.get("sized"):
            self.total_steps, self.sized = int(run["total_steps"]), True
        saved_time = run.get("time") or {}
        for k in ("setup", "train", "validation", "final", "step_s", "val_s"):
            if k in saved_time:
                setattr(self.budget, k, saved_time[k])
        self.budget.before = float(saved_time.get("elapsed", 0.0))
        if self.dist.is_main:
            set_rng_state(ckpt["rng"])
        self._keep_better_best(Path(ckpt["path"]).parent / "best.pt")

    # ----------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            with tqdm.external_write_mode():  # above the progress bar, not through it
                self._log(msg)

    def autocast(self) -> contextlib.AbstractContextManager:
        dev = self.dist.device.type
        return torch.autocast(dev, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> tuple[float, bool]:
        """Train one epoch (or up to the run's last step); return (mean loss, out of time)."""
        cfg, dev = self.cfg, self.dist.device
        self.model.train()
        self.sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64, device=dev)  # loss sum, batches
        n = len(self.loader)
        stop_after = min(n, (self.total_steps - self.step) * cfg.grad_accum)
        bar = self.bar
        out_of_time = False
        t0 = self.clock()
        t_prev = self.clock()
        for i, (images, masks) in enumerate(self.loader):
            images = images.to(dev, non_blocking=True)
            masks = masks.to(dev, non_blocking=True)
            if self.channels_last:
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
                bar.update(1)
            total[0] += loss.detach().double()
            total[1] += 1
            if not self.sized and boundary:  # time the first steps (one untimed), then fix the run's length
                synchronize(dev)
                now = self.clock()
                self._probe.append(now - t_prev)  # this step, its batch's loading included
                t_prev = now
                timed = self._probe[1:]
                if len(timed) >= PROBE_STEPS or (timed and i + 1 == n):  # epochs of one step are timed too
                    self._size_the_run(sum(timed) / len(timed))
            last = i + 1 >= stop_after or self.step >= self.total_steps
            check = i % 10 == 0 or last or i + 1 == n
            if check:  # the only host syncs: every 10 steps
                mean = float(total[0] / total[1])
                if not math.isfinite(mean):
                    raise TrainingError(
                        f"the training loss became {mean} at epoch {epoch + 1}, step {self.step}; the last good "
                        f"checkpoint is {self.run_dir / 'last.pt'}; lower --lr (now {cfg.lr:g}) or set "
                        f"--grad-clip, then resume with --resume {self.run_dir}")
                left = self.budget.time_left(self.step, self.total_steps, self._first_step)
                bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                left=format_duration(left), refresh=False)
                if bar.total != self.total_steps and self.total_steps < UNBOUNDED_STEPS:
                    bar.total = self.total_steps
                    bar.refresh()
            # The clock is read after every step (a slowed-down machine cannot overrun the budget by an epoch);
            # under DDP the ranks agree every 10 steps, which costs a collective.
            if (check or not self.dist.enabled) and self._out_of_time():
                out_of_time = True
                break
            if last:
                break
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

    def predictor(self, tta: bool | None = False) -> Predictor:
        """The model in training applied as ``unetkit predict`` applies a checkpoint: windows of the patch size,
        padded with the normalised black, in the training precision; ``tta=None``: with the trained flips, as
        ``unetkit predict`` and ``evaluate`` apply a checkpoint by default (the validations that pick the best
        checkpoint run without, at a quarter of the cost)."""
        return Predictor(unwrap(self.model), self.info, device=self.dist.device, amp=self.amp_dtype,
                         tile=self.plan.patch_size, tta=tta, batch_size=max(1, self.plan.batch_size))

    def validate(self, boundary: bool = False, tta: bool | None = False) -> EvalResult:
        """Evaluate on whole validation images (sharded across ranks, merged exactly); ``tta`` as
        :meth:`predictor`'s."""
        if self.dist.enabled:  # evaluate rank 0's BatchNorm statistics, the ones the checkpoint holds
            import torch.distributed as dist

            for buf in unwrap(self.model).buffers():
                dist.broadcast(buf, 0)
        return evaluate(self.predictor(tta), self.val_ds, loss_fn=self.eval_loss, boundary=boundary,
                        keep=self.sample_idx)

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        """Train, evaluate the best checkpoint, write the report; the run folder is locked meanwhile, and
        SIGTERM is handled as Ctrl-C is (checkpoint written, resume line printed)."""
        lock = self._lock
        if self.dist.is_main and lock is None:
            lock = claim_run_folder(self.run_dir, resume=self.start_epoch > 0, overwrite=self.overwrite)
        try:
            with sigterm_as_interrupt():
                return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> RunResult:
        cfg = self.cfg
        self.tensorboard = TensorBoardLog(self.run_dir) if self.dist.is_main else None
        if self.dist.is_main and self.sample_idx:
            (self.run_dir / "samples").mkdir(exist_ok=True)
        if self.dist.is_main:
            atomic_write(self.run_dir / "config.yaml",
                         lambda tmp: tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
            if self.fingerprint is not None:
                plan_doc = {"fingerprint": self.fingerprint.to_dict(), "plan": self.plan.to_dict()}
                atomic_write(self.run_dir / "plan.yaml",
                             lambda tmp: tmp.write_text(yaml.safe_dump(plan_doc, sort_keys=False)))
        self.log(self.describe())
        for line in data_warnings(self.fingerprint) if self.fingerprint is not None else []:
            self.log(line)
        if self.start_epoch:
            self.log(f"resuming after epoch {self.start_epoch}, step {self.step} (best val mIoU "
                     f"{self.best_miou:.4f})")
        self._first_step = self.step
        self.bar = tqdm(total=self.total_steps if self.total_steps < UNBOUNDED_STEPS else None, initial=self.step,
                        desc="train", unit="step", dynamic_ncols=True, leave=False,
                        disable=not (self.progress and self.dist.is_main))
        try:
            stopped_early = self._epochs(self.start_epoch)
        except KeyboardInterrupt as e:
            self.bar.close()
            if self.dist.is_main:
                self.write_checkpoints(None)  # a better state not yet on disk, with last.pt rolled back to it
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            self.log(f"{how} in epoch {len(self.history) + 1}; continue with: unetkit train --resume "
                     f"{self.run_dir}")
            raise
        self.bar.close()
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
                took = self.clock() - t_val
                self.budget.validation += took
                if self.budget.val_s is not None:  # a machine that slowed down keeps a larger reserve for the end
                    self.budget.val_s = max(self.budget.val_s, took)
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
                    self._pending_best = (epoch, host_copy(self.checkpoint_state(epoch)), val.kept)
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
                elif self.verbose:
                    self.log(f"epoch {epoch:3d}  step {self.step}/{self.total_steps}  train loss {train_loss:.4f}"
                             f"  ({row['seconds']:.1f}s)")
            if out_of_time:
                self.log(f"time budget reached after {self.step} steps")
                break
            self._resize()
            if self.total_steps < UNBOUNDED_STEPS and self.bar.total != self.total_steps:
                self.bar.total = self.total_steps
                self.bar.refresh()
            if cfg.early_stopping and "val_miou" in row:
                since = [r for r in self.history if r["epoch"] > self.best_epoch and "val_miou" in r]
                if len(since) >= cfg.early_stopping:
                    self.log(f"early stopping: no better val mIoU for {cfg.early_stopping} validations")
                    stopped_early = True
                    if self.dist.is_main:
                        self.write_checkpoints(epoch)
                    break
        return stopped_early

def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
        overwrite: bool = False, verbose: bool = False) -> RunResult:
    """Train a UNet as ``cfg`` says (default: the ``ct-chest`` demo) and return the run's outcome.

    ``resume``: a run directory (or its ``last.pt``) to continue; its saved config and plan are used, except
    that ``cfg.epochs`` / ``cfg.time`` (when ``cfg`` is given) may extend the run. A run folder holding an
    earlier run is refused unless ``resume`` or ``overwrite`` (its run files are deleted first). ``progress``:
    one progress bar for the whole run (steps done of planned, elapsed, time left); ``verbose``: a line for
    every epoch, not only for those that validate.
    """
    return Trainer(cfg, resume=resume, progress=progress, log=log, clock=clock, overwrite=overwrite,
                   verbose=verbose).run()
