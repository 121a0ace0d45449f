"""``unetkit evaluate``: dataset-level metrics of a checkpoint on a test folder or a dataset's split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .main import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="metrics of a trained model on a dataset",
        description="Evaluate a checkpoint (or a run directory: its best.pt) on whole images at their native "
                    "size, preprocessed as in training: per-class IoU, Dice, Boundary F1, precision, recall; "
                    "mIoU, mean Dice, pixel accuracy, over one confusion matrix of every pixel. A folder that "
                    "is not the training data and has no val/ is a test set and is scored whole.")
    p.add_argument("checkpoint", metavar="RUN_DIR|CKPT", help="a run directory or a .pt checkpoint")
    p.add_argument("--data", metavar="DIR|NAME",
                   help="dataset folder or built-in name (default: the one the model was trained on)")
    p.add_argument("--split", choices=("all", "val", "train"), default=None,
                   help="which images to score (default: all of a test folder, else the validation split)")
    p.add_argument("--json", metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="autocast of the forward passes (logits and metrics stay fp32): auto (bf16/fp16 on CUDA, "
                        "bf16 on a CPU that runs it natively, else fp32), off (fp32), bf16, "
                        "fp16 (CUDA)")
    p.add_argument("--no-boundary-f1", dest="boundary", action="store_false", help="skip Boundary F1")
    p.set_defaults(func=run)


def _same_data(a: str, b: str | None) -> bool:
    if b is None:
        return False
    pa, pb = Path(a), Path(b)
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def default_split(ckpt: dict[str, Any], data: str | None) -> str:
    """``all`` for a folder that is not the training data and has no ``val/`` (a test set), else ``val``."""
    trained_on = (ckpt.get("config") or {}).get("data")
    if data is None or _same_data(data, trained_on):
        return "val"
    folder = Path(data)
    return "all" if folder.is_dir() and not (folder / "val").is_dir() else "val"


def dataset_for(ckpt: dict[str, Any], data: str | None, split: str) -> Any:
    """The split of ``data`` (default: the training data), preprocessed as the checkpoint was trained."""
    from ..checkpoint import DataInfo, checkpoint_datasets
    from ..data import BUILTIN_DATASETS, FolderDataset
    from ..data.volumes import VolumeSliceDataset, is_volume_folder, scan_volumes

    if split == "all":
        name = data or (ckpt.get("config") or {}).get("data")
        if name is None or name.lower() in BUILTIN_DATASETS:
            raise CLIError("--split all: built-in datasets have fixed splits; use --split val or train")
        info = DataInfo.from_dict(ckpt["data"])
        if is_volume_folder(name):
            if info.volume is None:
                raise CLIError(f"{name}: a volume folder, but the model was trained on 2D images; evaluate it with "
                               "a model trained on volumes")
            v = info.volume
            scan = scan_volumes(name, num_classes=info.num_classes, ignore_index=info.ignore_index,
                                val_fraction=0.0, context=v.context, slice_axis=v.slice_axis,
                                spacing=v.spacing or "native")
            ds = VolumeSliceDataset(scan, "all")
        else:
            ds = FolderDataset(name, split="all", num_classes=info.num_classes, in_channels=info.in_channels,
                               ignore_index=info.ignore_index, val_fraction=0.0)
        ds.set_normalization(info.normalization)
        return ds
    train, val = checkpoint_datasets(ckpt, data)
    ds = val if split == "val" else train
    if ds is None:
        raise CLIError(f"{data or ckpt['config']['data']}: no validation split; pass --split all or train, or a "
                       "folder with val/")
    return ds


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write, check_writable
    from ..checkpoint import load_model
    from ..device import describe_amp, resolve_amp, resolve_device
    from ..evaluate import evaluate

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json:
        check_writable(args.json, "--json")  # before the evaluation, not after it
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)  # before the model loads: a bad --amp fails at once
    model, info, ckpt = load_model(args.checkpoint, device)
    split = args.split or default_split(ckpt, args.data)
    ds = dataset_for(ckpt, args.data, split)
    data = args.data or ckpt["config"]["data"]
    result = evaluate(model, ds, num_classes=info.num_classes, ignore_index=info.ignore_index,
                      boundary=args.boundary, batch_size=args.batch_size, device=device,
                      class_names=info.class_names, tile_size=info.patch_size,
                      pad_value=info.normalization.pad_value(),
                      autocast_dtype=amp)
    scored = (f"{len(ds.cases)} volumes ({result.images} slices)" if hasattr(ds, "cases")
              else f"{result.images} images")
    print(f"{ckpt['path']} on {data} ({split}): scored {scored}, {result.pixels:,} pixels "
          f"({describe_amp(args.amp, amp, device)})")
    print(result.table())
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(result.to_json(), indent=2)))
        print(f"wrote {args.json}")
    return 0
