"""``unetkit predict``: segment image files with a checkpoint or an exported ``.onnx`` model.

For each input ``<stem>.<ext>`` it writes, into ``--out``: ``<stem>_mask.png`` (palette PNG, pixel value
= class index, palette = class colours, at the image's size), ``<stem>_overlay.png`` (the image with the
classes blended in and a class legend underneath; small images enlarged by a whole factor, up to 512 pixels)
and with ``--probs`` ``<stem>_probs.npy`` (float32 ``(C, H, W)``). Volumes (NIfTI, NRRD, MetaImage files,
DICOM series folders) given to a model trained on volumes give one label volume each, ``<case>.nii.gz`` /
``.nrrd`` / ``.mha`` as the input (NIfTI for DICOM) with the scan's geometry. Inputs that cannot be used
(unreadable, a channel count the model cannot take) are reported and skipped, every other output is
written, and the exit code is 1 when any failed. The work is :meth:`unetkit.inference.Predictor.predict_folder`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..device import DEVICE_HELP
from .main import CLIError
from .options import add_tta_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images with a checkpoint or an .onnx model",
        description="Segment image files (any size) with a checkpoint (.pt or run directory) or a model "
                    "exported by 'unetkit export' (.onnx, INT8 included). INPUTS are files, folders (their "
                    "images) or glob patterns. Writes <stem>_mask.png (palette PNG, value = class), "
                    "<stem>_overlay.png and, with --probs, <stem>_probs.npy into --out.")
    p.add_argument("model", metavar="CKPT|MODEL.onnx", help="checkpoint file, run directory or .onnx file")
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not hold the inputs)")
    p.add_argument("--tile", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window tile size: one number, or H W (a 3D model: D H W) (default: the training "
                        "patch size stored in the model, else the whole image at once)")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction in [0, 1) (default 0.5)")
    add_tta_option(p)
    p.add_argument("--probs", action="store_true", help="also write class probabilities as <stem>_probs.npy")
    p.add_argument("--batch-size", type=int, default=16, help="tiles (or volume slices) per forward pass (default 16)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="autocast of a checkpoint's forward passes (probabilities stay fp32): auto (bf16/fp16 on "
                        "CUDA, bf16 on a CPU that runs it natively, else fp32), off (fp32), "
                        "bf16, fp16 (CUDA); an .onnx model runs as exported")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import Predictor

    if args.tile is not None and (min(args.tile) < 1 or len(args.tile) > 3):
        raise CLIError(f"--tile takes one, two (H W) or three (D H W, a 3D model) positive sizes, got "
                       f"{' '.join(map(str, args.tile))}")
    if not 0 <= args.overlap < 1:
        raise CLIError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    from ..inference.folder import check_outputs, expand_inputs

    out = Path(args.out)
    check_outputs(expand_inputs(args.inputs), out)  # before the model loads: a bad path fails at once
    tile = None if args.tile is None else (tuple(args.tile) if len(args.tile) > 1 else args.tile[0])
    predictor = Predictor.load(args.model, device=args.device, amp=args.amp, tile=tile, overlap=args.overlap,
                               tta=args.tta, batch_size=args.batch_size)
    result = predictor.predict_folder(args.inputs, out, probs=args.probs, alpha=args.alpha,
                                      progress=not args.no_progress)
    what = f"{result.images} image(s)" if not result.volumes else f"{result.volumes + result.images} volume(s)"
    rate = f", {result.done / result.seconds:.1f}/s" if result.done and result.seconds > 0 else ""
    summary = (f"predicted {result.done} of {what} into {out} in {result.seconds:.1f} s{rate} "
               f"({predictor.describe()}; {predictor.tiling()})")
    if result.failed:
        print(f"{summary}; {len(result.failed)} failed:", file=sys.stderr)
        for f, why in result.failed:
            print(f"  {f}: {why}", file=sys.stderr)
        return 1
    print(summary)
    return 0
