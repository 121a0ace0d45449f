"""2D, 2.5D or 3D on volume folders: what each buys at the same wall-time budget, and what the planner picks.

``python benchmarks/bench_volumes.py SET_DIR [SET_DIR ...] --budget 3m --out OUT`` trains, on each volume
folder (``python benchmarks/devsuite.py DIR --volumes`` writes the development suite's; ``unetkit data
export ct-chest DIR --volumes`` the demo CT's), one run per variant under the same ``--time`` budget:

* ``2d``: ``--spatial-dims 2 --context 0`` (a 2D UNet on slices),
* ``2.5d``: ``--spatial-dims 2 --context 1`` (the neighbouring slice on each side as channels),
* ``3d``: ``--spatial-dims 3`` (a 3D UNet on volume patches),
* ``smp``: segmentation_models.pytorch ``Unet("resnet34")`` from scratch on the slices, in the plain loop of
  ``bench_datasets.py`` (the ``bench`` extra), for the same wall time,

then scores each run's best checkpoint on its validation cases with ``unetkit evaluate`` (per-case Dice
and HD95, means over cases), and notes which variant ``unetkit plan`` chooses for the set. Writes
``OUT/volumes.json`` and prints a markdown table. Every run uses the same seed; the budget includes
planning, training and the final evaluation, as for users.

Two more variants, not in the default ``--variants`` (they need ``nnunetv2``, of the ``bench`` extra), run
nnU-Net v2 as a comparator with ``benchmarks/nnunet_compare.py`` in a child process under the same budget
(from raw data to its predictions), on the same validation cases (``--seed``), scored per case by the
same metrics (per-case Dice and HD95 with the case's spacing, on the slice grid our evaluation uses):

* ``nnunet-3d``: its ``3d_fullres`` configuration,
* ``nnunet-2d``: its ``2d`` configuration.

E.g. ``--variants 2d,3d,nnunet-3d,nnunet-2d``. Their ``steps`` are nnU-Net's training iterations.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = {"2d": ["--spatial-dims", "2", "--context", "0"], "2.5d": ["--spatial-dims", "2", "--context", "1"],
            "3d": ["--spatial-dims", "3"]}
#: nnU-Net v2 comparators (benchmarks/nnunet_compare.py): variant -> its configuration.
NNUNET_VARIANTS = {"nnunet-3d": "3d_fullres", "nnunet-2d": "2d"}


def unetkit(*args: str) -> subprocess.CompletedProcess:
    """Run the command line in a child process (as a user does)."""
    code = "import sys; from unetkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)


def planned_variant(data: Path) -> str:
    """The variant ``unetkit plan`` chooses for ``data`` (its ``network`` row)."""
    out = unetkit("plan", str(data)).stdout
    line = next((s for s in out.splitlines() if s.startswith("network")), "")
    value = [part for part in line.split("  ") if part.strip()][1].strip() if line else ""
    return "3d" if value.startswith("3D UNet") else ("2.5d" if "with context" in value else "2d")


def case_means(mean: dict[str, Any]) -> tuple[float | None, float | None]:
    """``(case Dice, HD95 mm)``: the means over classes of the per-case means (``per_case.mean`` of
    eval.json, or ``per_case_mean`` of nnunet_compare.py), NaN (``None``) and inf (``"inf"``) left out."""

    def avg(key: str) -> float | None:
        vals = [v for v in mean.get(key, []) if isinstance(v, (int, float))]
        return round(sum(vals) / len(vals), 4) if vals else None

    return avg("dice"), avg("hd95")


def run_smp(data: Path, budget: str, out: Path, seed: int) -> dict:
    """segmentation_models.pytorch ``Unet("resnet34")`` on the slices, the same wall time, scored per case
    (``bench_datasets.smp_reference``, in its own process)."""
    from bench_datasets import smp_reference

    from unetkit.train.config import parse_duration

    r = smp_reference(str(data), parse_duration(budget), out / f"{data.name}-smp-s{seed}", seed=seed)
    if r["rc"] != 0:
        return {"set": data.name, "variant": "smp", "seed": seed, "error": r["tail"][-1:]}
    dice, hd95 = case_means(r["per_case_mean"])
    return {"set": data.name, "variant": "smp", "seed": seed, "case_dice": dice, "hd95_mm": hd95,
            "miou": r["miou"], "steps": r["steps"], "wall_s": r["seconds"], "loss_trace": r["loss_trace"]}


def run_nnunet(data: Path, variant: str, budget: str, out: Path, seed: int) -> dict:
    """nnU-Net v2 (``NNUNET_VARIANTS[variant]``) from raw data to scored predictions within the budget, in
    its own process (benchmarks/nnunet_compare.py), on the validation cases of ``seed``."""
    from unetkit.train.config import parse_duration

    run = out / f"{data.name}-{variant}-s{seed}"
    if run.exists():  # nnU-Net's folders of an earlier run
        shutil.rmtree(run)
    js = out / f"{data.name}-{variant}-s{seed}.json"
    script = Path(__file__).with_name("nnunet_compare.py")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(script), "--data", str(data), "--budget", str(parse_duration(budget)),
                        "--configuration", NNUNET_VARIANTS[variant], "--seed", str(seed), "--work", str(run),
                        "--json", str(js)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    (out / f"{data.name}-{variant}-s{seed}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        return {"set": data.name, "variant": variant, "seed": seed, "error": r.stderr.strip().splitlines()[-1:]}
    result = json.loads(js.read_text())
    dice, hd95 = case_means(result.get("per_case_mean") or {})
    return {"set": data.name, "variant": variant, "seed": seed, "case_dice": dice, "hd95_mm": hd95,
            "miou": round(result["miou"], 6), "steps": result.get("steps"), "wall_s": round(wall, 1)}


def run_variant(data: Path, variant: str, budget: str, out: Path, seed: int) -> dict:
    """Train one variant under the budget and score its best checkpoint per case."""
    if variant == "smp":
        return run_smp(data, budget, out, seed)
    if variant in NNUNET_VARIANTS:
        return run_nnunet(data, variant, budget, out, seed)
    run = out / f"{data.name}-{variant}-s{seed}"
    t0 = time.perf_counter()
    r = unetkit("train", "--data", str(data), "--time", budget, "--seed", str(seed), "--out", str(run),
                "--no-progress", "--samples", "0", "--overwrite", *VARIANTS[variant])
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"set": data.name, "variant": variant, "error": r.stderr.strip().splitlines()[-1:]}
    js = run / "eval.json"
    unetkit("evaluate", str(run), "--json", str(js), "--amp", "off")
    result = json.loads(js.read_text())
    dice, hd95 = case_means((result.get("per_case") or {}).get("mean", {}))
    metrics = json.loads((run / "metrics.json").read_text())
    return {"set": data.name, "variant": variant, "seed": seed, "case_dice": dice, "hd95_mm": hd95,
            "miou": result["miou"], "steps": metrics.get("steps"), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sets", nargs="+", type=Path, help="volume folders")
    p.add_argument("--budget", default="3m", help="--time of every run (default 3m)")
    p.add_argument("--variants", default="2d,2.5d,3d,smp",
                   help="comma-separated: 2d, 2.5d, 3d, smp, and nnU-Net's nnunet-3d, nnunet-2d (need nnunetv2)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", type=Path, default=Path("runs/bench_volumes"))
    args = p.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS) - set(NNUNET_VARIANTS) - {"smp"}
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from "
                f"{', '.join([*VARIANTS, 'smp', *NNUNET_VARIANTS])}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, planned = [], {}
    for data in args.sets:
        planned[data.name] = planned_variant(data)
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in args.variants.split(","):
                row = run_variant(data, variant, args.budget, args.out, seed)
                print(json.dumps(row), flush=True)
                rows.append(row)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    report = {"budget": args.budget, "cpu": cpu, "planned": planned, "rows": rows}
    (args.out / "volumes.json").write_text(json.dumps(report, indent=2))
    print(f"\n{args.budget} per run, {cpu}\n\n| set | variant | case Dice | HD95 mm | mIoU | steps | planner |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "chosen" if planned.get(r["set"]) == r["variant"] else ""
        print(f"| {r['set']} | {r['variant']} | {r.get('case_dice')} | {r.get('hd95_mm')} | {r.get('miou')} | "
              f"{r.get('steps')} | {mark} |")


if __name__ == "__main__":
    main()
