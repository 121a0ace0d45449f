"""The predict suite: one trained model's inference paths side by side, as ``unetkit predict`` runs them.

Every path segments the same images (a run's training and validation images, decoded and normalised
beforehand, so file reading and PNG writing are left out) with sliding windows of the training patch and
the padding training used, exactly as ``unetkit predict`` does. The paths:

* ``eager``: fp32, the model as loaded, 4 windows per forward pass (``unetkit predict`` before it had a
  fast path; the reference every other path's masks are compared with);
* ``fp32``: conv+BN folded and the preferred memory layout (:func:`unetkit.inference.prepare_inference`),
  16 windows per pass;
* ``bf16`` / ``fp16``: the same under autocast (bf16 on CUDA and on CPUs that run it natively; fp16 on CUDA);
* ``compile``: the fp32 path through ``torch.compile`` (compile time reported as setup);
* ``onnx``: the exported ``.onnx`` (fp32) through ONNX Runtime on the CPU;
* ``int8``: that model statically quantized to INT8 (:func:`unetkit.export.quantize_int8`, calibrated on
  up to 8 of the images), ONNX Runtime on the CPU.

Paths run in interleaved rounds (order reversed every other round), medians reported, with images/s, the
speed-up over ``eager``, the share of pixels whose label equals ``eager``'s, and which path
``unetkit predict`` takes by default on this machine.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..device import amp_name, resolve_amp, resolve_device
from ..timing import median, synchronize
from .format import fmt, table
from .machine import machine_info

#: Every path the suite knows, in report order.
PREDICT_PATHS = ("eager", "fp32", "bf16", "fp16", "compile", "onnx", "int8")
#: Windows per forward pass of the fast paths (``unetkit predict --batch-size`` default) and of ``eager``.
FAST_BATCH, EAGER_BATCH = 16, 4


def available_paths(device: torch.device) -> list[str]:
    """The paths that run on ``device``: bf16 where native (CPU) or supported (CUDA), fp16 on CUDA, ONNX
    Runtime paths when it is installed (they run on the CPU, so only for a CPU device)."""
    paths = ["eager", "fp32"]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            paths.append("bf16")
        paths.append("fp16")
    elif resolve_amp("auto", device) is not None:
        paths.append("bf16")
    paths.append("compile")
    if device.type == "cpu":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return paths
        paths += ["onnx", "int8"]
    return paths


def _images(ckpt: dict[str, Any], data: str | None, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` normalised images of the checkpoint's data: its training then validation images."""
    from ..checkpoint import checkpoint_datasets

    train, val = checkpoint_datasets(ckpt, data)
    images: list[torch.Tensor] = []
    for ds in (train, val):
        for i in range(len(ds) if ds is not None else 0):
            if len(images) >= limit:
                return images
            images.append(ds[i][0])
    return images


