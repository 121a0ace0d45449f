"""Train the CLI defaults on the development suite under one time budget, against two references.

For each data set it reports the validation mIoU, the wall time and the peak memory (max RSS of the
training process) of

(a) ``unetkit train --data D --time BUDGET``: our defaults (planned patches, foreground sampling, budget),
    scored twice: ``miou`` is ``best.pt``'s (picked on this same validation split; with flip TTA over the
    trained flips for a model trained with flips, as the run's report scores it), ``final_miou`` the last
    model's (``last.pt``, without TTA), the figure to hold against a comparator that keeps its final model (a
    model trained with flips also gets ``final_tta_miou``, scored with flip TTA as nnU-Net scores its own);
(b) the previous defaults (whole images, 120 fixed epochs), run from an older unetkit source tree given
    with ``--previous-src`` (e.g. ``git worktree add ../prev <commit>``); skipped when not given;
(c) segmentation_models.pytorch ``Unet("resnet34", encoder_weights=None)`` in a plain loop (AdamW, lr 1e-3,
    CE + Dice, random crops of the median image size rounded up to 32, batch 4) for the same wall time as
    (a), evaluated by the same whole-image evaluation as ours.

and, with ``--big``, the peak memory of ``unetkit train`` on a folder holding 4000x4000 images.

``--compare nnunet`` adds (d) nnU-Net v2 (``pip install -e ".[bench]"``): its own conversion, planning,
preprocessing, training (fold "all", schedule length fitted to the same wall time as (a)) and
prediction, scored by our metrics on the same validation pixels (``benchmarks/nnunet_compare.py``):

    python benchmarks/bench_datasets.py --suite devsuite --datasets ct-coronal --budget 180 --no-smp \
        --compare nnunet --json benchmarks/results/nnunet.json

    python benchmarks/devsuite.py devsuite
    python benchmarks/bench_datasets.py --suite devsuite --budget 180 --previous-src ../prev --big \\
        --json benchmarks/results/datasets.json

``--variant NAME=FLAGS`` (repeatable) replaces (a) by one run per variant, with those ``unetkit train``
flags added, in an order alternated from one data set to the next; ``--smp-encoder`` picks (c)'s encoder
and ``--no-smp`` skips it. E.g. two decoder widths of a VGG16 UNet:

    python benchmarks/bench_datasets.py --suite devsuite --datasets ct-chest,digits --budget 120 \\
        --variant "auto=--encoder vgg16" --variant "mirror=--encoder vgg16 --decoder-channels mirror" \\
        --smp-encoder vgg16 --json benchmarks/results/decoder_widths.json

``--seeds 0,1,2`` runs every variant once per seed; ``--budget 0`` trains the planned length (the CLI's
default), so variants do the same steps. E.g. fp32 against bf16 autocast at the defaults:

    python benchmarks/bench_datasets.py --suite devsuite --budget 0 --seeds 0,1,2 --no-smp \
        --variant "fp32=--amp off" --variant "bf16=--amp bf16" --json benchmarks/results/bf16_devsuite.json

Every run is a separate process, so peak memory is that run's alone. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("ct-chest", "ct-coronal", "ct-sagittal", "digits")


def run_process(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; return exit code, wall seconds, peak RSS (MB) of that process and the tail of its output."""
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    # The tail goes into the results file: the scratch folder's name, which says nothing, becomes WORK.
    tail = [ln.replace(str(log.parent), "WORK") for ln in log.read_text().strip().splitlines()[-3:]] if log else []
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": round(time.perf_counter() - t0, 1),
            "peak_mb": round(usage.ru_maxrss / 1024), "tail": tail}


def data_arg(suite: Path, name: str) -> str:
    return name if name == "ct-chest" else str(suite / name)


