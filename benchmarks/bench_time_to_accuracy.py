"""Time to accuracy on the demo: fp32 against bf16 autocast (CPU or GPU), and what bf16 does to predictions.

For each seed it trains the demo (``unetkit train``: the built-in ct-chest slices, everything planned) once
per mode (``fp32`` = ``--amp off``, ``bf16``, ``fp16`` (CUDA); a ``-ddp`` suffix, e.g. ``bf16-ddp``, launches
that run under ``torchrun`` as a one-process DDP job: NCCL on a GPU, gloo on a CPU), each in its own process,
alternating which goes first, and reads the run's ``metrics.csv``:

* **time to 0.90**: the run's setup time plus the ``seconds`` of every epoch (training and validation) up
  to the first validation with mIoU >= ``--target``; checkpoint and picture writes are left out (the same
  for both precisions). Validation runs every few epochs (planned), so this is resolved to one schedule step.
* **best val mIoU** (the ``metrics.csv`` maximum) and the final report's mIoU (``metrics.json``: best.pt
  re-evaluated), steps, seconds per step, and the process's wall time.

Then, with the first seed's fp32 checkpoint (``best.pt``), in this process:

* inference throughput of the demo model at batch 1 and batch 8 (whole 128x128 slices, channels_last,
  ``torch.inference_mode``), fp32 against bf16 autocast, interleaved round by round (medians);
* agreement of bf16 and fp32 masks (``unetkit.inference.predict`` with the training patch size, as
  ``unetkit evaluate`` runs) on all the demo's slices: % identical pixels, and the validation mIoU of both.

    python benchmarks/bench_time_to_accuracy.py --seeds 0 1 [--time 60s] [--threads 1] [--out results.json]
    python benchmarks/bench_time_to_accuracy.py --device cuda --modes fp32 bf16 bf16-ddp --infer-rounds 0

The inference part runs on the CPU only (on a GPU, ``unetkit bench --suite predict`` compares the paths).

Timings on a shared CPU are noisy: the training runs alternate, the inference rounds are interleaved, and
the report states the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
CHOICES = [*MODES, *(f"{m}-ddp" for m in MODES)]


def read_metrics(run: Path, target: float) -> dict[str, Any]:
    """Time to ``target`` val mIoU and the best val mIoU, from the run's metrics.csv and metrics.json."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run / "metrics.json").read_text())
    setup = float(summary["time"]["setup"])
    clock, reached, best, best_epoch = setup, None, -1.0, None
    for row in rows:
        clock += float(row["seconds"])
        if row["val_miou"] in ("", None):
            continue
        miou = float(row["val_miou"])
        if miou > best:
            best, best_epoch = miou, int(row["epoch"])
        if reached is None and miou >= target:
            reached = {"seconds": round(clock, 1), "epoch": int(row["epoch"]), "step": int(row["step"]),
                       "miou": miou}
    steps = int(summary["steps"])
    return {"time_to_target": reached, "best_val_miou": best, "best_epoch": best_epoch,
            "final_miou": summary["miou"], "steps": steps, "epochs": len(rows),
            "validations": sum(r["val_miou"] not in ("", None) for r in rows),
            "s_per_step": round(summary["time"]["train"] / max(steps, 1), 4), "time": summary["time"]}


def train(mode: str, seed: int, budget: str | None, out: Path, target: float,
          threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    amp, ddp = mode.removesuffix("-ddp"), mode.endswith("-ddp")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] if ddp else []
    args = ["train", "--amp", MODES[amp], "--seed", str(seed), "--device", device]
    cmd = [sys.executable, *launcher, "-m", "unetkit", *args, "--out", str(out), "--quiet", "--overwrite"]
    if budget:
        cmd += ["--time", budget]
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    r: dict[str, Any] = {"mode": mode, "seed": seed, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
                         "command": ("torchrun --standalone --nproc-per-node 1 -m " if ddp else "")
                                    + "unetkit " + " ".join(args) + (f" --time {budget}" if budget else "")}
    if rc == 0:
        r.update(read_metrics(out, target))
    else:
        r["tail"] = log.read_text().strip().splitlines()[-3:]
    return r


