"""``unetkit evaluate``: dataset-level metrics of a checkpoint on a test folder or a dataset's split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..device import DEVICE_HELP
from .main import CLIError
from .options import add_data_options, add_tta_option, data_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a trained model on a dataset",
        description="Evaluate a checkpoint (or a run directory: its best.pt) on whole images at their native "
                    "size, preprocessed as in training: per-class IoU, Dice, Boundary F1, precision, recall; "
                    "mIoU, mean Dice, pixel accuracy, over one confusion matrix of every pixel. A folder that "
                    "is not the training data and has no val/ is a test set and is scored whole.")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT", help="a run directory or a .pt checkpoint")
    p.add_argument("--split", choices=("all", "val", "train"), default=None,
                   help="which images to score (default: all of a test folder, else the validation split)")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8, help="images (or sliding windows) per forward pass "
                                                              "(default 8)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="autocast of the forward passes (logits and metrics stay fp32): auto (bf16/fp16 on CUDA, "
                        "bf16 on a CPU that runs it natively, else fp32), off (fp32), bf16, "
                        "fp16 (CUDA)")
    add_tta_option(p)
    p.add_argument("--no-boundary-f1", dest="boundary", action="store_false", help="skip Boundary F1")
    add_data_options(p, title="data: the model's own unless given; classes, channels and volume slicing must be "
                              "the model's")
    p.set_defaults(func=run)


def _same_data(a: str, b: str | None) -> bool:
    if b is None:
        return False
    pa, pb = Path(a), Path(b)
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def default_split(ckpt: dict[str, Any], data: str | None) -> str:
    """``all`` for a folder that is not the training data and has no ``val/`` (a test set), else ``val``."""
    from ..checkpoint import checkpoint_data_config

    trained_on = checkpoint_data_config(ckpt).source
    if data is None or _same_data(data, trained_on):
        return "val"
    folder = Path(data)
    return "all" if folder.is_dir() and not (folder / "val").is_dir() else "val"


def dataset_for(ckpt: dict[str, Any], data: str | None, split: str, **overrides: Any) -> Any:
    """The split of ``data`` (default: the training data), preprocessed as the checkpoint was trained."""
    from ..checkpoint import checkpoint_datasets, checkpoint_test_set

    if split == "all":
        return checkpoint_test_set(ckpt, data, **overrides)
    train, val = checkpoint_datasets(ckpt, data, **overrides)
    ds = val if split == "val" else train
    if ds is None:
        raise CLIError(f"{data or ckpt['config']['data']}: no validation split; pass --split all or train, or a "
                       "folder with val/")
    return ds


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write, check_writable
    from ..checkpoint import checkpoint_data_config, load_model
    from ..device import resolve_amp, resolve_device
    from ..evaluate import evaluate

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json:
        check_writable(args.json, "--json")  # before the evaluation, not after it
    from ..inference import Predictor

    device = resolve_device(args.device)
    resolve_amp(args.amp, device)  # before the model loads: a bad --amp fails at once
    overrides = data_flags(args)
    data = overrides.pop("source", None)
    model, info, ckpt = load_model(args.checkpoint, device)
    predictor = Predictor(model, info, device=device, amp=args.amp, tta=args.tta, batch_size=args.batch_size)
    split = args.split or default_split(ckpt, data)
    ds = dataset_for(ckpt, data, split, **overrides)
    result = evaluate(predictor, ds, boundary=args.boundary)
    if getattr(ds, "spatial_dims", 2) == 3:
        scored = f"{len(ds.cases)} volumes, {result.pixels:,} voxels"
    elif hasattr(ds, "cases"):
        scored = f"{len(ds.cases)} volumes ({result.images} slices), {result.pixels:,} pixels"
    else:
        scored = f"{result.images} images, {result.pixels:,} pixels"
    source = data or checkpoint_data_config(ckpt).source
    print(f"{ckpt['path']} on {source} ({split} split): scored {scored} "
          f"({predictor.describe()}; {predictor.tiling()})")
    print(result.table())
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=2)))
        print(f"wrote {args.json}")
    return 0