def ours(data: str, budget: float, out: Path, flags: Sequence[str] = ()) -> dict[str, Any]:
    """(a): ``unetkit train`` with ``flags``, under ``budget`` seconds (0: the planned length)."""
    limit = ["--time", f"{budget:.0f}s"] if budget > 0 else []
    r = run_process([sys.executable, "-m", "unetkit", "train", "--data", data, *limit,
                     "--out", str(out), "--quiet", *flags], log=out.with_suffix(".log"))
    if r["rc"] == 0:
        m = json.loads((out / "metrics.json").read_text())
        r.update(miou=m["miou"], dice=m["dice"], pixels=m["pixels"], steps=m["steps"])
        r.update(final_scores(out, m["pixels"]))
        if flags:
            r["flags"] = " ".join(flags)
    return r


def final_scores(run: Path, pixels: int) -> dict[str, Any]:
    """The last model's scores (``last.pt``) beside the best checkpoint's, which were scored on ``pixels``.

    ``best.pt`` is chosen on the validation split that the table also scores, so its mIoU is the best of
    every validation a run made; a comparator that keeps its final model (nnU-Net) never gets that pick. The
    final model's scores are the like-for-like figure against it. A model trained with flips is also scored
    with flip TTA over those flips (``final_tta_miou``, what ``unetkit evaluate`` gives it by default), as
    nnU-Net scores its own mirror-trained model.
    """
    from unetkit.checkpoint import trained_flip_axes

    keys = ["final"]
    if trained_flip_axes(yaml.safe_load((run / "config.yaml").read_text())):
        keys.append("final_tta")
    out: dict[str, Any] = {}
    for key in keys:
        js = run / f"{key}-metrics.json"
        tta = "--tta" if key == "final_tta" else "--no-tta"
        r = run_process([sys.executable, "-m", "unetkit", "evaluate", str(run / "last.pt"), "--no-boundary-f1",
                         tta, "--json", str(js)], log=run / f"{key}-metrics.log")
        if r["rc"] != 0:
            return {**out, f"{key}_rc": r["rc"]}
        m = json.loads(js.read_text())
        if m["pixels"] != pixels:
            raise AssertionError(f"{run}: last.pt and best.pt were scored on different pixels")
        out.update({f"{key}_miou": m["miou"], f"{key}_dice": m["dice"]})
    return out


def previous(data: str, src: Path, out: Path) -> dict[str, Any]:
    r = run_process([sys.executable, "-m", "unetkit", "train", "--data", data, "--out", str(out), "--quiet"],
                    env={"PYTHONPATH": str(src)}, log=out.with_suffix(".log"))
    if r["rc"] == 0:
        r["miou"] = json.loads((out / "metrics.json").read_text())["miou"]
    return r


def smp_reference(data: str, budget: float, out: Path, encoder: str = "resnet34", seed: int = 0) -> dict[str, Any]:
    """(c) in its own process (:func:`smp_loop`), its result merged into the process's."""
    r = run_process([sys.executable, __file__, "--smp-run", data, "--budget", str(budget), "--smp-encoder",
                     encoder, "--seeds", str(seed), "--json", str(out.with_suffix(".json"))],
                    log=out.with_suffix(".log"))
    if r["rc"] == 0:
        r.update(json.loads(out.with_suffix(".json").read_text()))
    return r


