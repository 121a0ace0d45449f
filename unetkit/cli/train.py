"""``unetkit train``: train a UNet; with no arguments, the ct-chest demo."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from ..train import TrainConfig
from ..train.config import DATA_MODEL_FIELDS, GROUPS
from .options import add_data_options, add_field, add_model_options, data_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (no arguments: a demo on a real chest CT)",
        description="Train a UNet. With no arguments it trains on the embedded ct-chest CT slices and "
                    "writes runs/<timestamp>/ with checkpoints, metrics.csv, curves.png, sample overlays and "
                    "report.html. Options come from --config FILE.yaml and flags (flags win).",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a run folder that holds an earlier run, replacing its files")
    p.add_argument("--devices", type=int, metavar="N",
                   help="launch N local processes with torchrun (DDP); or start under torchrun yourself")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)  # earlier name
    p.add_argument("--verbose", action="store_true", help="a line for every epoch, not only those that validate")
    add_train_options(p)
    p.set_defaults(func=run)


#: The groups ``unetkit plan`` takes: what the plan depends on (not optimisation, hardware or outputs).
PLAN_GROUPS = ("data", "model", "patch_size", "augment")
#: Options of other groups that the plan reads too.
PLAN_ALSO = ("seed", "device")


def add_train_options(p: argparse.ArgumentParser, plan_only: bool = False) -> None:
    """Every :class:`TrainConfig` option (model and data options included) as a flag, grouped as in the config;
    ``plan_only``: those the plan depends on (``unetkit plan``)."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    current = "data"
    group = p
    for f in dataclasses.fields(TrainConfig):
        if f.name == "data":
            add_data_options(p)
        elif f.name == "model":
            add_model_options(p, suppress=True, skip=(*DATA_MODEL_FIELDS, "spatial_dims"), defaults=defaults.model)
        else:
            if f.name in GROUPS:
                current = f.name
                if not plan_only or current in PLAN_GROUPS:
                    group = p.add_argument_group(GROUPS[f.name])
            if plan_only and current not in PLAN_GROUPS and f.name not in PLAN_ALSO:
                continue
            if plan_only and current not in PLAN_GROUPS:
                group = p
            add_field(group, f, hints[f.name], default=getattr(defaults, f.name), suppress=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then flags."""
    from ..models.config import field_names

    known = ({f.name for f in dataclasses.fields(TrainConfig)} | set(field_names())) - {"data"}
    flags = {k: v for k, v in vars(args).items() if k in known}
    if "grad_clip" in flags and not flags["grad_clip"]:
        flags["grad_clip"] = None
    data = data_flags(args)
    TrainConfig.from_dict({**flags, "data": data}, where="flags")  # a bad flag is blamed on the flag, not the file
    base = TrainConfig.from_yaml(args.config).to_dict() if args.config else {}
    merged = {**base, **flags, "data": {**(base.get("data") or {}), **data}}
    return TrainConfig.from_dict(merged, where=args.config or "flags")


def run(args: argparse.Namespace) -> int:
    if args.devices and args.devices > 1 and "WORLD_SIZE" not in os.environ:
        from ..train.distributed import launch_local

        argv = list(sys.argv[1:])
        i = argv.index("--devices")
        return launch_local(args.devices, argv[:i] + argv[i + 2:])
    from ..train import fit
    from ..train.distributed import cleanup_distributed

    cfg = config_from_args(args)
    longer = "epochs" in vars(args) or "time" in vars(args)  # a resumed run may be extended
    if args.resume is not None:
        from ..data.config import field_names as data_field_names
        from ..models.config import field_names

        options = set(cfg.to_dict()) | set(field_names()) | set(data_field_names())
        other = sorted(set(vars(args)) & options - {"epochs", "time"})
        if other or args.config:
            given = ", ".join(f"--{n.replace('_', '-')}" for n in other) or "--config"
            raise ValueError(f"--resume continues {args.resume} with its own data and options; {given} cannot "
                             "change them (only --epochs and --time extend a run): drop it, or start a new run")
    try:
        result = fit(cfg if (args.resume is None or longer) else None, resume=args.resume,
                     progress=not args.no_progress, overwrite=args.overwrite, verbose=args.verbose)
    finally:  # leave the process group before exit: gloo's threads abort the process if torn down live
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: best val mIoU {result.best_miou:.4f} at epoch {result.best_epoch} (validation split, whole "
              "images in the training patch's sliding windows, the training precision)")
        if result.final is not None:
            print(result.final.table())
        print(f"run directory: {result.run_dir}\nreport: {result.run_dir / 'report.html'}")
    return 0
