"""``unetkit bench``: training and inference speed against the machine's matmul peak and smp's Unet.

Three suites: ``model`` (default: train step, batch-1 latency, batch-N throughput, FLOPs, memory, fraction
of the fp32 matmul peak, optional comparison with segmentation_models.pytorch), ``metrics``
(``SegmentationMetrics.update`` pixels/s) and ``encoders`` (params and forward latency of every encoder).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..device import DEVICE_HELP, resolve_amp, resolve_device
from .main import CLIError
from .options import add_model_options, model_config_from_args

if TYPE_CHECKING:
    import torch

    from ..models.config import UNetConfig


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Adds each flag's default to its help, unless the help names it already (the model flags do)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``unetkit bench``."""
    p = sub.add_parser(
        "bench", help="benchmark training/inference speed (optionally against smp's Unet)",
        description="Measure a training step (images/s), batch-1 latency and batch-N throughput, peak "
                    "memory, forward FLOPs, achieved GFLOP/s and the fraction of the fp32 matmul peak "
                    "measured in the same run. Variants (models, layouts, precisions, compile) are timed "
                    "round-robin; numbers are medians. The model flags are those of 'unetkit train' (default: "
                    "the plain UNet at the paper's widths). --suite predict times a trained run's inference "
                    "paths (eager, folded fp32, bf16/fp16, compile, ONNX Runtime fp32 and INT8) side by side. "
                    "Examples: unetkit bench --encoder vgg16 --compare smp --amp off,bf16 --json bench.json; "
                    "unetkit bench --suite predict --run runs/demo",
        formatter_class=_DefaultsOnce)
    p.add_argument("--suite", choices=("model", "metrics", "encoders", "predict"), default="model",
                   help="what to benchmark; predict: a trained run's inference paths side by side (--run)")
    p.add_argument("--run", metavar="RUN_DIR|CKPT", default=None,
                   help="predict suite: the trained model whose inference paths are timed")
    p.add_argument("--data", metavar="DIR|NAME", default=None,
                   help="predict suite: images to segment (default: the data the run was trained on)")
    p.add_argument("--paths", default=None, metavar="LIST",
                   help="predict suite: comma list of eager, fp32, bf16, fp16, compile, onnx, int8 (default: "
                        "every path this machine runs)")
    p.add_argument("--size", type=int, default=256, help="square input side")
    p.add_argument("--batch", type=int, default=4, help="training batch")
    p.add_argument("--infer-batch", type=int, default=8, help="batch of the inference-throughput phase")
    p.add_argument("--iters", type=int, default=5, help="timed rounds per phase")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per variant and phase")
    p.add_argument("--phases", default="train,infer1,inferN",
                   help="comma list of train, infer1 (batch-1 latency), inferN (batch-N throughput)")
    p.add_argument("--channels-last", choices=("auto", "on", "off", "both"), default="both",
                   help="memory layout; both measures NCHW and channels_last, auto uses the per-device "
                        "choice")
    p.add_argument("--compile", nargs="?", const="on", choices=("on", "off", "both"), default="off",
                   help="torch.compile variants (bare --compile: on; both: eager and compiled)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode, e.g. max-autotune (None: default mode; inference compiles with "
                        "freezing)")
    p.add_argument("--amp", default="off", metavar="LIST",
                   help="precisions to time side by side, comma list of off (fp32), bf16, fp16 (CUDA) and auto "
                        "(what predict picks here), e.g. --amp off,bf16")
    p.add_argument("--fuse", choices=("on", "off", "both"), default="on",
                   help="fold conv+BN for inference (applied alike to every compared model)")
    p.add_argument("--compare", choices=("smp",), default=None,
                   help="also measure segmentation_models.pytorch's Unet with the same encoder")
    p.add_argument("--decoders", nargs="+", default=(), metavar="SPEC",
                   help="also time our model with these decoder widths in the same rounds: auto, mirror, light "
                        "or comma-separated widths, e.g. --decoders mirror 256,128,64,32")
    p.add_argument("--smp-encoder", default=None,
                   help="smp encoder to compare with (None: the same name when smp has it, else vgg16)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                   help="CPU: keep = malloc reuses freed activations instead of unmapping them (no page "
                        "faults per step; see unetkit.bench.keep_freed_memory), default = glibc's behaviour")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (None: torch's choice)")
    p.add_argument("--profile", action="store_true", help="add the top operators per model and phase")
    p.add_argument("--encoders", default=None, help="encoders suite: comma list (default: all registered)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the full report here")
    p.add_argument("--markdown", action="store_true", help="print tables in markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    # The model flags of train and info; weights do not change speed, and benchmarks never download.
    add_model_options(p, suppress=False, skip=("encoder_weights",),
                      title="model (--num-classes also applies to the metrics and encoders suites)")
    p.set_defaults(func=run)


def _progress(args: argparse.Namespace):  # noqa: ANN202 - a print-like callable or None
    return None if args.quiet else (lambda msg: print(msg, flush=True))


def _check(args: argparse.Namespace) -> tuple[list[str], list[str], UNetConfig, torch.device]:
    """The phases, precisions, model config and device the flags ask for; a :class:`CLIError` for a bad flag."""
    for name in ("size", "batch", "infer_batch", "iters"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, not {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, not {args.threads}")
    amps = [a.strip() for a in args.amp.split(",") if a.strip()]
    if not amps or any(a not in ("auto", "off", "fp16", "bf16") for a in amps):
        raise CLIError(f"--amp takes a comma list of auto, off, fp16, bf16; got {args.amp!r}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("train", "infer1", "inferN")]
    if bad or not phases:
        raise CLIError(f"--phases takes train, infer1, inferN; got {args.phases!r}")
    try:
        config = model_config_from_args(args)
        device = resolve_device(args.device)
        for a in amps:  # the library's rule: fp16 only on CUDA
            resolve_amp(a, device)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return phases, amps, config, device


def _decoders(args: argparse.Namespace, config: UNetConfig) -> list[str | tuple[int, ...]]:
    """``--decoders``: each ``auto``, ``mirror``, ``light`` or comma-separated widths, checked as the model
    checks them."""
    specs: list[str | tuple[int, ...]] = []
    for text in args.decoders:
        parts = [t for t in text.replace(" ", ",").split(",") if t]
        spec = parts if len(parts) > 1 or (parts and parts[0].isdigit()) else text
        try:
            specs.append(config.replace(decoder_channels=spec).decoder_channels)
        except ValueError as e:
            raise CLIError(f"--decoders: {e}") from e
    return specs


def _encoder_known(name: str) -> None:
    from ..models.encoders import encoder_names

    if not name.startswith("timm:") and name not in encoder_names():
        raise CLIError(f"unknown encoder {name!r}; choose one of {', '.join(encoder_names())} "
                       "or 'timm:<name>'")


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` as indented JSON (NaN as null), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=1) + "\n")


def _predict_suite(args: argparse.Namespace, device: torch.device, progress: Any) -> tuple[dict[str, Any], str]:
    """``--suite predict``: the run's inference paths, timed as ``unetkit predict`` runs them."""
    from ..bench.predict_suite import bench_predict, format_predict
    from ..checkpoint import CheckpointError

    if args.run is None:
        raise CLIError("--suite predict needs --run RUN_DIR (a trained model, e.g. from 'unetkit train')")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else None
    try:
        report = bench_predict(args.run, data=args.data, paths=paths, rounds=args.iters, device=device,
                               progress=progress)
    except (ValueError, CheckpointError) as e:
        raise CLIError(str(e)) from e
    return report, format_predict(report, args.markdown)


def run(args: argparse.Namespace) -> int:
    """Run the chosen suite, print its table, write the JSON report if asked."""
    from .. import bench

    phases, amps, config, device = _check(args)
    decoders = _decoders(args, config)
    progress = _progress(args)
    with bench.num_threads(args.threads):
        if args.suite == "predict":
            report, text = _predict_suite(args, device, progress)
        elif args.suite == "metrics":
            report = bench.bench_metrics(size=args.size, num_classes=config.num_classes, batch=args.batch,
                                         iters=args.iters, warmup=args.warmup, device=device)
            text = bench.format_metrics(report, args.markdown)
        elif args.suite == "encoders":
            names = [n.strip() for n in args.encoders.split(",")] if args.encoders else None
            for n in names or []:
                _encoder_known(n)
            report = bench.bench_encoders(names, size=args.size, batch=args.batch, iters=args.iters,
                                          warmup=args.warmup, num_classes=config.num_classes, device=device,
                                          progress=progress)
            text = bench.format_encoders_markdown(report)
        else:
            _encoder_known(config.encoder)
            report = bench.run_bench(
                config, size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup,
                channels_last=args.channels_last, compile=args.compile, fuse=args.fuse, compare=args.compare,
                device=device, infer_batch=args.infer_batch, decoders=decoders, phases=phases,
                smp_encoder=args.smp_encoder,
                profile=args.profile, compile_mode=args.compile_mode, keep_freed=args.malloc == "keep",
                amp=amps, progress=progress)
            text = bench.format_report(report, args.markdown)
    print(text)
    if args.json is not None:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
