"""``unetkit predict``: segment image files with a checkpoint or an exported ``.onnx`` model.

For each input ``<stem>.<ext>`` it writes, into ``--out``: ``<stem>_mask.png`` (palette PNG, pixel value
= class index, palette = class colours, at the image's size), ``<stem>_overlay.png`` (the image with the
classes blended in and a class legend underneath; small images enlarged by a whole factor, up to 512 pixels)
and with ``--probs`` ``<stem>_probs.npy`` (float32 ``(C, H, W)``). Volumes (NIfTI, NRRD, MetaImage files,
DICOM series folders) given to a model trained on volumes give one label volume each, ``<case>.nii.gz`` /
``.nrrd`` / ``.mha`` as the input (NIfTI for DICOM) with the scan's geometry. Files that cannot be read are
reported and skipped; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from .main import CLIError

GLOB_CHARS = set("*?[")
#: Overlays are enlarged by the largest whole factor that keeps their longer side within this many pixels.
OVERLAY_MIN_SIZE = 512


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
                   help="sliding-window tile size, one or two numbers (default: the training patch size stored "
                        "in the model, else the whole image at once)")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction in [0, 1) (default 0.5)")
    p.add_argument("--tta", action="store_true", help="average predictions over horizontal/vertical flips")
    p.add_argument("--probs", action="store_true", help="also write class probabilities as <stem>_probs.npy")
    p.add_argument("--batch-size", type=int, default=16, help="tiles (or volume slices) per forward pass (default 16)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="autocast of a checkpoint's forward passes (probabilities stay fp32): auto (bf16/fp16 on "
                        "CUDA, bf16 on a CPU that runs it natively, else fp32), off (fp32), "
                        "bf16, fp16 (CUDA); an .onnx model runs as exported")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def is_volume(path: Path) -> bool:
    """A volume input: a NIfTI/NRRD/MetaImage file or a folder holding a DICOM series."""
    from ..data.volume_io import is_dicom_folder, volume_stem

    return is_dicom_folder(path) if path.is_dir() else volume_stem(path) is not None


def output_stem(path: Path) -> str:
    """The name outputs of ``path`` are written under (``case`` for ``case.nii.gz``, a DICOM folder's name)."""
    from ..data.volume_io import volume_stem

    return (volume_stem(path) if is_volume(path) else None) or path.stem


def expand_inputs(items: list[str]) -> list[Path]:
    """Files named, images and volumes inside folders named (sorted, not recursive; a DICOM series folder is
    one volume), and glob matches; de-duplicated."""
    from ..data.io import IMAGE_EXTENSIONS

    def folder_images(d: Path) -> list[Path]:
        if is_volume(d):
            return [d]
        return sorted(p for p in d.iterdir() if (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
                      or is_volume(p))

    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            images = folder_images(p)
            if not images:
                raise CLIError(f"{item}: folder has no images ({', '.join(IMAGE_EXTENSIONS)}) or volumes (.nii.gz, "
                               ".nrrd, .mha, DICOM series)")
            found += images
        elif p.is_file():
            found.append(p)
        elif GLOB_CHARS & set(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file()]
            files += [f for m in matches if m.is_dir() for f in folder_images(m)]
            if not files:
                raise CLIError(f"{item}: the pattern matches no files")
            found += files
        else:
            raise CLIError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def check_outputs(inputs: list[Path], out: Path) -> None:
    """Refuse an ``--out`` that holds inputs (outputs would mix with or overwrite them) and clashing stems."""
    out_r = out.resolve()
    for f in inputs:
        if f.resolve().parent == out_r:
            raise CLIError(f"--out {out} is the folder of input {f}: outputs would be written next to (and could "
                           "overwrite) the inputs; choose another folder")
    stems: dict[str, Path] = {}
    for f in inputs:
        stem = output_stem(f)
        if stem in stems:
            raise CLIError(f"inputs {stems[stem]} and {f} share the name '{stem}', so their outputs would "
                           "overwrite each other; predict them into separate --out folders")
        stems[stem] = f


def _precheck_channels(inputs: list[Path], in_channels: int) -> None:
    """Header-only look at every input, so a channel mismatch stops the run before anything is written."""
    from ..data.io import channels_convertible, read_image_info

    for f in inputs:
        try:
            c = read_image_info(f).channels
        except Exception:  # noqa: BLE001 - unreadable files are reported per file later
            continue
        if not channels_convertible(c, in_channels):
            raise CLIError(f"{f}: {c}-channel image, but the model takes {in_channels} channel(s); only grey -> "
                           "any and RGB -> grey are converted: pass images with the model's channel count")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.io import read_image
    from ..infer import image_to_tensor, load_predictor, palette, predict
    from ..models.outputs import probs_to_labels
    from ..viz import overlay_view, save_mask_png, save_rgb_png

    if args.tile is not None and (min(args.tile) < 1 or len(args.tile) > 2):
        raise CLIError(f"--tile takes one or two positive sizes, got {' '.join(map(str, args.tile))}")
    if not 0 <= args.overlap < 1:
        raise CLIError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    inputs = expand_inputs(args.inputs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    check_outputs(inputs, out)
    from ..device import describe_amp, resolve_amp, resolve_device

    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    model, info = load_predictor(args.model, device)
    volumes = [f for f in inputs if is_volume(f)]
    inputs = [f for f in inputs if f not in volumes]
    if volumes and info.volume is None:
        raise CLIError(f"{volumes[0]}: a volume, but {args.model} was trained on 2D images; predict volumes with a "
                       "model trained on a volume folder (see docs/volumes.md)")
    if inputs and info.volume is not None:
        raise CLIError(f"{inputs[0]}: a 2D image, but {args.model} was trained on volumes; pass .nii.gz / .nrrd / "
                       ".mha files or DICOM series folders")
    _precheck_channels(inputs, info.in_channels)
    tile = info.patch_size if args.tile is None else (args.tile[0], args.tile[-1])
    pad = info.normalization.pad_value() if tile is not None else None
    colors = palette(info)
    out.mkdir(parents=True, exist_ok=True)
    model = _fast(model, info, tile, device)

    failed: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    done = _predict_volumes(volumes, model, info, out, args, tile, amp, failed)
    bar = tqdm(inputs, desc="predict", unit="img", disable=args.no_progress or not inputs, file=sys.stderr)
    for f in bar:
        try:
            arr = read_image(f)
        except Exception as e:  # noqa: BLE001 - any decoder failure: report the file and go on
            failed.append((f, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})"))
            bar.write(f"skipped {f}: {failed[-1][1]}", file=sys.stderr)
            continue
        try:
            x, raw = image_to_tensor(arr, info)
        except ValueError as e:
            raise CLIError(f"{f}: {e}") from e
        result = predict(model, x, tile_size=tile, overlap=args.overlap, tta=args.tta, output="probs",
                         batch_size=args.batch_size, pad_value=pad, autocast_dtype=amp)
        probs = result.float().cpu()
        labels = probs_to_labels(probs[None])[0].numpy()
        stem = f.stem
        atomic_write(out / f"{stem}_mask.png", lambda tmp, lab=labels: save_mask_png(lab, colors, tmp))
        ov = overlay_view(raw, labels, colors, info.class_names, args.alpha, min_size=OVERLAY_MIN_SIZE)
        atomic_write(out / f"{stem}_overlay.png", lambda tmp, o=ov: save_rgb_png(o, tmp))
        if args.probs:
            p_np = probs.numpy().astype(np.float32)
            atomic_write(out / f"{stem}_probs.npy", lambda tmp, p=p_np: _save_npy(p, tmp))
        done += 1
    bar.close()
    seconds = time.perf_counter() - t0
    what = f"{len(inputs)} image(s)" if not volumes else f"{len(volumes) + len(inputs)} volume(s)"
    rate = f", {done / seconds:.1f}/s" if done and seconds > 0 else ""
    summary = f"predicted {done} of {what} into {out} in {seconds:.1f} s{rate} ({describe_amp(args.amp, amp, device)})"
    if failed:
        print(f"{summary}; {len(failed)} failed:", file=sys.stderr)
        for f, why in failed:
            print(f"  {f}: {why}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _fast(model: Any, info: Any, tile: Any, device: Any) -> Any:
    """A checkpoint's model set up for inference (conv+BN folded, channels_last where measured faster); an
    ONNX model as it is."""
    import torch

    from ..infer import prepare_inference

    if not isinstance(model, torch.nn.Module):
        return model
    size = tuple(tile) if tile is not None else (64, 64)
    example = torch.zeros(1, info.in_channels, *size, device=device)
    return prepare_inference(model, example)[0]


def _predict_volumes(volumes: list[Path], model: Any, info: Any, out: Path, args: argparse.Namespace,
                     tile: Any, amp: Any, failed: list[tuple[Path, str]]) -> int:
    """Predict each volume slice by slice and write its label volume with the scan's geometry."""
    from tqdm import tqdm

    from ..data.volume_io import read_volume, write_label_volume
    from ..infer_volume import num_slices, predict_volume

    done = 0
    for f in volumes:
        try:
            vol = read_volume(f)
        except Exception as e:  # noqa: BLE001 - any reader failure: report the file and go on
            failed.append((f, f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})"))
            print(f"skipped {f}: {failed[-1][1]}", file=sys.stderr)
            continue
        with tqdm(total=num_slices(vol, info), desc=output_stem(f), unit="slice", disable=args.no_progress,
                  file=sys.stderr) as bar:
            labels = predict_volume(model, vol, info, tile_size=tile, overlap=args.overlap, tta=args.tta,
                                    batch_size=args.batch_size, autocast_dtype=amp, progress=bar.update)
        path = write_label_volume(vol, labels, out, stem=output_stem(f))
        print(f"{f} -> {path}")
        done += 1
    return done


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append .npy to the temporary name
        np.save(fh, arr)