def bench_predict(run: str | Path, data: str | None = None, paths: Sequence[str] | None = None,
                  rounds: int = 5, device: str | torch.device = "cpu", max_images: int = 64,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``paths`` (default: every one :func:`available_paths` allows) on a trained run; return the report.

    Args:
        run: a run directory or ``.pt`` checkpoint.
        data: the images to segment (default: the data the run was trained on).
        rounds: timed rounds after one warm-up pass per path.
        max_images: use at most this many images (training images first, then validation).
    """
    from ..checkpoint import load_model
    from ..inference import Predictor, prepare_inference

    dev = resolve_device(device)
    allowed = available_paths(dev)
    paths = list(allowed if paths is None else paths)
    unknown = [p for p in paths if p not in PREDICT_PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PREDICT_PATHS)}")
    bad = [p for p in paths if p not in allowed]
    if bad:
        raise ValueError(f"path(s) {', '.join(bad)} not available on {dev} (available: {', '.join(allowed)})")
    if rounds < 1 or max_images < 1:
        raise ValueError("rounds and max_images must be >= 1")
    model, info, ckpt = load_model(run, dev)
    images = [x.to(dev) for x in _images(ckpt, data, max_images)]
    if not images:
        raise ValueError(f"{run}: its data has no images to predict")
    tile = info.patch_size
    example = images[0][None]
    default = _default_path(dev)

    runners: dict[str, tuple[Any, int, torch.dtype | None]] = {}
    setup_s: dict[str, float] = {}
    fast = None  # the folded, channels_last model, shared by the fp32, bf16 and fp16 paths
    for name in ["eager", *[p for p in paths if p != "eager"]]:  # eager is the reference, always measured
        t0 = time.perf_counter()
        if name == "eager":
            runners[name] = (model, EAGER_BATCH, None)
        elif name in ("fp32", "bf16", "fp16"):
            fast = fast or prepare_inference(copy.deepcopy(model), example)[0]
            runners[name] = (fast, FAST_BATCH, None if name == "fp32" else resolve_amp(name, dev))
        elif name == "compile":
            runners[name] = (prepare_inference(copy.deepcopy(model), example, compile=True)[0], FAST_BATCH, None)
        elif name in ("onnx", "int8"):
            runners[name] = (_onnx_model(model, info, images, int8=name == "int8"), FAST_BATCH, None)
        setup_s[name] = time.perf_counter() - t0
        if progress:
            progress(f"  {name}: ready in {setup_s[name]:.1f} s")

    predictors = {name: Predictor(net, info, device=dev, amp=dtype, batch_size=batch)
                  for name, (net, batch, dtype) in runners.items()}

    def one_pass(name: str) -> tuple[float, list[torch.Tensor]]:
        predictor = predictors[name]
        synchronize(dev)
        t0 = time.perf_counter()
        out = [predictor.predict_tensor(x) for x in images]
        synchronize(dev)
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {k: [] for k in runners}
    masks: dict[str, list[torch.Tensor]] = {}
    first_s: dict[str, float] = {}
    with torch.inference_mode():
        for name in runners:  # warm-up (compiles the compiled path)
            first_s[name], masks[name] = one_pass(name)
        for r in range(rounds):
            for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
                times[name].append(one_pass(name)[0])
            if progress:
                progress(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    ref = masks["eager"]
    pixels = sum(m.numel() for m in ref)
    base = median(times["eager"])
    rows = []
    for name in runners:
        med = median(times[name])
        same = sum(int((a.cpu() == b.cpu()).sum()) for a, b in zip(masks[name], ref, strict=True)) / pixels
        rows.append({"path": name, "seconds": med, "times_s": times[name], "images_per_s": len(images) / med,
                     "speedup": base / med, "identical_pixels": same,
                     "setup_s": setup_s[name] + max(first_s[name] - med, 0.0), "default": name == default})
    return {"machine": machine_info(dev), "device": str(dev), "run": str(run), "images": len(images),
            "image_size": list(images[0].shape[-2:]), "tile": list(tile) if tile else None,
            "rounds": rounds, "default_path": default, "rows": rows}


def _default_path(device: torch.device) -> str:
    """The path ``unetkit predict`` takes with a checkpoint and its defaults (``--amp auto``) on ``device``."""
    return amp_name(resolve_amp("auto", device))


def _onnx_model(model: torch.nn.Module, info: Any, images: list[torch.Tensor], int8: bool) -> Any:
    """The model exported to ONNX (and quantized to INT8, calibrated on up to 8 images), run by ONNX Runtime."""
    from ..export import export_onnx
    from ..export.quantize import quantize_int8
    from ..export.runtime import OnnxModel

    folder = Path(tempfile.mkdtemp(prefix="unetkit-predict-bench-"))
    path = folder / "model.onnx"
    export_onnx(copy.deepcopy(model).cpu(), info, path, verbose=False)
    if int8:
        quantize_int8(path, folder / "model.int8.onnx", [x.cpu() for x in images[:8]])
        path = folder / "model.int8.onnx"
    return OnnxModel(path)


def format_predict(report: dict[str, Any], markdown: bool = False) -> str:
    """The predict suite's report as a table, the machine and the default path named."""
    mach = report["machine"]
    gpu = f", {mach['gpu']}" if "gpu" in mach else ""
    head = (f"{mach['cpu']} ({mach['torch_threads']} threads){gpu}, torch {mach['torch']}, device "
            f"{report['device']}: {report['images']} images of {report['image_size'][0]}x{report['image_size'][1]}, "
            f"windows {report['tile']}, median of {report['rounds']} interleaved rounds; "
            f"'unetkit predict' default here: {report['default_path']}")
    rows = [(r["path"] + (" (default)" if r["default"] else ""), fmt(r["seconds"], ".3f"),
             fmt(r["images_per_s"], ".1f"), fmt(r["speedup"], ".2f") + "x",
             fmt(100 * r["identical_pixels"], ".3f") + " %", fmt(r["setup_s"], ".1f"))
            for r in report["rows"]]
    header = ("path", "seconds", "img/s", "vs eager", "pixels as eager", "setup s")
    return head + "\n\n" + table(header, rows, markdown)