def nnunet_reference(data: str, budget: float, out: Path, device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """(d): nnU-Net v2 from raw data to scored predictions in ``budget`` seconds (its own process), on the
    validation cases ``unetkit train --seed seed`` holds out (a folder without ``val/`` draws them)."""
    script = Path(__file__).with_name("nnunet_compare.py")
    r = run_process([sys.executable, str(script), "--data", data, "--budget", str(budget), "--device", device,
                     "--seed", str(seed), "--work", str(out), "--json", str(out.with_suffix(".json"))],
                    log=out.with_suffix(".log"))
    if r["rc"] == 0:
        r.update(json.loads(out.with_suffix(".json").read_text()))
    return r


def check_pixels(row: dict[str, Any]) -> None:
    """Every scored run of a data set must have been scored on the same number of validation pixels."""
    counts = {k: v["pixels"] for k, v in row.items() if v.get("pixels") is not None}
    if len(set(counts.values())) > 1:
        raise AssertionError(f"runs scored on different numbers of pixels: {counts}")


def loss_trace(losses: Sequence[float], every: int = 100) -> list[list[float]]:
    """``[[last step, mean loss], ...]`` over windows of ``every`` steps (the last one may be shorter): what a
    run's loss did, small enough to keep in a results file."""
    return [[min(i + every, len(losses)), round(sum(losses[i:i + every]) / len(losses[i:i + every]), 6)]
            for i in range(0, len(losses), every)]


def smp_loop(data: str, budget: float, encoder: str = "resnet34", seed: int = 0) -> dict[str, Any]:
    """(c): a plain training loop a user would write around smp's Unet, stopped at ``budget`` seconds and
    scored with its last weights; ``seed`` seeds the weights and draws the validation cases of a volume
    folder as ``unetkit train --seed`` does. Its loss, every 100 steps, is kept as ``loss_trace``."""
    import numpy as np
    import segmentation_models_pytorch as smp
    import torch
    from torch import nn

    from unetkit.checkpoint import DataInfo
    from unetkit.data import get_datasets
    from unetkit.data.patches import PatchDataset
    from unetkit.evaluate import evaluate
    from unetkit.inference import Predictor
    from unetkit.losses import build_loss

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    train, val = get_datasets(data, seed=seed)  # z-score normalisation from the training images
    sizes = np.array([train.image_size(i) for i in range(len(train))])
    crop = tuple(int(max(64, -(-int(np.median(sizes[:, a])) // 32) * 32)) for a in (0, 1))
    crops = PatchDataset(train, crop, foreground_fraction=0.0)  # uniform random crops, padded with ignore
    loader = torch.utils.data.DataLoader(crops, batch_size=4, shuffle=True, drop_last=len(crops) > 4)

    class Net(nn.Module):
        stride = 32  # so whole-image evaluation pads to smp's input multiple

        def __init__(self) -> None:
            super().__init__()
            self.net = smp.Unet(encoder, encoder_weights=None, in_channels=train.in_channels,
                                classes=train.num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = build_loss("ce+dice", train.num_classes, train.ignore_index)
    steps, reserve, losses = 0, None, []
    done = False
    while not done:
        for x, y in loader:
            t0 = time.perf_counter()
            model.train()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            losses.append(loss.detach())  # no host sync per step; read once at the end
            if steps == 3:  # leave time for the evaluation: a forward pass is about a third of a step of 4
                reserve = 2 * len(val) * (time.perf_counter() - t0) / 12
            if time.perf_counter() - t_start > budget - (reserve or 0.0):
                done = True
                break
    model.eval()
    predictor = Predictor(model, DataInfo.from_dataset(train, crop), device="cpu", amp="off", batch_size=4)
    cases = getattr(val, "cases", None) is not None  # volume slices: per-case Dice and HD95 as ours
    result = evaluate(predictor, val, boundary=cases)
    out = {"miou": result.miou, "steps": steps, "crop": list(crop), "encoder": encoder, "pixels": result.pixels,
           "seed": seed, "loss_trace": loss_trace(torch.stack(losses).tolist() if losses else [])}
    if cases:
        out["per_case_mean"] = result.to_json()["per_case"]["mean"]
    return out


def big_folder(root: Path) -> Path:
    """Two 4000x4000 8-bit images (one for training, one for validation) with a few labelled discs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        base = root if split == "train" else root / "val"
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "masks").mkdir(parents=True, exist_ok=True)
        yy, xx = np.ogrid[:4000, :4000]
        mask = np.zeros((4000, 4000), np.uint8)
        for _ in range(40):
            cy, cx, r = rng.integers(0, 4000, 2).tolist() + [int(rng.integers(20, 200))]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
        img = (mask * 120 + rng.integers(0, 100, (4000, 4000))).astype(np.uint8)
        Image.fromarray(img).save(base / "images" / "big.png")
        Image.fromarray(mask).save(base / "masks" / "big.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description="Development-suite benchmark: ours vs previous defaults vs smp.")
    p.add_argument("--suite", type=Path, help="folder written by benchmarks/devsuite.py")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--budget", type=float, default=180.0,
                   help="seconds per training run (0: the planned length, the CLI's default)")
    p.add_argument("--seeds", default="0", help="comma list: run (a) once per variant and seed (--seed)")
    p.add_argument("--previous-src", type=Path, help="source tree of the previous unetkit version")
    p.add_argument("--big", action="store_true", help="also measure memory on 4000x4000 images")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="run (a) once per variant with these extra 'unetkit train' flags (repeatable)")
    p.add_argument("--smp-encoder", default="resnet34", help="encoder of the smp reference (c)")
    p.add_argument("--no-smp", action="store_true", help="skip the smp reference (c)")
    p.add_argument("--compare", action="append", default=[], choices=["nnunet"],
                   help="add a comparator (repeatable): nnunet = nnU-Net v2 under the same wall time as (a)")
    p.add_argument("--nnunet-device", default="cpu", help="device of the nnU-Net comparator (cpu or cuda)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--smp-run", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smp_run:
        seed = int(args.seeds.split(",")[0])
        args.json.write_text(json.dumps(smp_loop(args.smp_run, args.budget, args.smp_encoder, seed)))
        return
    variants = {"ours": []}
    if args.variant:
        variants = {}
        for text in args.variant:
            vname, sep, flags = text.partition("=")
            if not sep or not vname.strip():
                p.error(f"--variant takes NAME=FLAGS, not {text!r}")
            variants[vname.strip()] = shlex.split(flags)
    work = Path(tempfile.mkdtemp(prefix="unetkit-bench-"))
    results: dict[str, Any] = {"budget_s": args.budget, "datasets": {},
                               "variants": {k: " ".join(v) for k, v in variants.items()},
                               "load_before": os.getloadavg()}
    for i, name in enumerate(args.datasets.split(",")):
        data = data_arg(args.suite, name) if args.suite else name
        row: dict[str, Any] = {}
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]  # alternate who goes first
        seeds = [int(x) for x in args.seeds.split(",")]
        for seed in seeds:
            for vname in order:
                key = vname if len(seeds) == 1 else f"{vname}/seed{seed}"
                flags = [*variants[vname], "--seed", str(seed)]
                row[key] = ours(data, args.budget, work / f"{name}-{key.replace('/', '-')}", flags)
        if args.previous_src:
            row["previous"] = previous(data, args.previous_src, work / f"{name}-previous")
        if not args.no_smp:
            first = next(iter(row.values()))
            row["smp"] = smp_reference(data, first["seconds"], work / f"{name}-smp", args.smp_encoder, seeds[0])
        if "nnunet" in args.compare:
            first = next(iter(row.values()))
            row["nnunet"] = nnunet_reference(data, first["seconds"], work / f"{name}-nnunet", args.nnunet_device,
                                             seeds[0])
            check_pixels(row)
            row["nnunet"]["pixels_match"] = row["nnunet"].get("pixels") == first.get("pixels")
        results["datasets"][name] = row
        shown = ("rc", "miou", "final_miou", "final_tta_miou", "dice", "seconds", "peak_mb", "steps", "pixels")
        print(name, json.dumps({k: {kk: v[kk] for kk in shown if kk in v}
                                for k, v in row.items()}), flush=True)
    if args.big:
        folder = big_folder(work / "big")
        results["big"] = run_process([sys.executable, "-m", "unetkit", "train", "--data", str(folder), "--time", "90s",
                                      "--out", str(work / "big-run"), "--quiet"], log=work / "big-run.log")
        print("big", json.dumps(results["big"]), flush=True)
    from unetkit.bench import machine_info

    results["machine"] = machine_info("cpu")
    results["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
