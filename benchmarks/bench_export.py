"""Latency and accuracy of PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8, on a ct-chest model.

One run: train a UNet on the real ``ct-chest`` slices (or load ``--checkpoint``), export it to ONNX,
quantize it statically in several ways (QDQ / QOperator, per-channel / per-tensor, reduce_range,
head in float or not), then

* accuracy: mIoU on the ct-chest validation split (8 slices, 128x128) and argmax agreement with ORT fp32;
* latency: batch 1 at 256x256 and 512x512 (a validation slice resized), median of ``--repeats`` timed
  runs after ``--warmup`` untimed ones. The ONNX Runtime models are timed in interleaved rounds in one
  process (thread spinning off), so on a shared, noisy machine their ratios stay comparable even when
  absolute times drift; PyTorch eager is timed just before them, on its own.

Prints a markdown table and writes the numbers as JSON. Goal: INT8 >= 1.8x faster than ORT fp32 with
an mIoU drop <= 0.5 points.

    python benchmarks/bench_export.py                        # trains ~150 steps first (minutes on a CPU)
    python benchmarks/bench_export.py --checkpoint runs/x/best.pt --sizes 256 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unetkit import UNet
from unetkit.checkpoint import DataInfo, load_model, save_checkpoint
from unetkit.data import get_datasets
from unetkit.export import export_onnx, quantize_int8
from unetkit.metrics import SegmentationMetrics

#: INT8 variants: name -> quantize_int8 keyword arguments.
VARIANTS: dict[str, dict[str, Any]] = {
    "int8 qdq per-channel": {},
    "int8 qdq per-tensor": {"per_channel": False},
    "int8 qdq per-channel reduce_range": {"reduce_range": True},
    "int8 qoperator per-channel": {"quant_format": "qoperator"},
    "int8 qdq per-channel, head quantized": {"keep_head_fp32": False},
}


def train_model(steps: int, base_channels: int, depth: int, seed: int = 0) -> tuple[UNet, DataInfo]:
    """A plain training loop on ct-chest: AdamW, one-cycle LR, random flips, batch 8, cross-entropy."""
    train, val = get_datasets("ct-chest")
    torch.manual_seed(seed)
    model = UNet(num_classes=train.num_classes, in_channels=train.in_channels, base_channels=base_channels,
                 depth=depth)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(train), (8,), generator=g)
        xb, yb = x[idx], y[idx]
        if torch.rand((), generator=g) < 0.5:
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = F.cross_entropy(model(xb), yb, ignore_index=train.ignore_index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval(), DataInfo.from_dataset(train)


def pt2e_runners(model: UNet, calib: list[torch.Tensor]) -> dict[str, Any]:
    """``torch.compile`` (Inductor, frozen weights) of the fp32 model and of its PT2E INT8 version."""
    import torch._inductor.config as inductor_config

    from unetkit.export import quantize_pt2e

    q = quantize_pt2e(model, calib)  # raises ImportError without torchao
    inductor_config.freezing = True
    compiled = {"pytorch compiled fp32": torch.compile(model, dynamic=False),
                "pytorch PT2E int8 compiled": torch.compile(q, dynamic=False)}

    def make(fn: Any) -> Any:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return fn(torch.from_numpy(x)).numpy()
        return run

    return {name: make(fn) for name, fn in compiled.items()}


def ort_session(path: Path, threads: int, level: str = "all") -> Any:
    """The library's one session builder (no busy-waiting: interleaved timings do not contend)."""
    from unetkit.export.runtime import ort_session as build

    return build(path, threads=threads, optimize=level)


