"""bf16 against fp32 training on a CPU, paired: the evidence behind ``--amp auto``'s choice for CPU training.

For every development set and seed, two ``unetkit train`` runs start at the same moment under the same
``--time`` budget, one with ``--amp off`` (fp32) and one with ``--amp bf16``, each on one torch thread
(``OMP_NUM_THREADS=1``), so the pair shares the machine's two cores and whatever else the host does at
that moment. Everything else is the CLI's default plan. The pair differs only in precision: the same
seed, so the same initial weights, data order and augmentation draws, and its difference
(bf16 - fp32 validation mIoU of the best checkpoint) is the paired measurement; reported per set: the
mean difference, its standard deviation, how many seeds bf16 won, and fp32's seed-to-seed spread.

    python benchmarks/devsuite.py devsuite
    python benchmarks/bench_amp.py --suite devsuite --budget 90 --seeds 0,1,2,3,4 \\
        --json benchmarks/results/amp_paired.json

Run it on a CPU with native bf16 (AVX512-BF16 or AMX, see ``unetkit.device.cpu_has_native_bf16``):
elsewhere bf16 is emulated and many times slower, which the table would show rather than decide.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_datasets import DATASETS, data_arg

PRECISIONS = {"fp32": "off", "bf16": "bf16"}


def start(data: str, budget: float, seed: int, amp: str, out: Path) -> subprocess.Popen:
    """One ``unetkit train`` run on one torch thread, started now (not waited for)."""
    cmd = [sys.executable, "-m", "unetkit", "train", "--data", data, "--time", f"{budget:.0f}s", "--seed", str(seed),
           "--amp", amp, "--out", str(out), "--no-progress", "--samples", "0", "--overwrite"]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def result(proc: subprocess.Popen, out: Path, started: float) -> dict[str, Any]:
    """Exit code, best validation mIoU, steps and wall seconds of a run, once it has finished."""
    rc = proc.wait()
    seconds = time.perf_counter() - started
    if rc != 0:
        return {"rc": rc, "tail": out.with_suffix(".log").read_text().strip().splitlines()[-2:]}
    m = json.loads((out / "metrics.json").read_text())
    return {"rc": 0, "miou": m["miou"], "steps": m["steps"], "seconds": round(seconds, 1)}


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired differences of one set: mean, standard deviation, wins; fp32's spread over seeds."""
    ok = [p for p in pairs if p["fp32"].get("rc") == 0 and p["bf16"].get("rc") == 0]
    diffs = [p["bf16"]["miou"] - p["fp32"]["miou"] for p in ok]
    fp32 = [p["fp32"]["miou"] for p in ok]
    bf16 = [p["bf16"]["miou"] for p in ok]
    sd = statistics.stdev if len(ok) > 1 else (lambda _: 0.0)
    return {"pairs": len(ok), "fp32_mean": statistics.fmean(fp32) if ok else None,
            "bf16_mean": statistics.fmean(bf16) if ok else None,
            "diff_mean": statistics.fmean(diffs) if ok else None, "diff_sd": sd(diffs) if ok else None,
            "bf16_wins": sum(d > 0 for d in diffs), "worst_diff": min(diffs) if ok else None,
            "fp32_spread": (max(fp32) - min(fp32)) if ok else None,
            "steps_ratio": statistics.fmean(p["bf16"]["steps"] / p["fp32"]["steps"] for p in ok) if ok else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", type=Path, required=True, help="folder written by benchmarks/devsuite.py")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--budget", type=float, default=90.0, help="--time of every run, seconds")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    from unetkit.bench import machine_info
    from unetkit.device import cpu_has_native_bf16

    work = Path(tempfile.mkdtemp(prefix="unetkit-amp-"))
    report: dict[str, Any] = {"budget_s": args.budget, "native_bf16": cpu_has_native_bf16(), "sets": {}}
    for name in args.datasets.split(","):
        pairs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            outs = {k: work / f"{name}-{k}-s{seed}" for k in PRECISIONS}
            t0 = time.perf_counter()
            procs = {k: start(data_arg(args.suite, name), args.budget, seed, amp, outs[k])
                     for k, amp in PRECISIONS.items()}
            pair = {"seed": seed, **{k: result(procs[k], outs[k], t0) for k in PRECISIONS}}
            print(name, json.dumps(pair), flush=True)
            pairs.append(pair)
        report["sets"][name] = {"pairs": pairs, "summary": summarise(pairs)}
        print(name, json.dumps(report["sets"][name]["summary"]), flush=True)
    report["machine"] = {**machine_info("cpu"), "torch_threads": 1, "runs_at_once": 2}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print("| set | fp32 mean | bf16 mean | bf16 - fp32 (sd) | bf16 wins | worst | fp32 spread | steps bf16/fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in report["sets"].items():
        s = row["summary"]
        if s["pairs"]:
            print(f"| {name} | {s['fp32_mean']:.3f} | {s['bf16_mean']:.3f} | {s['diff_mean']:+.3f} ({s['diff_sd']:.3f}) "
                  f"| {s['bf16_wins']}/{s['pairs']} | {s['worst_diff']:+.3f} | {s['fp32_spread']:.3f} "
                  f"| {s['steps_ratio']:.2f} |")


if __name__ == "__main__":
    main()
