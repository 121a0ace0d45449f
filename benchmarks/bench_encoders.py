"""A table of every registered encoder: parameters, forward FLOPs and forward latency at 256x256.

UNet with each name in ``unetkit.models.encoders.encoder_names()`` (weights ``None``), batch 1, eval mode
under ``torch.inference_mode``, NCHW and channels_last interleaved, medians. Prints markdown (the table in
docs/performance.md) and writes ``benchmarks/results/encoders.json``.

    python benchmarks/bench_encoders.py [--iters 5] [--size 256] [--encoders resnet18,vgg16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetkit.bench import bench_encoders, format_encoders_markdown
from unetkit.cli.bench import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--encoders", default=None, help="comma list (default: all registered)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "encoders.json")
    args = parser.parse_args(argv)
    names = args.encoders.split(",") if args.encoders else None
    report = bench_encoders(names, size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup,
                            device=args.device, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_encoders_markdown(report))
    write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
