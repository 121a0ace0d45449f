"""Where a training run's time goes: each part of a step, and each thing done between epochs.

Builds the trainer ``unetkit train`` would build (same data, plan, model, loss, optimizer, autocast) and
times, outside its loop, the parts of its loop one by one, synchronising the device between them:

* per step: **data** (the next batch from the loader: patch sampling, augmentation, collation; an epoch's
  first batch is counted apart, as **epoch start**, since it includes re-creating the loader's iterator),
  **to device** (copy and memory layout), **forward** (under the run's autocast), **loss**, **backward**,
  **optimizer** (gradient clipping, the step, the scheduler, zeroing);
* per event: one **validation** (the planned windows), the extra cost of **Boundary F1** (final validation
  only), one **sample picture**, one **checkpoint** write (``last.pt``; ``best.pt`` is the same size), the
  **metrics.csv** and **curves.png** writes.

It prints each part's median time and its share of a planned run, counting the steps and validations of
the plan and the writes the trainer's clock allows (checkpoints every 30 s, curves every 30 s or more).

    python benchmarks/bench_epoch.py [--data ct-chest] [--amp auto] [--device cpu] [--steps 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    from unetkit.timing import synchronize

    def run(fn: Callable[[], Any]) -> tuple[float, Any]:
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        return time.perf_counter() - t0, out

    return run


def step_parts(trainer: Any, steps: int) -> dict[str, list[float]]:
    """Time ``steps`` training steps of ``trainer``, part by part, as :meth:`Trainer.train_epoch` runs them."""
    cfg, dev, step0 = trainer.cfg, trainer.dist.device, trainer.step
    t = timer(dev)
    parts: dict[str, list[float]] = {k: [] for k in
                                     ("epoch start", "data", "to device", "forward", "loss", "backward", "optimizer")}
    trainer.model.train()
    done, epoch = 0, 0
    while done < steps:
        trainer.sampler.set_epoch(epoch)
        it = iter(trainer.loader)
        first = True
        while done < steps:
            dt, batch = t(lambda it=it: next(it, None))
            if batch is None:
                break
            parts["epoch start" if first else "data"].append(dt)
            first = False
            images, masks = batch

            def to_device(images: torch.Tensor = images, masks: torch.Tensor = masks) -> tuple[Any, Any]:
                x = images.to(dev, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return x, masks.to(dev, non_blocking=True)

            dt, (x, y) = t(to_device)
            parts["to device"].append(dt)

            def forward(x: torch.Tensor = x) -> Any:
                with trainer.autocast():
                    return trainer.model(x)

            dt, out = t(forward)
            parts["forward"].append(dt)
            dt, loss = t(lambda out=out, y=y: trainer.loss(out, y))
            parts["loss"].append(dt)
            dt, _ = t(lambda loss=loss: trainer.scaler.scale(loss).backward())
            parts["backward"].append(dt)

            dt, _ = t(trainer.optimizer_step)
            parts["optimizer"].append(dt)
            done += 1
        epoch += 1
    trainer.step = step0
    return parts


def event_parts(trainer: Any, repeats: int) -> dict[str, list[float]]:
    """Time the things done between epochs, ``repeats`` times each (Boundary F1 and curves once)."""
    from unetkit.checkpoint import save_checkpoint
    from unetkit.train.report import write_metrics_csv

    t = timer(trainer.dist.device)
    ev: dict[str, list[float]] = {"validation": [], "boundary F1 (final)": [], "sample picture": [],
                                  "checkpoint write": [], "metrics.csv write": [], "curves.png write": []}
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer.history = [{"epoch": i + 1, "step": i, "train_loss": 0.5, "val_loss": 0.4, "val_miou": 0.5,
                        "val_dice": 0.6, "val_pixel_accuracy": 0.9, "lr": 1e-3, "seconds": 1.0}
                       for i in range(100)]
    for _ in range(repeats):
        dt, val = t(lambda: trainer.validate(boundary=False))
        ev["validation"].append(dt)
        ev["sample picture"].append(t(lambda val=val: trainer.sample_png(val.kept, "epoch 1"))[0])
        ev["checkpoint write"].append(t(lambda: save_checkpoint(trainer.checkpoint_state(1),
                                                                 trainer.run_dir / "last.pt"))[0])
        ev["metrics.csv write"].append(t(lambda: write_metrics_csv(trainer.history, trainer.run_dir / "m.csv"))[0])
    with_bf1 = t(lambda: trainer.validate(boundary=True))[0]
    ev["boundary F1 (final)"].append(max(with_bf1 - statistics.median(ev["validation"]), 0.0))
    ev["curves.png write"].append(t(trainer.write_curves)[0])
    return ev


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="ct-chest")
    p.add_argument("--amp", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=60, help="training steps timed (after 5 warm-up steps)")
    p.add_argument("--repeats", type=int, default=5, help="timings of each between-epoch event")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from unetkit.bench import machine_info
    from unetkit.device import describe_amp
    from unetkit.train import TrainConfig, Trainer
    from unetkit.train.trainer import CHECKPOINT_EVERY_S, CURVES_COST_FACTOR, CURVES_EVERY_S

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({"data": args.data, "amp": args.amp, "device": args.device,
                                     "out": str(Path(tmp) / "run")})
        trainer = Trainer(cfg, progress=False, log=lambda _msg: None)
        step_parts(trainer, 5)  # warm-up: first-call allocations, oneDNN/cuDNN kernel choice
        steps = step_parts(trainer, args.steps)
        events = event_parts(trainer, args.repeats)

    plan_steps, spe = trainer.total_steps, trainer.steps_per_epoch
    epochs = -(-plan_steps // spe)
    validations = epochs // trainer.val_every + 1
    med = {k: statistics.median(v) for k, v in {**steps, **events}.items() if v}
    counts = {"epoch start": epochs, "data": plan_steps - epochs, **{k: plan_steps for k in
              ("to device", "forward", "loss", "backward", "optimizer")},
              "validation": validations, "boundary F1 (final)": 1, "metrics.csv write": epochs}
    base_s = sum(med[k] * n for k, n in counts.items())
    # What the trainer writes on a clock: both checkpoints (and a best epoch's picture) after the first epoch,
    # every CHECKPOINT_EVERY_S and at the end; curves no more often than every CURVES_EVERY_S or 50 drawings.
    flushes = min(validations, round(base_s / CHECKPOINT_EVERY_S) + 2)
    counts.update({"checkpoint write": 2 * flushes, "sample picture": flushes,
                   "curves.png write": min(epochs, round(base_s / max(CURVES_EVERY_S,
                                                                      CURVES_COST_FACTOR * med["curves.png write"])) + 1)})
    total_s = sum(med[k] * n for k, n in counts.items())
    machine = machine_info(trainer.dist.device)
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
    print(f"{args.data} on {where}, torch {machine['torch']}, "
          f"{describe_amp(args.amp, trainer.amp_dtype, trainer.dist.device)}")
    print(f"plan: {plan_steps} steps of batch {trainer.plan.batch_size} ({spe} per epoch, {epochs} epochs), "
          f"validation every {trainer.val_every} epoch(s): {validations}; medians of {args.steps} steps and "
          f"{args.repeats} events")
    print(f"{'part':<22} {'median ms':>10} {'per run':>8} {'run s':>8} {'share':>7}")
    rows = []
    for k, n in counts.items():
        run_s = med[k] * n
        rows.append({"part": k, "median_ms": round(1000 * med[k], 3), "per_run": n, "run_s": round(run_s, 2),
                     "share": round(run_s / total_s, 4)})
        print(f"{k:<22} {1000 * med[k]:10.2f} {n:8d} {run_s:8.1f} {100 * run_s / total_s:6.1f}%")
    print(f"{'total':<22} {'':>10} {'':>8} {total_s:8.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "data": args.data, "amp": args.amp,
                                         "autocast": str(trainer.amp_dtype), "steps": plan_steps,
                                         "steps_per_epoch": spe, "val_every": trainer.val_every,
                                         "batch": trainer.plan.batch_size, "rows": rows,
                                         "raw_ms": {k: [round(1000 * x, 3) for x in v]
                                                    for k, v in {**steps, **events}.items()}}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