def inference(ckpt: Path, rounds: int) -> dict[str, Any]:
    """Batch-1/batch-8 img/s, fp32 vs bf16 autocast (interleaved), and mask agreement on every demo slice."""
    import torch

    from unetkit.checkpoint import checkpoint_datasets, load_model
    from unetkit.evaluate import evaluate
    from unetkit.inference import predict

    model, info, ck = load_model(ckpt, "cpu")
    model = model.to(memory_format=torch.channels_last).eval()
    train_ds, val_ds = checkpoint_datasets(ck)
    slices = [train_ds[i] for i in range(len(train_ds))] + [val_ds[i] for i in range(len(val_ds))]
    out: dict[str, Any] = {"slices": len(slices), "patch_size": list(info.patch_size or ())}

    # Throughput: whole 128x128 slices, batch 1 and 8.
    x = torch.stack([s[0] for s in slices])
    batches = {1: x[:1].contiguous(memory_format=torch.channels_last),
               8: x[:8].contiguous(memory_format=torch.channels_last)}
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    reps = {1: 20, 8: 4}
    times: dict[str, list[float]] = {f"{d}_b{b}": [] for b in batches for d in dtypes}

    def run(b: int, dtype: Any, n: int) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            t0 = time.perf_counter()
            for _ in range(n):
                model(batches[b])
            return time.perf_counter() - t0

    for b in batches:  # warm-up
        for d in dtypes.values():
            run(b, d, 2)
    for _ in range(rounds):
        for b in batches:
            for name, d in dtypes.items():
                times[f"{name}_b{b}"].append(b * reps[b] / run(b, d, reps[b]))
    out["img_per_s"] = {k: round(statistics.median(v), 1) for k, v in times.items()}
    out["img_per_s_rounds"] = {k: [round(t, 1) for t in v] for k, v in times.items()}
    for b in batches:
        out[f"bf16_speedup_b{b}"] = round(out["img_per_s"][f"bf16_b{b}"] / out["img_per_s"][f"fp32_b{b}"], 2)

    # Agreement: every slice, predicted as evaluation predicts (sliding windows of the patch size).
    pad = info.normalization.pad_value()
    same = total = 0
    for image, _ in slices:
        a = predict(model, image, tile_size=info.patch_size, pad_value=pad)
        b = predict(model, image, tile_size=info.patch_size, pad_value=pad, autocast_dtype=torch.bfloat16)
        same += int((a == b).sum())
        total += a.numel()
    out["identical_pixels_pct"] = round(100 * same / total, 3)
    out["differing_pixels"] = total - same
    for name, d in dtypes.items():
        r = evaluate(model, val_ds, num_classes=info.num_classes, ignore_index=info.ignore_index,
                     tile_size=info.patch_size, pad_value=pad, autocast_dtype=d, device="cpu")
        out[f"val_miou_{name}_inference"] = round(r.miou, 4)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="Time to accuracy of the demo, fp32 vs bf16 autocast on a CPU.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--time", default=None, help="time budget per run, e.g. 60s (default: the demo's planned length)")
    p.add_argument("--target", type=float, default=0.90, help="val mIoU to reach (default 0.90)")
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=CHOICES)
    p.add_argument("--device", default="cpu", help="cpu or cuda (passed to unetkit train --device)")
    p.add_argument("--infer-rounds", type=int, default=7, help="interleaved inference rounds (0: skip inference)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's default, one per core); 1 keeps runs from "
                        "stalling on a CPU shared with other jobs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "time_to_accuracy.json")
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    args = p.parse_args()

    import torch

    from unetkit.bench import machine_info
    from unetkit.device import probe_cpu_bf16

    if args.threads:
        torch.set_num_threads(args.threads)

    machine = machine_info(args.device)
    probe = probe_cpu_bf16()
    print(f"{machine.get('gpu', 'no GPU')}; CPU: {machine['cpu']} ({machine['cpu_count']} cores, {machine['torch_threads']} torch threads, "
          f"torch {machine['torch']}); bf16 probe: {probe['bf16_ms']:.3f} ms vs fp32 {probe['fp32_ms']:.3f} ms "
          f"(ratio {probe['ratio']}, native: {probe['native_bf16']})", flush=True)
    results: dict[str, Any] = {"machine": machine, "device": args.device, "bf16_probe": probe, "target": args.target, "budget": args.time,
                               "load_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for k, seed in enumerate(args.seeds):
            order = args.modes if k % 2 == 0 else args.modes[::-1]  # alternate who goes first
            for mode in order:
                r = train(mode, seed, args.time, base / f"{mode}_seed{seed}", args.target, args.threads,
                          args.device)
                results["runs"].append(r)
                reached = (r.get("time_to_target") or {}).get("seconds")
                print(f"{mode} seed {seed}: rc {r['rc']}, wall {r['wall_s']} s, steps {r.get('steps')}, "
                      f"{r.get('s_per_step')} s/step, {args.target} reached at {reached} s, best val mIoU "
                      f"{r.get('best_val_miou')} (final {r.get('final_miou')})", flush=True)
        first = next((r for r in results["runs"] if r["mode"] == "fp32" and r["rc"] == 0), None)
        if args.infer_rounds > 0 and first is not None and args.device == "cpu":
            ckpt = base / f"fp32_seed{first['seed']}" / "best.pt"
            results["inference"] = inference(ckpt, args.infer_rounds)
            results["inference"]["checkpoint"] = f"fp32 run, seed {first['seed']}, best.pt"
            print("inference:", json.dumps({k: v for k, v in results["inference"].items()
                                            if k != "img_per_s_rounds"}), flush=True)
    summary = {}
    for mode in args.modes:
        rs = [r for r in results["runs"] if r["mode"] == mode and r["rc"] == 0]
        reached = [r["time_to_target"]["seconds"] for r in rs if r["time_to_target"]]
        summary[mode] = {"runs": len(rs), "reached_target": len(reached),
                         "median_time_to_target_s": statistics.median(reached) if reached else None,
                         "best_val_miou": [r["best_val_miou"] for r in rs],
                         "median_s_per_step": statistics.median([r["s_per_step"] for r in rs]) if rs else None}
    results["summary"] = summary
    results["load_after"] = os.getloadavg()
    print("summary:", json.dumps(summary), f"load average before {results['load_before']}, after "
          f"{results['load_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
