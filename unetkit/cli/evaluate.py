"""``unetkit evaluate``: dataset-level metrics of a checkpoint on a dataset's validation split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..checkpoint import checkpoint_datasets, load_model
from ..device import resolve_device
from ..evaluate import evaluate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a trained model on a dataset",
        description="Evaluate a checkpoint (or a run directory: its best.pt) on the validation split of a "
                    "dataset: per-class IoU, Dice, Boundary F1, precision, recall; mIoU, mean Dice, pixel "
                    "accuracy. The images are normalised as the model was trained.")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT", help="a run directory or a .pt checkpoint")
    p.add_argument("--data", metavar="DIR|NAME",
                   help="dataset folder or built-in name (default: the one the model was trained on)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to evaluate")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-boundary-f1", dest="boundary", action="store_false", help="skip Boundary F1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, info, ckpt = load_model(args.checkpoint, device)
    train, val = checkpoint_datasets(ckpt, args.data)
    data = args.data or ckpt["config"]["data"]
    ds = val if args.split == "val" else train
    if ds is None:
        raise ValueError(f"{data}: no validation split; pass --split train or a folder with val/")
    result = evaluate(model, ds, num_classes=info.num_classes, ignore_index=info.ignore_index,
                      boundary=args.boundary, batch_size=args.batch_size, device=device,
                      class_names=info.class_names,
                      autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    print(f"{ckpt['path']} on {data} ({args.split}, {len(ds)} images)")
    print(result.table())
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=2)))
        print(f"wrote {args.json}")
    return 0
