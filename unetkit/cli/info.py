"""``unetkit info``: a model summary (per-stage shapes, parameters, FLOPs) or the encoder catalogue."""

from __future__ import annotations

import argparse

from ..models import UNet, summary
from .options import add_model_options, model_config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="model summary, or the list of encoders",
        description="Print a model's stages with output shapes, parameters and forward FLOPs: of a "
                    "checkpoint, or of a model built from the options (defaults: UNetConfig's, as UNet() "
                    "builds; 'unetkit plan DATA' shows the width and depth training would plan for your data). "
                    "--encoders lists every encoder.")
    p.add_argument("checkpoint", nargs="?", metavar="RUN_DIR|CKPT", help="summarise this trained model")
    p.add_argument("--encoders", action="store_true",
                   help="list encoders: parameters, stage channels, reductions, ImageNet weights cached?")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="PX",
                   help="input size for the summary: one side, or H W (D H W for a 3D model) (default: 256, "
                        "64 in 3D)")
    add_model_options(p, suppress=False, title="model (when no checkpoint is given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.encoders:
        from ..models.encoders import format_encoders

        print(format_encoders())
        return 0
    if args.checkpoint:
        from ..checkpoint import load_model

        model, info, ckpt = load_model(args.checkpoint)
        print(f"{ckpt['path']}: {info.num_classes} classes ({', '.join(info.class_names)}), "
              f"{info.in_channels} input channel(s)")
    else:
        model = UNet(model_config_from_args(args))
    nd = model.config.spatial_dims
    size = args.size or [256 if nd == 2 else 64]
    if len(size) not in (1, nd):
        raise ValueError(f"--size takes one side or {nd} sizes for a {nd}D model, not {size}")
    summary(model, (1, model.config.in_channels, *(size * nd if len(size) == 1 else size)))
    return 0
