"""``unetkit train``: train a UNet; with no arguments, the ct-chest demo."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any

from ..train import TrainConfig

#: Help for each option, grouped as the --help page shows them.
HELP: dict[str, dict[str, str]] = {
    "data": {
        "data": "a built-in dataset (ct-chest, shapes) or a folder with images/ and masks/ (default: ct-chest)",
        "num_classes": "number of classes (default: inferred from the masks or classes.yaml)",
        "in_channels": "image channels (default: inferred from the images)",
        "ignore_index": "mask value excluded from loss and metrics",
        "val_fraction": "fraction held out for validation when the folder has no val/",
    },
    "model": {
        "encoder": "plain, vgg16, vgg16_bn, resnet18/34/50, resnext50_32x4d, mobilenet_v3_large/small, "
                   "efficientnet_b0..b4, swin_t, convnext_tiny or timm:<name>",
        "encoder_weights": "None, imagenet (torchvision's weights) or a local .pth/.safetensors file",
        "freeze_encoder": "train the decoder only",
        "base_channels": "width of the plain encoder's first stage (doubles each stage)",
        "depth": "number of encoder stages",
        "upsample": "transpose, bilinear or pixelshuffle",
        "skip": "crop, pool, interpolate or pad: how skips are matched at odd sizes",
        "norm": "batch or none",
        "attention": "self: self-attention at the bottleneck",
        "deep_supervision": "auxiliary losses on every decoder stage",
        "multiscale_fusion": "fuse every decoder stage's prediction",
    },
    "augmentation (training only)": {
        "augment": "turn all augmentation on/off",
        "hflip": "probability of a horizontal flip (off by default: it swaps left and right anatomy)",
        "vflip": "probability of a vertical flip",
        "rotate": "maximum rotation in degrees",
        "scale": "zoom range, two numbers",
        "elastic": "probability of an elastic deformation",
        "color_jitter": "brightness/contrast jitter strength",
        "crop_size": "random crop size in pixels",
    },
    "optimisation": {
        "epochs": "number of epochs",
        "batch_size": "images per step per process",
        "lr": "peak learning rate",
        "weight_decay": "weight decay",
        "optimizer": "adamw, adam or sgd",
        "scheduler": "cosine, poly, plateau (halve on a val-mIoU plateau) or none",
        "warmup_epochs": "linear warm-up epochs (cosine/poly)",
        "plateau_patience": "epochs without improvement before the plateau scheduler halves the lr",
        "loss": "ce, dice, ce+dice, bce, bce+dice, focal or tversky",
        "class_weights": "per-class loss weights (CE weight / focal alpha / BCE pos_weight)",
        "grad_clip": "clip the gradient norm to this (0 disables)",
        "grad_accum": "accumulate gradients over this many batches",
        "amp": "mixed precision: auto (bf16/fp16 on CUDA, fp32 on CPU), off, fp16 or bf16",
        "early_stopping": "stop after this many epochs without a better val mIoU",
    },
    "hardware and reproducibility": {
        "seed": "random seed",
        "deterministic": "deterministic kernels (slower on GPU)",
        "device": "auto, cpu, cuda or cuda:N",
        "num_workers": "data-loading processes (default: 0 on CPU, 4 on GPU)",
        "channels_last": "NHWC memory layout (measured faster for training on CPU, as on recent GPUs)",
        "sync_bn": "synchronise BatchNorm statistics across processes (DDP)",
    },
    "outputs": {
        "out": "run directory (default: runs/<timestamp>)",
        "samples": "validation images drawn in samples/epoch_XXX.png",
        "boundary_f1": "compute Boundary F1 for the final report",
    },
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, hints: dict[str, Any], help_: str) -> None:
    hint = hints[f.name]
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    default = f.default if f.default is not dataclasses.MISSING else None
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{help_} (default: {default})"}
    if base is bool:
        group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(base) is tuple:
        group.add_argument(_flag(f.name), type=float, nargs=2, metavar=("LOW", "HIGH"), **kw)
    elif typing.get_origin(base) is list:
        group.add_argument(_flag(f.name), type=float, nargs="+", metavar="W", **kw)
    else:
        kind = base if base in (int, float) else _none_or_str
        group.add_argument(_flag(f.name), type=kind, metavar=f.name.upper(), **kw)


def _none_or_str(value: str) -> str | None:
    return None if value.lower() in ("none", "null") else value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (no arguments: a demo on a real chest CT)",
        description="Train a UNet. With no arguments it trains on the embedded ct-chest CT slices and "
                    "writes runs/<timestamp>/ with checkpoints, metrics.csv, curves.png, sample overlays and "
                    "report.html. Options come from --config FILE.yaml and flags (flags win).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last.pt")
    p.add_argument("--devices", type=int, metavar="N",
                   help="launch N local processes with torchrun (DDP); or start under torchrun yourself")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for title, entries in HELP.items():
        group = p.add_argument_group(title)
        for name, text in entries.items():
            _add_field(group, fields[name], hints, text)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then flags."""
    base = TrainConfig.from_yaml(args.config).to_dict() if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    if "grad_clip" in flags and not flags["grad_clip"]:
        flags["grad_clip"] = None
    return TrainConfig.from_dict({**base, **flags}, where=args.config or "flags")


def run(args: argparse.Namespace) -> int:
    if args.devices and args.devices > 1 and "WORLD_SIZE" not in os.environ:
        from ..train.distributed import launch_local

        argv = list(sys.argv[1:])
        i = argv.index("--devices")
        return launch_local(args.devices, argv[:i] + argv[i + 2:])
    from ..train import fit

    cfg = config_from_args(args)
    given_epochs = "epochs" in vars(args)
    result = fit(cfg if (args.resume is None or given_epochs) else None, resume=args.resume,
                 progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: best val mIoU {result.best_miou:.4f} at epoch {result.best_epoch}")
        if result.final is not None:
            print(result.final.table())
        print(f"run directory: {result.run_dir}\nreport: {result.run_dir / 'report.html'}")
    return 0
