"""Inference paths side by side: ``unetkit predict`` on the demo's 34 slices, the previous default against today's.

Each path segments every slice of the built-in ct-chest data (the 26 training and 8 validation slices,
128x128) with the run's ``best.pt`` exactly as ``unetkit predict`` does (sliding windows of the training
patch, padding as training pads), from decoded tensors, so file decoding and PNG writing are left out:

* ``previous``: the path ``unetkit predict`` took before: fp32, the model as loaded, 4 tiles per forward pass;
* ``fp32``: conv+BN folded and channels_last (``unetkit.infer.prepare_inference``), 16 tiles per pass;
* ``bf16``: the same under bf16 autocast, what ``--amp auto`` picks on a CPU with native bf16;
* ``onnx``: the exported ``.onnx`` (fp32) through ONNX Runtime, 16 tiles per pass (needs onnxruntime).

Paths run round-robin (``--rounds``), medians reported, with each path's agreement with ``previous`` (% of
identical pixels) and the images per second. The CPU model and thread count are printed.

    python benchmarks/bench_predict.py RUN_DIR [--rounds 5] [--threads N] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from unetkit.bench.machine import machine_info
    from unetkit.checkpoint import load_model
    from unetkit.data import CTChestDataset
    from unetkit.infer import predict, prepare_inference

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run directory or checkpoint trained on the demo (unetkit train)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, info, _ = load_model(args.run, "cpu")
    images = []
    for split in ("train", "val"):
        ds = CTChestDataset(split)
        ds.set_normalization(info.normalization)
        images += [ds[i][0] for i in range(len(ds))]
    tile, pad = info.patch_size, info.normalization.pad_value()
    example = images[0][None]
    fast, _ = prepare_inference(copy.deepcopy(model), example)
    paths: dict[str, tuple[Any, int, torch.dtype | None]] = {
        "previous": (model, 4, None), "fp32": (fast, 16, None), "bf16": (fast, 16, torch.bfloat16)}
    if not args.no_onnx:
        try:
            from unetkit.export import export_onnx
            from unetkit.export.runtime import OnnxModel

            onnx_path = Path(tempfile.mkdtemp()) / "demo.onnx"
            export_onnx(model, info, onnx_path)
            paths["onnx"] = (OnnxModel(onnx_path), 16, None)
        except ImportError as e:
            print(f"onnx path skipped: {e}")

    def run(name: str) -> tuple[float, list[torch.Tensor]]:
        net, batch, dtype = paths[name]
        t0 = time.perf_counter()
        out = [predict(net, x, tile_size=tile, batch_size=batch, pad_value=pad, autocast_dtype=dtype)
               for x in images]
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {k: [] for k in paths}
    masks: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for name in paths:  # warm-up
            run(name)
        for r in range(args.rounds):
            order = list(paths) if r % 2 == 0 else list(reversed(paths))
            for name in order:
                dt, out = run(name)
                times[name].append(dt)
                masks.setdefault(name, out)
    ref = masks["previous"]
    pixels = sum(m.numel() for m in ref)
    base = statistics.median(times["previous"])
    rows = []
    for name in paths:
        med = statistics.median(times[name])
        same = sum(int((a == b).sum()) for a, b in zip(masks[name], ref, strict=True)) / pixels
        rows.append({"path": name, "seconds": round(med, 4), "images_per_s": round(len(images) / med, 1),
                     "speedup": round(base / med, 2), "identical_pixels": round(same, 6)})
    info_m = machine_info()
    result = {"machine": info_m, "threads": torch.get_num_threads(), "images": len(images),
              "tile": list(tile) if tile else None, "rounds": args.rounds, "paths": rows}
    print(f"{info_m.get('cpu', '?')}, {torch.get_num_threads()} thread(s), torch {torch.__version__}: "
          f"{len(images)} slices, tile {tile}, median of {args.rounds} interleaved rounds")
    print(f"{'path':<10} {'seconds':>8} {'img/s':>8} {'speed-up':>9} {'identical':>10}")
    for row in rows:
        print(f"{row['path']:<10} {row['seconds']:8.3f} {row['images_per_s']:8.1f} {row['speedup']:8.2f}x "
              f"{100 * row['identical_pixels']:9.3f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
