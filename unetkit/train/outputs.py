"""What a run writes: checkpoints (``last.pt``, ``best.pt``), sample pictures, ``curves.png`` and, at the end,
the final evaluation's ``report.html``, ``metrics.json`` and ``per_case.csv``.

:class:`RunOutputs` is the part of :class:`unetkit.train.Trainer` that writes; every file goes through
:func:`unetkit.atomic.atomic_write`, and only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic import atomic_write
from ..checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..data.base import describe_split
from ..device import describe_amp
from ..evaluate import EvalResult
from ..models import UNet
from ..viz import sample_panel
from .optim import rng_state
from .report import curves_png, png_bytes, save_png, write_case_csv, write_report

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


def host_copy(obj: Any) -> Any:
    """A copy of a checkpoint state with every tensor copied to host memory (a kept best state must not
    hold a second copy of the weights and optimizer state on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(v) for v in obj)
    return copy.deepcopy(obj)


#: Checkpoint entries only ``--resume`` needs: ``last.pt`` holds them, ``best.pt`` (what evaluate, predict and
#: export read) does not, so it is a third of the size.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


def model_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the training state (:data:`TRAINING_STATE`): what ``best.pt`` stores."""
    return {k: v for k, v in state.items() if k not in TRAINING_STATE}


def unwrap(model: nn.Module) -> UNet:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


class RunOutputs:
    """Checkpoints, pictures and the report of a :class:`~unetkit.train.Trainer` (which holds the state)."""

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        m = unwrap(self.model)
        return {"model": m.state_dict(), "model_config": m.config.to_dict(), "config": self.training_options(),
                "plan": self.plan.to_dict(), "classes": self.classes, "epoch": epoch,
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

    @torch.inference_mode()
    def sample_png(self, kept: dict[int, torch.Tensor] | None = None, title: str | None = None) -> np.ndarray | None:
        """``image | truth | prediction`` rows for a fixed set of validation images.

        ``kept``: predictions the validation already made (``EvalResult.kept``); others are predicted here.
        """
        if not self.sample_idx:
            return None
        predictor = self.predictor()
        imgs, truths, preds = [], [], []
        for i in self.sample_idx:
            image, mask = self.val_ds[i]
            labels = (kept or {}).get(i)
            if labels is None:
                labels = predictor.predict_tensor(image.to(self.dist.device)).cpu()
            if image.ndim == 4:  # a 3D case: show its slice with the most foreground
                s = int(((mask > 0) & (mask != self.val_ds.ignore_index)).flatten(1).sum(1).argmax())
                image, mask, labels = image[:, s], mask[s], labels[s]
                img = self.val_ds.normalization.display(image)
            else:
                img = self.val_ds.denormalize(image)
            settings = getattr(self.val_ds, "settings", None)
            if settings is not None and settings.context:  # 2.5D: show the slice itself, not its neighbours
                img = img[settings.context:settings.context + 1]
            imgs.append(img)
            truths.append(mask)
            preds.append(labels)
        return sample_panel(imgs, truths, preds, self.train_ds.class_colors, min_size=256, max_size=512,
                            names=self.train_ds.class_names, title=title)

    def write_checkpoints(self, epoch: int | None) -> None:
        """Write the best state kept since the last write (``best.pt`` and its sample picture), then ``last.pt``
        after ``epoch`` completed epochs.

        Called when a run finishes or stops early, and otherwise at most every ``CHECKPOINT_EVERY_S``: a killed
        run loses at most that much, ``best.pt`` and ``last.pt`` agree on the best score (a run killed between
        the two writes is resumed with ``best.pt``'s score, so it cannot overwrite a better ``best.pt``), and a run that improves at most validations does not
        serialise two checkpoints and draw a picture each time (on a GPU that was a fifth of the demo).
        ``epoch=None`` (an interrupted epoch, whose weights are mid-epoch): ``last.pt`` becomes the kept best
        state itself, if there is one, else stays as it is.
        """
        pending, self._pending_best = self._pending_best, None
        if pending is not None:
            save_checkpoint(model_state(pending[1]), self.run_dir / "best.pt")
        if epoch is not None or pending is not None:  # right after best.pt: the two disagree only briefly
            save_checkpoint(self.checkpoint_state(epoch) if epoch is not None else pending[1],
                            self.run_dir / "last.pt")
            self._saved = time.monotonic()
        if pending is not None:
            best_epoch, _, kept = pending
            panel = self.sample_png(kept, f"epoch {best_epoch}")
            if panel is not None:
                save_png(panel, self.run_dir / "samples" / f"epoch_{best_epoch:03d}.png")

    def write_curves(self) -> None:
        """Redraw ``curves.png``; :meth:`run` does it at most every ``CURVES_EVERY_S`` (or 50 drawing times)."""
        t0 = time.monotonic()
        atomic_write(self.run_dir / "curves.png",
                     lambda tmp: tmp.write_bytes(curves_png(self.history, best_epoch=self.best_epoch or None)))
        self._curves_written = time.monotonic()
        self._curves_cost = self._curves_written - t0

    def finish(self) -> EvalResult | None:
        """Evaluate the best checkpoint (with Boundary F1, and flip TTA over the flips it was trained with, as
        ``unetkit evaluate`` scores it) and write ``report.html`` and ``metrics.json``."""
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
        if last is not None and last_epoch == self.best_epoch and not self.info.flip_axes and (
                last.boundary_f1 is not None or not self.cfg.boundary_f1):
            result = last  # the model in memory is best.pt: its last validation is the report's
        else:  # scored as 'unetkit evaluate' scores it: with the trained flips' TTA
            unwrap(self.model).load_state_dict(read_checkpoint(best)["model"])
            result = self.validate(boundary=self.cfg.boundary_f1, tta=None)
        self.budget.final += self.clock() - t0
        if self.dist.is_main:
            panel = self.sample_png(result.kept, f"best checkpoint (epoch {self.best_epoch})")
            samples = png_bytes(panel) if panel is not None else None
            facts = {"data": self.cfg.data.source, "best epoch": f"{self.best_epoch} of {len(self.history)}",
                     "training": self.budget.describe(self.step, sum("val_miou" in r for r in self.history)),
                     "model": self.describe().splitlines()[1].removeprefix("model "),
                     "plan": self.plan.table(), "scored with": self.predictor(tta=None).tiling()}
            write_report(self.run_dir / "report.html", title=f"unetkit run {self.run_dir.name}", result=result,
                         history=self.history, samples_png=samples, config=self.cfg.to_dict(), facts=facts,
                         colors=self.train_ds.class_colors, best_epoch=self.best_epoch)
            if result.per_case is not None:
                write_case_csv(result.per_case, self.run_dir / "per_case.csv")
            summary = {**result.to_json(), "steps": self.step, "time": self.budget.to_dict()}
            atomic_write(self.run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
        return result

    def _keep_better_best(self, best: Path) -> None:
        """A run killed after writing ``best.pt`` but before ``last.pt`` resumes with a ``last.pt`` that does not
        know the better score: adopt ``best.pt``'s, so only a better model replaces it."""
        try:
            on_disk = read_checkpoint(best) if best.is_file() else None
        except CheckpointError:
            return
        if on_disk is not None and float(on_disk.get("best_miou", -1.0)) > self.best_miou:
            self.best_miou, self.best_epoch = float(on_disk["best_miou"]), int(on_disk["best_epoch"])
            self.log(f"{best} (epoch {self.best_epoch}, val mIoU {self.best_miou:.4f}) is newer than last.pt: it is "
                     "kept unless the resumed run does better")

    def describe(self) -> str:
        cfg, ds, w, plan = self.cfg, self.train_ds, self.dist.world_size, self.plan
        m = unwrap(self.model)
        params = sum(p.numel() for p in m.parameters())
        amp = describe_amp(cfg.amp, self.amp_dtype, self.dist.device)
        mc = m.config
        width = f", base {mc.base_channels}" if mc.encoder == "plain" else ""
        rule = getattr(ds, "pairing_rule", "")
        return (f"data {cfg.data.source}: {describe_split(ds, self.val_ds)}, {ds.num_classes} classes, "
                f"{ds.in_channels} channel(s){'; ' + rule if rule else ''}\nmodel UNet({mc.encoder}{width}, depth {mc.depth}): "
                f"{params / 1e6:.2f}M parameters on {self.dist.device} ({amp})"
                f"{f', {w} processes' if w > 1 else ''}\nglobal batch {plan.batch_size * w * cfg.grad_accum} "
                f"(= {plan.batch_size}/process x {w} x {cfg.grad_accum} accumulation) of "
                f"{'x'.join(map(str, plan.patch_size))} patches, lr {cfg.lr:g} {cfg.optimizer} + "
                f"{cfg.scheduler}, loss {plan.loss}\nplan:\n  " + plan.table().replace("\n", "\n  ")
                + f"\nrun directory {self.run_dir}")