def accuracy(run: Any, val: Any, num_classes: int) -> tuple[float, np.ndarray]:
    """mIoU on the validation split and the predicted labels (for agreement)."""
    m = SegmentationMetrics(num_classes, val.ignore_index)
    preds = []
    for i in range(len(val)):
        x, mask = val[i]
        labels = run(x[None].numpy()).argmax(1)
        m.update(torch.from_numpy(labels), mask[None])
        preds.append(labels)
    return float(m.compute()["miou"]), np.concatenate(preds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training one")
    ap.add_argument("--steps", type=int, default=150, help="training steps when no checkpoint (default 150)")
    ap.add_argument("--base-channels", type=int, default=16, help="UNet width when training (default 16)")
    ap.add_argument("--depth", type=int, default=5, help="UNet depth when training (default 5)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square input sizes to time")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per model and size (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (torch and ORT)")
    ap.add_argument("--out-dir", default=None, help="where models and the JSON go (default: a new temp folder)")
    ap.add_argument("--json", default=None, help="JSON result path (default: OUT_DIR/bench_export.json)")
    ap.add_argument("--no-pt2e", action="store_true", help="skip the PyTorch-native PT2E rows (torchao + inductor)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="unetkit-bench-export-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        model, info, _ = load_model(args.checkpoint)
        source = f"checkpoint {args.checkpoint}"
    else:
        print(f"training UNet(base_channels={args.base_channels}, depth={args.depth}) on ct-chest for "
              f"{args.steps} steps", flush=True)
        t0 = time.perf_counter()
        model, info = train_model(args.steps, args.base_channels, args.depth)
        train_s = time.perf_counter() - t0
        source = f"trained here: {args.steps} steps, {train_s:.0f} s"
        save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(), "data": info.to_dict(),
                         "config": {"data": "ct-chest"}}, out_dir / "model.pt")
    params = sum(p.numel() for p in model.parameters())
    train, val = get_datasets("ct-chest", mean=info.mean, std=info.std)

    fp32 = out_dir / "model.onnx"
    export_onnx(model, info, fp32)
    calib = [train[i][0] for i in range(len(train))]
    paths = {}
    for name, kwargs in VARIANTS.items():
        paths[name] = out_dir / f"model.{name.replace(' ', '_').replace(',', '')}.onnx"
        t0 = time.perf_counter()
        r = quantize_int8(fp32, paths[name], calib, **kwargs)
        print(f"quantized {name}: {r.convs_qdq + r.convs_qlinear} convs INT8, {r.convs_float} float "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)

    # Runners: name -> callable on a numpy (1, C, H, W) batch returning numpy logits.
    def torch_run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    runners: dict[str, Any] = {"pytorch eager fp32": torch_run}
    torch_names = ["pytorch eager fp32"]
    if not args.no_pt2e:
        try:
            runners.update(pt2e_runners(model, calib))
            torch_names = list(runners)
        except ImportError as e:
            print(f"PT2E rows skipped: {e}")
    sessions = {"onnxruntime fp32": ort_session(fp32, args.threads)}
    sessions.update({name: ort_session(p, args.threads) for name, p in paths.items()})
    sessions["int8 qdq per-channel, graph opt basic"] = ort_session(paths["int8 qdq per-channel"], args.threads,
                                                                    "basic")
    for name, s in sessions.items():
        runners[name] = (lambda sess: (lambda x: sess.run(None, {sess.get_inputs()[0].name: x})[0]))(s)

    rows: dict[str, dict[str, Any]] = {}
    _, ref_labels = accuracy(runners["onnxruntime fp32"], val, info.num_classes)
    for name, run in runners.items():
        miou, labels = accuracy(run, val, info.num_classes)
        rows[name] = {"miou": miou, "agreement": float((labels == ref_labels).mean()), "latency_ms": {}}

    for size in args.sizes:
        x = F.interpolate(val[0][0][None], size=(size, size), mode="bilinear", align_corners=False).numpy()
        times: dict[str, list[float]] = {n: [] for n in runners}
        # PyTorch first, on its own: its OpenMP threads keep spinning after a call and would slow ORT.
        groups = [torch_names, [n for n in runners if n not in torch_names]]
        for group in groups:
            for name in group:
                for _ in range(args.warmup):
                    runners[name](x)
            for _ in range(args.repeats):  # interleaved rounds: every model sees the same machine load
                for name in group:
                    t0 = time.perf_counter()
                    runners[name](x)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name in runners:
            rows[name]["latency_ms"][size] = statistics.median(times[name])
        print(f"timed {size}x{size}", flush=True)

    base = rows["onnxruntime fp32"]
    lines = ["| model | mIoU | ΔmIoU (points) | agreement | "
             + " | ".join(f"{s}x{s} ms" for s in args.sizes) + " | "
             + " | ".join(f"speed-up {s}" for s in args.sizes) + " |",
             "|---|---|---|---|" + "---|" * (2 * len(args.sizes))]
    for name, r in rows.items():
        r["miou_delta_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup_vs_ort_fp32"] = {s: base["latency_ms"][s] / r["latency_ms"][s] for s in args.sizes}
        lines.append(f"| {name} | {r['miou']:.4f} | {r['miou_delta_points']:+.2f} | {r['agreement']:.4f} | "
                     + " | ".join(f"{r['latency_ms'][s]:.1f}" for s in args.sizes) + " | "
                     + " | ".join(f"{r['speedup_vs_ort_fp32'][s]:.2f}x" for s in args.sizes) + " |")
    table = "\n".join(lines)
    best = rows["int8 qdq per-channel"]
    met = all(best["speedup_vs_ort_fp32"][s] >= 1.8 for s in args.sizes) and best["miou_delta_points"] >= -0.5
    import onnxruntime as ort

    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
           f"torch {torch.__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}")
    header = (f"UNet base_channels={model.config.base_channels} depth={model.config.depth} "
              f"({params / 1e6:.2f} M parameters), {source}; batch 1, median of {args.repeats} after "
              f"{args.warmup} warm-up; {env}")
    print()
    print(header)
    print()
    print(table)
    print()
    print(f"goal (default INT8 >= 1.8x ORT fp32 at every size, mIoU drop <= 0.5 points): {'met' if met else 'NOT met'}")
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "model_config": model.config.to_dict(), "parameters": params, "source": source, "environment": env,
              "sizes": args.sizes, "repeats": args.repeats, "warmup": args.warmup, "rows": rows,
              "goal_met": met, "table": table}
    json_path = Path(args.json) if args.json else out_dir / "bench_export.json"
    json_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
