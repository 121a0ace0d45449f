"""Benchmark our UNet against segmentation_models.pytorch's Unet: ``unetkit bench`` with the documented setup.

Runs the default VGG16-UNet and the plain UNet (widths 64..1024) at 256x256, both memory layouts, with
``--compare smp``, and writes one JSON report per model to ``benchmarks/results/`` (or ``--out``). Extra
arguments go to ``unetkit bench`` (e.g. ``--iters 7``, ``--compile both``, ``--profile``).

    python benchmarks/bench_model.py                  # both models
    python benchmarks/bench_model.py --models vgg16   # one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetkit.cli.main import main as unetkit_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,plain", help="comma list of encoders")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for the JSON reports")
    parser.add_argument("--tag", default="", help="suffix of the JSON file names")
    args, extra = parser.parse_known_args(argv)
    code = 0
    for encoder in args.models.split(","):
        out = args.out / f"model_{encoder}{'_' + args.tag if args.tag else ''}.json"
        cmd = ["bench", "--encoder", encoder, "--compare", "smp", "--json", str(out), *extra]
        print("unetkit " + " ".join(cmd), flush=True)
        code = max(code, unetkit_main(cmd))
    return code


if __name__ == "__main__":
    sys.exit(main())
