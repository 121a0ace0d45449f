"""Throughput of ``SegmentationMetrics.update`` (pixels/s) at 512x512, 8 classes, batch 8.

Logits (argmax inside ``update``) and label maps, next to torchmetrics' ``MulticlassConfusionMatrix`` on
the same tensors. Prints a markdown table and writes ``benchmarks/results/metrics.json``.

    python benchmarks/bench_metrics.py [--iters 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetkit.bench import bench_metrics, format_metrics
from unetkit.cli.bench import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "metrics.json")
    args = parser.parse_args(argv)
    report = bench_metrics(size=args.size, num_classes=args.classes, batch=args.batch, iters=args.iters,
                           warmup=args.warmup, device=args.device)
    print(format_metrics(report, markdown=True))
    write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
