"""``unetkit export``: a checkpoint to ONNX (verified against PyTorch), optionally also INT8 (verified on data).

``--int8`` writes ``<out stem>.int8.onnx`` next to ``--out``, calibrated on real images (``--calibration``:
a folder of images or a dataset; default the training split of the checkpoint's dataset) and prints
mIoU, argmax agreement and latency of fp32 vs INT8 on the validation split of ``--data``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .main import CLIError
from .options import add_data_options, data_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (and INT8)",
        description="Export a checkpoint to ONNX with dynamic batch/height/width and the class names, colours "
                    "and normalisation in its metadata, verified with ONNX Runtime against PyTorch. With --int8 "
                    "also a statically quantized model (<out>.int8.onnx) and an fp32-vs-INT8 accuracy report.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("--format", default="onnx", choices=["onnx"], help=argparse.SUPPRESS)  # the one format
    p.add_argument("--out", default=None, metavar="PATH",
                   help="output .onnx file (default: the checkpoint's name with .onnx, beside it)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--legacy-exporter", action="store_true",
                   help="use the TorchScript exporter instead of the torch.export (dynamo) one")
    p.add_argument("--int8", action="store_true", help="also write a static INT8 model <out stem>.int8.onnx")
    p.add_argument("--calibration", default=None, metavar="DIR|NAME",
                   help="calibration images: a folder of images (or a dataset folder) or a built-in dataset name "
                        "(default: the training split of the checkpoint's dataset)")
    p.add_argument("--calib-samples", type=int, default=32, metavar="N",
                   help="number of calibration images, evenly spaced (default 32)")
    p.add_argument("--quant-format", default="qdq", choices=["qdq", "qoperator"],
                   help="INT8 graph format (default qdq)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (for CPUs without VNNI)")
    p.add_argument("--calibrate-method", default="minmax", choices=["minmax", "percentile", "entropy"],
                   help="how activation ranges are chosen (default minmax)")
    p.add_argument("--quantize-head", action="store_true",
                   help="quantize the final 1x1 head conv too (default: kept in float; it is cheap and its "
                        "quantized logits cost argmax agreement)")
    add_data_options(p, title="data of the INT8 accuracy report: the model's own validation split unless given; "
                              "classes, channels and volume slicing must be the model's")
    p.set_defaults(func=run)


def checkpoint_dataset(ckpt: dict[str, Any]) -> str | None:
    """The dataset name or folder the checkpoint was trained on, if recorded."""
    from ..checkpoint import checkpoint_data_config

    return checkpoint_data_config(ckpt).source or None


def _split(name: str, ckpt: dict[str, Any], split: str, **overrides: Any) -> Any:
    """One split of a dataset, read and normalised as the model was trained (for the checkpoint's own dataset
    the training run's split seed, share and options, so the validation split is the one it was validated on)."""
    from ..checkpoint import checkpoint_datasets

    train, val = checkpoint_datasets(ckpt, name, **overrides)
    return train if split == "train" else val


def _evenly(n: int, k: int) -> list[int]:
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def calibration_images(source: str, info: Any, samples: int, ckpt: dict[str, Any]) -> list[Any]:
    """Normalised ``(C, H, W)`` tensors from a built-in dataset's training split or a folder of images.

    ``info`` (the model's data description) normalises folder images; ``ckpt`` (the checkpoint dict)
    selects a dataset's split as in training.
    """
    from ..data import BUILTIN_DATASETS
    from ..data.io import IMAGE_EXTENSIONS, read_image
    from ..data.preprocess import prepare_image

    path = Path(source)
    if source.lower() in BUILTIN_DATASETS or (path.is_dir() and (path / "images").is_dir()):
        ds = _split(source, ckpt, "train")
        batch = getattr(ds, "spatial_dims", 2) == 3  # 3D cases: (1, C, D, H, W), not a batch of 2D images
        return [ds[i][0][None] if batch else ds[i][0] for i in _evenly(len(ds), samples)]
    if not path.is_dir():
        raise CLIError(f"--calibration {source}: neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
                       "nor a folder of images")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CLIError(f"--calibration {source}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    images = []
    for i in _evenly(len(files), samples):
        try:
            images.append(prepare_image(read_image(files[i]), info.normalization)[0])
        except Exception as e:  # noqa: BLE001 - one unreadable calibration image is a user error
            raise CLIError(f"{files[i]}: cannot use as a calibration image ({e})") from e
    return images


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..checkpoint import load_model
    from ..export import export_onnx, quantize_int8
    from ..export.onnx import check_opset

    if args.calib_samples < 1:
        raise CLIError(f"--calib-samples must be >= 1, got {args.calib_samples}")
    check_opset(args.opset, dynamo=not args.legacy_exporter)
    model, info, ckpt = load_model(args.checkpoint)
    ckpt_path = Path(ckpt["path"])
    out = Path(args.out) if args.out else ckpt_path.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise CLIError(f"--out {out}: the file name must end in .onnx")
    check_writable(out, "--out")
    trained_on = checkpoint_dataset(ckpt)
    calib_src = args.calibration or trained_on
    if args.int8 and calib_src is None:
        raise CLIError("--int8 needs calibration images: pass --calibration DIR|NAME (the checkpoint does not "
                       "name its dataset)")
    # Every input of --int8 is read before anything is written: a bad --calibration or --data leaves no file.
    calib: list[Any] = []
    eval_data = None
    overrides = data_flags(args)
    data_src = overrides.pop("source", None) or trained_on
    if args.int8:
        assert calib_src is not None
        calib = calibration_images(calib_src, info, args.calib_samples, ckpt)
        if data_src is None:
            print("no --data and the checkpoint names no dataset: INT8 accuracy report skipped")
        else:
            val = _split(data_src, ckpt, "val", **overrides)
            if val is None:
                print(f"{data_src} has no validation split: INT8 accuracy report skipped")
            else:
                eval_data = [(val[i][0][None], val[i][1][None]) if getattr(val, "spatial_dims", 2) == 3
                             else (val[i][0], val[i][1]) for i in range(len(val))]
    export_onnx(model, info, out, opset=args.opset, dynamo=not args.legacy_exporter)
    if not args.int8:
        return 0

    int8_path = out.with_suffix(".int8.onnx")
    report = quantize_int8(out, int8_path, calib, eval_data=eval_data, quant_format=args.quant_format,
                           per_channel=not args.per_tensor, reduce_range=args.reduce_range,
                           calibrate_method=args.calibrate_method, keep_head_fp32=not args.quantize_head)
    print(f"wrote {int8_path}: {report.convs_qdq + report.convs_qlinear} convs in INT8, {report.convs_float} in "
          f"float; calibrated on {len(calib)} image(s) of {calib_src}")
    if eval_data is not None:
        print(f"\nfp32 vs INT8 on the validation split of {data_src} ({report.eval_images} images, ONNX Runtime, "
              "each image whole in one pass, no sliding windows, so fp32 may differ a little from training's "
              "tiled validation score):\n")
        print(report.table())
    return 0
