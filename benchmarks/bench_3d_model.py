"""Benchmark our 3D UNet against MONAI's ``UNet`` and ``DynUNet`` with the same widths, depth, strides and norm.

All three get the widths of ``--widths`` (doubling, e.g. 16,32,64,128: four levels), 3x3x3 kernels, 2x
down- and upsampling, instance norm with affine weights, ``--in-channels`` in and ``--classes`` out, on a
``--patch`` cube (or D H W) with ``--batch``. MONAI's ``UNet`` uses ``--monai-res-units`` residual units
per level (its tutorials use 2; 0 is one strided conv per level), ``DynUNet`` nnU-Net's blocks (two convs
per level, the first strided). Ours pools with max pooling and has two convs per level, as the 2015 paper.

Reported: voxels per second of a training step (forward, cross-entropy, backward, AdamW step) and of
inference (``no_grad``, eval mode), medians over rounds that time every model once in an order rotated
each round (so slow spells of a shared machine hit them all alike); parameter counts; ours/MONAI ratios,
as a ratio of medians and paired round by round (median and quartiles of the per-round ratios).

    python benchmarks/bench_3d_model.py --patch 64 --batch 2 --rounds 5 --json results/3d_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unetkit import UNet
from unetkit.atomic import atomic_write, check_writable
from unetkit.bench.machine import machine_info


def build_models(widths: Sequence[int], in_channels: int, classes: int) -> dict[str, nn.Module]:
    """Our 3D UNet with these widths (doubling), 3x3x3 kernels, 2x pools and instance norm (MONAI's: add_monai)."""
    if any(b != 2 * a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"--widths must double at each level (our plain encoder's rule), not {list(widths)}")
    depth = len(widths)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (depth - 1)
    return {"unetkit": UNet(spatial_dims=3, in_channels=in_channels, num_classes=classes, base_channels=widths[0],
                            depth=depth, norm="instance", upsample="transpose", strides=strides,
                            kernel_sizes=[[3, 3, 3]] * depth)}


def add_monai(models: dict[str, nn.Module], widths: Sequence[int], in_channels: int, classes: int,
              res_units: int) -> None:
    """Add MONAI's UNet and DynUNet (MONAI is only needed for this comparison)."""
    from monai.networks.nets import DynUNet
    from monai.networks.nets import UNet as MonaiUNet

    depth = len(widths)
    norm = ("instance", {"affine": True})
    models["monai_unet"] = MonaiUNet(spatial_dims=3, in_channels=in_channels, out_channels=classes,
                                     channels=tuple(widths), strides=(2,) * (depth - 1), kernel_size=3,
                                     up_kernel_size=3, num_res_units=res_units, norm=norm)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (depth - 1)
    models["monai_dynunet"] = DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=classes,
                                      kernel_size=[[3, 3, 3]] * depth, strides=strides,
                                      upsample_kernel_size=strides[1:], filters=list(widths), norm_name=norm,
                                      res_block=False, deep_supervision=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds(steps: dict[str, Callable[[], None]], n: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Time each step ``n`` times, one of each per round, the order rotated every round (after ``warmup``)."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(ours_s: Sequence[float], theirs_s: Sequence[float]) -> dict[str, float]:
    """Our speed over theirs round by round (their time / ours, both timed in the same round): median and quartiles.

    Pairing by round cancels the slow spells of a shared machine that a ratio of two medians keeps.
    """
    r = sorted(b / a for a, b in zip(ours_s, theirs_s))
    if len(r) < 2:
        return {"median": r[0], "q1": r[0], "q3": r[0]}
    q1, med, q3 = statistics.quantiles(r, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="16,32,64,128", help="channels per level, doubling (default: 16,32,64,128)")
    p.add_argument("--patch", type=int, nargs="+", default=[64], help="patch size: one int (a cube) or D H W "
                                                                       "(default: 64)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default: 1)")
    p.add_argument("--classes", type=int, default=3, help="output channels (default: 3)")
    p.add_argument("--monai-res-units", type=int, default=2, help="MONAI UNet's residual units per level "
                                                                   "(default: 2)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per phase (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--phases", default="train,infer", help="comma list of train, infer (default: both)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    if args.json is not None:
        check_writable(args.json, "--json")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = args.patch * 3 if len(args.patch) == 1 else args.patch
    if len(patch) != 3:
        p.error(f"--patch takes one int or three (D H W), not {args.patch}")
    widths = [int(w) for w in args.widths.split(",")]
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = build_models(widths, args.in_channels, args.classes)
    add_monai(models, widths, args.in_channels, args.classes, args.monai_res_units)
    x = torch.randn(args.batch, args.in_channels, *patch, device=device)
    y = torch.randint(0, args.classes, (args.batch, *patch), device=device)
    voxels = args.batch * patch[0] * patch[1] * patch[2]
    report: dict[str, Any] = {"machine": machine_info(device), "widths": widths, "patch": patch,
                              "batch": args.batch, "monai_res_units": args.monai_res_units, "models": {}}
    train_steps: dict[str, Callable[[], None]] = {}
    infer_steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        report["models"][name] = {"params": sum(q.numel() for q in model.parameters())}

        def train(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        def infer(model: nn.Module = model) -> None:
            model.eval()
            with torch.no_grad():
                model(x)

        train_steps[name], infer_steps[name] = train, infer
    phases = [ph.strip() for ph in args.phases.split(",") if ph.strip()]
    for phase, steps in (("train", train_steps), ("infer", infer_steps)):
        if phase not in phases:
            continue
        times = rounds(steps, args.rounds, args.warmup, device)
        for name, ts in times.items():
            med = statistics.median(ts)
            report["models"][name][phase] = {"median_s": med, "voxels_per_s": voxels / med, "times_s": ts}
    ours = report["models"]["unetkit"]
    report["ratios"] = {f"{phase} vs {name}": ours[phase]["voxels_per_s"] / m[phase]["voxels_per_s"]
                        for name, m in report["models"].items() if name != "unetkit"
                        for phase in phases if phase in m}
    report["paired_ratios"] = {f"{phase} vs {name}": paired_ratio(ours[phase]["times_s"], m[phase]["times_s"])
                               for name, m in report["models"].items() if name != "unetkit"
                               for phase in phases if phase in m}
    info = report["machine"]
    print(f"{info.get('gpu') or info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads; patch "
          f"{'x'.join(map(str, patch))}, batch {args.batch}, widths {widths}, {args.rounds} rounds")
    print(f"{'model':<16}{'params':>12}" + "".join(f"{ph + ' Mvox/s':>16}" for ph in phases))
    for name, m in report["models"].items():
        cells = "".join(f"{m[ph]['voxels_per_s'] / 1e6:>16.3f}" for ph in phases if ph in m)
        print(f"{name:<16}{m['params']:>12,}{cells}")
    for k, v in report["ratios"].items():
        q = report["paired_ratios"][k]
        print(f"ours/MONAI {k}: {v:.2f}x (paired by round: median {q['median']:.3f}x, quartiles "
              f"{q['q1']:.3f}-{q['q3']:.3f}x)")
    if args.json is not None:
        text = json.dumps(report, indent=2)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
