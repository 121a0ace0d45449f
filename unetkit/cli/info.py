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
    p.add_argument("--size", type=int, nargs="+", default=[256], metavar="PX",
                   help="input height (and width) for the summary")
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
    h = args.size[0]
    w = args.size[1] if len(args.size) > 1 else h
    summary(model, (1, model.config.in_channels, h, w))
    return 0
