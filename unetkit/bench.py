"""Benchmarks: training and inference speed of a UNet against the machine's matmul peak and a peer library.

Everything here returns plain dicts (JSON-ready); ``unetkit bench`` and the scripts in ``benchmarks/`` print
and save them. The numbers are built to survive a noisy, shared machine:

* Every compared variant (our model, segmentation_models.pytorch's Unet, each memory layout, compiled or
  not) is measured *round-robin*: round ``r`` times one iteration of every variant, in a rotating order,
  so slow spells of the machine hit them all alike. Results are medians over rounds after warm-up.
* The fp32 matmul peak (a large ``torch.mm``) and a reference convolution are sampled in every round of the
  same run, and achieved GFLOP/s are reported as fractions of their medians.
* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts two): forward FLOPs
  per image, and the FLOPs of one whole training step (forward and backward) at the benchmark's batch.
* Peak memory is measured in one extra, untimed step per variant.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.fuse import fuse_conv_bn

__all__ = [
    "GOALS", "bench_encoders", "bench_metrics", "build_smp", "build_unet", "count_forward_flops",
    "count_train_flops", "format_encoders_markdown", "format_metrics", "format_report", "keep_freed_memory",
    "machine_info", "matmul_peak", "preferred_channels_last", "prepare_inference", "profile_top_ops",
    "run_bench",
]

SCHEMA_VERSION = 1

#: The performance goals of the benchmark issue (fractions of the fp32 matmul peak, ratio to smp).
GOALS = {"train_per_flop_vs_smp": 1.2, "train_frac_peak": 0.85, "infer_b1_frac_peak": 0.95}

#: Whether channels_last pays off, per device type and phase, from the measurements in docs/performance.md.
_CHANNELS_LAST = {("cpu", "train"): True, ("cpu", "infer"): True, ("cuda", "train"): True,
                  ("cuda", "infer"): True}


def preferred_channels_last(device: str | torch.device, phase: str = "train") -> bool:
    """Whether to run in channels_last on ``device`` for ``phase`` (``"train"`` or ``"infer"``).

    The CPU choices are measured (channels_last is faster for training and inference, see
    docs/performance.md); the CUDA ones follow cuDNN's NHWC kernels and were not measured here.
    ``unetkit bench --channels-last both`` re-measures it on your machine.
    """
    return _CHANNELS_LAST.get((torch.device(device).type, phase), False)


# --------------------------------------------------------------------------------------------------------
# Machine, timing and memory helpers


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU/GPU model, cores, torch threads and versions: the context every number needs."""
    dev = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.system(), "device": str(dev),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["tf32"] = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                        "cudnn": bool(torch.backends.cudnn.allow_tf32)}
    return info


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS (process-wide).

    PyTorch's CPU allocator is plain ``malloc``: every large activation (above glibc's mmap threshold, at
    most 32 MiB) is a fresh ``mmap`` that is page-faulted (and zeroed by the kernel) on first touch and
    unmapped when freed, on every training step (about 550,000 page faults per VGG16-UNet step at batch 4,
    256x256). Disabling ``mmap`` for allocations and trimming (``mallopt``) lets later steps reuse the same
    pages: 4-7% faster steps, the resident set staying at the step's peak. Same effect as starting Python
    with ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``. Returns whether
    it applied (False where libc is not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_mmap_max, 0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class _PeakMemory:
    """Peak memory (bytes) used while the block runs, above the level when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process's peak resident set (``VmHWM``),
    reset through ``/proc/self/clear_refs`` after returning freed heap to the OS; ``None`` elsewhere.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, None
        self._libc = None
        if device.type == "cpu":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM", "VmRSS")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
        return out

    def __enter__(self) -> _PeakMemory:
        self._base = None
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                if self._libc is not None:
                    self._libc.malloc_trim(0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._base = self._status()["VmRSS"]
            except (OSError, KeyError):
                self._base = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base is None:
            return
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self._status()["VmHWM"] - self._base, 0)


def _matmul_operands(device: torch.device, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = n or (2048 if device.type == "cpu" else 8192)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    return a, b


def _matmul_sample(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """GFLOP/s of ``a @ b`` (median of ``repeats``)."""
    n = a.shape[0]
    ts = [_timed(lambda: torch.mm(a, b), a.device) for _ in range(repeats)]
    return 2 * n**3 / _median(ts) / 1e9


def matmul_peak(device: str | torch.device = "cpu", n: int | None = None, repeats: int = 7) -> dict[str, Any]:
    """The fp32 matmul rate of a square ``torch.mm`` of size ``n`` (2048 on CPU, 8192 on GPU), in GFLOP/s.

    This is the practical peak the model's convolutions are compared with (same library, same threads).
    """
    dev = torch.device(device)
    a, b = _matmul_operands(dev, n)
    torch.mm(a, b)  # warm-up
    samples = [_matmul_sample(a, b, 1) for _ in range(repeats)]
    return {"gflops": _median(samples), "samples": samples, "n": a.shape[0], "dtype": "float32"}


class _PeakProbe:
    """Samples, once per round, the fp32 rate of a large ``torch.mm`` and of a reference convolution.

    The matmul is the issue's yardstick. The convolution (3x3, 256 -> 256 channels, 4x64x64, channels_last,
    forward) shows what the convolution library itself reaches on this machine: on CPUs where oneDNN's
    kernels beat the BLAS behind ``torch.mm`` (e.g. MKL on AMD), model fractions of the matmul peak exceed 1.
    """

    CONV = (4, 256, 64)  # batch, channels, side

    def __init__(self, device: torch.device, n: int | None = None, conv: bool = True) -> None:
        self.device = device
        self.a, self.b = _matmul_operands(device, n)
        self.mm: list[float] = []
        self.conv: list[float] = []
        self.conv_module: nn.Module | None = None
        if conv:
            bsz, ch, side = self.CONV
            g = torch.Generator().manual_seed(1)
            self.conv_module = nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(device)
            self.conv_module = self.conv_module.to(memory_format=torch.channels_last).eval()
            self.conv_x = torch.randn(bsz, ch, side, side, generator=g).to(device).contiguous(
                memory_format=torch.channels_last)
            self.conv_flops = 2 * bsz * ch * ch * 9 * side * side
        self._run_conv()
        torch.mm(self.a, self.b)

    def _run_conv(self) -> None:
        if self.conv_module is not None:
            with torch.inference_mode():
                self.conv_module(self.conv_x)

    def sample(self) -> None:
        self.mm.append(_matmul_sample(self.a, self.b))
        if self.conv_module is not None:
            ts = [_timed(self._run_conv, self.device) for _ in range(3)]
            self.conv.append(self.conv_flops / _median(ts) / 1e9)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gflops": _median(self.mm), "max_gflops": max(self.mm, default=math.nan), "samples": self.mm,
            "n": self.a.shape[0], "dtype": "float32",
            "method": "torch.mm of two n x n fp32 matrices, 3 calls per round, median over rounds"}
        if self.conv_module is not None:
            bsz, ch, side = self.CONV
            out.update({"conv_gflops": _median(self.conv), "conv_samples": self.conv,
                        "conv": f"3x3 conv {ch}->{ch}, {bsz}x{side}x{side}, channels_last, forward"})
        return out


# --------------------------------------------------------------------------------------------------------
# Models and FLOPs


def build_unet(encoder: str = "vgg16", num_classes: int = 2, in_channels: int = 3, **options: Any) -> nn.Module:
    """Our UNet with ``encoder`` (no pretrained weights: benchmarks never download)."""
    from .models import UNet

    return UNet(num_classes=num_classes, in_channels=in_channels, encoder=encoder, encoder_weights=None, **options)


def build_smp(encoder: str = "vgg16", num_classes: int = 2, in_channels: int = 3) -> nn.Module:
    """segmentation_models.pytorch's ``Unet`` with ``encoder`` (optional dependency, no weights)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError("--compare smp needs segmentation_models_pytorch: pip install 'unetkit[smp]'") from e
    return smp.Unet(encoder, encoder_weights=None, classes=num_classes, in_channels=in_channels)


def smp_encoder_for(encoder: str) -> str:
    """The smp encoder to compare ``encoder`` with: the same name when smp has it, else ``vgg16``."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return "vgg16"
    return encoder if encoder in smp.encoders.get_encoder_names() else "vgg16"


def _main_output(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, list | tuple) else out


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def count_forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on ``x`` (FlopCounterMode; the mode is restored)."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was)
    return int(counter.get_total_flops())


def count_train_flops(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (cross-entropy loss); gradients are cleared after."""
    was = model.training
    model.train()
    try:
        with FlopCounterMode(display=False) as counter:
            _loss(_main_output(model(x)), target).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return int(counter.get_total_flops())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------
# The round-robin benchmark


@dataclass
class _Variant:
    """One measured configuration: which model, layout, compiled, BN folded; its state and timings.

    ``module`` is what runs (possibly ``torch.compile``'d), ``eager`` the ``nn.Module`` behind it.
    """

    model: str
    layout: str
    compiled: bool
    fused: bool
    module: Callable[..., Any]
    eager: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None = None
    opt: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    mem: int | None = None
    first_s: float = math.nan

    @property
    def label(self) -> str:
        extra = ("+compile" if self.compiled else "") + ("+fused" if self.fused else "")
        return f"{self.model}/{self.layout}{extra}"


def _layout_tensor(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def _resolve_layouts(channels_last: str, device: torch.device, phase: str) -> list[str]:
    if channels_last == "both":
        return ["nchw", "channels_last"]
    if channels_last == "auto":
        return ["channels_last" if preferred_channels_last(device, phase) else "nchw"]
    if channels_last in ("on", "off"):
        return ["channels_last" if channels_last == "on" else "nchw"]
    raise ValueError(f"channels_last must be auto, on, off or both, not {channels_last!r}")


def _on_off(value: str | bool, name: str) -> list[bool]:
    if isinstance(value, bool):
        return [value]
    choices = {"on": [True], "off": [False], "both": [False, True]}
    if value not in choices:
        raise ValueError(f"{name} must be on, off or both, not {value!r}")
    return choices[value]


def _train_step(v: _Variant) -> None:
    assert v.opt is not None and v.y is not None
    v.opt.zero_grad(set_to_none=True)
    _loss(_main_output(v.module(v.x)), v.y).backward()
    v.opt.step()


def _infer_step(v: _Variant) -> None:
    with torch.inference_mode():
        v.module(v.x)


def _run_rounds(variants: list[_Variant], step: Callable[[_Variant], None], iters: int, warmup: int,
                device: torch.device, probe: _PeakProbe | None,
                progress: Callable[[str], None] | None) -> None:
    """Warm up every variant, measure its peak memory in one more step, then time ``iters`` rounds.

    A round times one step of every variant, in an order rotated each round. With a ``probe`` each round
    also samples the matmul (and conv) peak. Memory is measured outside the timed rounds because resetting
    the peak (returning freed heap to the OS) would add page faults to the timed step.
    """
    for v in variants:
        v.first_s = _timed(lambda v=v: step(v), device)  # includes compilation for compiled variants
    for _ in range(max(warmup - 1, 0)):
        for v in variants:
            step(v)
    for v in variants:
        with _PeakMemory(device) as pm:
            step(v)
        v.mem = pm.peak
    for r in range(iters):
        if probe is not None:
            probe.sample()
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            v.times.append(_timed(lambda v=v: step(v), device))
        if progress is not None:
            progress(f"  round {r + 1}/{iters}: " + ", ".join(f"{v.label} {v.times[-1]:.3f}s" for v in variants))


def _row(v: _Variant, phase: str, batch: int, flops_per_step: int) -> dict[str, Any]:
    med = _median(v.times)
    gflops = flops_per_step / med / 1e9 if med > 0 else math.nan
    return {
        "model": v.model, "phase": phase, "batch": batch, "layout": v.layout, "compiled": v.compiled,
        "fused": v.fused, "iters": len(v.times), "times_s": v.times, "median_s": med, "min_s": min(v.times),
        "images_per_s": batch / med, "latency_ms": 1000 * med, "flops_per_step": flops_per_step,
        "gflops": gflops, "peak_mem_mb": None if v.mem is None else v.mem / 2**20,
        "first_call_s": v.first_s, "compile_s": max(v.first_s - med, 0.0) if v.compiled else None,
    }


def _compile(module: nn.Module, compile_mode: str | None, inference: bool = False) -> Callable[..., Any]:
    """``torch.compile``; for inference with ``freezing`` (weights become constants: conv+BN folding, conv+ReLU
    fusion and oneDNN weight prepacking on CPU)."""
    if inference and compile_mode is None:
        return torch.compile(module, options={"freezing": True})
    return torch.compile(module, mode=compile_mode)


def prepare_inference(model: nn.Module, example: torch.Tensor, fuse: bool = True,
                      channels_last: bool | None = None, compile: bool = False) -> tuple[Callable[..., Any], torch.Tensor]:
    """Return ``(callable, example)`` set up for fast inference: eval, conv+BN folded, layout, compiled.

    ``channels_last=None`` uses :func:`preferred_channels_last` for the example's device. Call the result
    under ``torch.inference_mode()``; feed it inputs in the returned example's memory format. The model is
    changed in place (fusing is irreversible), so pass a copy to keep a trainable one.
    """
    model.eval()
    if fuse:
        fuse_conv_bn(model, example)
    cl = preferred_channels_last(example.device, "infer") if channels_last is None else channels_last
    layout = "channels_last" if cl else "nchw"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return (_compile(model, None, inference=True) if compile else model), _layout_tensor(example, layout)


def run_bench(encoder: str = "vgg16", size: int = 256, batch: int = 4, num_classes: int = 2, in_channels: int = 3,
              iters: int = 5, warmup: int = 1, channels_last: str = "both", compile: str | bool = "off",
              fuse: str | bool = "on", compare: str | None = None, device: str = "cpu", infer_batch: int = 8,
              phases: Sequence[str] = ("train", "infer1", "inferN"), model_options: dict[str, Any] | None = None,
              smp_encoder: str | None = None, profile: bool = False, compile_mode: str | None = None,
              peak_n: int | None = None, keep_freed: bool = False, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark our UNet (and optionally smp's Unet) and return the report dict (see ``docs/performance.md``).

    Args:
        encoder, num_classes, in_channels, model_options: the model, ``UNet(encoder=..., **model_options)``.
        size, batch, infer_batch: square input side; training batch; the throughput phase's batch.
        iters, warmup: timed rounds and warm-up steps per phase.
        channels_last: ``"on"``, ``"off"``, ``"both"`` (measure both), ``"auto"`` (per-device choice).
        compile: ``"off"``, ``"on"`` or ``"both"``: ``torch.compile`` variants (compile time is reported).
        fuse: fold conv+BN for inference (``"on"``, ``"off"``, ``"both"``); applied alike to every model.
        compare: ``None`` or ``"smp"``: add segmentation_models.pytorch's Unet with the same encoder
            (``smp_encoder`` overrides; encoders smp lacks, e.g. ``plain``, compare with ``vgg16``).
        phases: any of ``"train"``, ``"infer1"`` (batch-1 latency), ``"inferN"`` (``infer_batch`` throughput).
        profile: add the top operators of one step per model and phase (``torch.profiler``).
        peak_n: side of the peak-sampling matmul (default 2048 on CPU, 8192 on GPU).
        keep_freed: call :func:`keep_freed_memory` first (process-wide, cannot be undone).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    if compare not in (None, "smp"):
        raise ValueError(f"compare must be None or 'smp', not {compare!r}")
    bad = set(phases) - {"train", "infer1", "inferN"}
    if bad:
        raise ValueError(f"unknown phases {sorted(bad)}")
    if min(size, batch, infer_batch, iters) < 1 or warmup < 0:
        raise ValueError("size, batch, infer_batch and iters must be >= 1, warmup >= 0")
    compiles, fuses = _on_off(compile, "compile"), _on_off(fuse, "fuse")
    keep_freed = keep_freed_memory() if keep_freed and dev.type == "cpu" else False
    model_options = dict(model_options or {})

    torch.manual_seed(seed)
    builders: dict[str, Callable[[], nn.Module]] = {
        "unetkit": lambda: build_unet(encoder, num_classes, in_channels, **model_options)}
    names = {"unetkit": f"unetkit UNet(encoder={encoder!r}"
                        + "".join(f", {k}={v!r}" for k, v in model_options.items()) + ")"}
    if compare == "smp":
        smp_enc = smp_encoder or smp_encoder_for(encoder)
        builders["smp"] = lambda: build_smp(smp_enc, num_classes, in_channels)
        names["smp"] = f"smp Unet({smp_enc!r})"
    bases = {k: b().to(dev) for k, b in builders.items()}

    g = torch.Generator().manual_seed(seed)
    x_train = torch.randn(batch, in_channels, size, size, generator=g).to(dev)
    y_train = torch.randint(0, max(num_classes, 2), (batch, size, size), generator=g).to(dev)
    x1 = x_train[:1].clone()
    x_n = torch.randn(infer_batch, in_channels, size, size, generator=g).to(dev)

    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "config": {"encoder": encoder, "size": size, "batch": batch, "infer_batch": infer_batch,
                   "num_classes": num_classes, "in_channels": in_channels, "iters": iters, "warmup": warmup,
                   "channels_last": channels_last, "compile": compile, "compile_mode": compile_mode,
                   "fuse": fuse, "compare": compare, "device": str(dev), "phases": list(phases),
                   "model_options": model_options, "optimizer": "SGD(lr=1e-3, momentum=0.9)",
                   "loss": "cross_entropy", "dtype": "float32",
                   "keep_freed_memory": keep_freed},
        "machine": machine_info(dev),
        "models": {},
        "rows": [],
    }
    for key, m in bases.items():
        report["models"][key] = {"name": names[key], "params": _params(m),
                                 "forward_flops": count_forward_flops(m, x1)}
        if progress:
            progress(f"{names[key]}: {_params(m) / 1e6:.1f}M params, "
                     f"{report['models'][key]['forward_flops'] / 1e9:.1f} GFLOP forward per image")

    probe = _PeakProbe(dev, peak_n)

    if "train" in phases:
        for key, m in bases.items():
            report["models"][key]["train_flops"] = count_train_flops(m, x_train, y_train)
        variants = []
        for key, base in bases.items():
            for layout in _resolve_layouts(channels_last, dev, "train"):
                for comp in compiles:
                    model = copy.deepcopy(base).train()
                    if layout == "channels_last":
                        model = model.to(memory_format=torch.channels_last)
                    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                    variants.append(_Variant(key, layout, comp, False, _compile(model, compile_mode) if comp
                                             else model, model, _layout_tensor(x_train, layout), y_train, opt))
        if progress:
            progress(f"train: batch {batch}, {size}x{size}, {len(variants)} variants")
        _run_rounds(variants, _train_step, iters, warmup, dev, probe, progress)
        report["rows"] += [_row(v, "train", batch, report["models"][v.model]["train_flops"]) for v in variants]
        del variants

    for phase, x in (("infer1", x1), ("inferN", x_n)):
        if phase not in phases:
            continue
        variants = []
        for key, base in bases.items():
            for fused in fuses:
                eager = copy.deepcopy(base).eval()
                if fused:
                    fuse_conv_bn(eager, x1)
                for layout in _resolve_layouts(channels_last, dev, "infer"):
                    model = eager if layout == "nchw" else copy.deepcopy(eager).to(memory_format=torch.channels_last)
                    for comp in compiles:
                        variants.append(_Variant(key, layout, comp, fused, _compile(model, compile_mode, True)
                                                 if comp else model, model, _layout_tensor(x, layout)))
        if progress:
            progress(f"{phase}: batch {x.shape[0]}, {size}x{size}, {len(variants)} variants")
        _run_rounds(variants, _infer_step, iters, warmup, dev, probe, progress)
        report["rows"] += [_row(v, phase, x.shape[0], report["models"][v.model]["forward_flops"] * x.shape[0])
                           for v in variants]
        del variants

    report["peak"] = probe.summary()
    peak, conv_peak = report["peak"]["gflops"], report["peak"].get("conv_gflops", math.nan)
    for row in report["rows"]:
        row["frac_peak"] = row["gflops"] / peak if peak > 0 else math.nan
        row["frac_conv_peak"] = row["gflops"] / conv_peak if conv_peak > 0 else math.nan
    report["best"] = _best(report["rows"])
    report["ratios"] = _ratios(report)
    report["goals"] = _goals(report)
    if profile:
        report["profile"] = {key: {phase: profile_top_ops(base, phase, x_train, y_train, x1, x_n, channels_last,
                                                          dev, fused=fuses[-1])
                                   for phase in phases} for key, base in bases.items()}
    return report


def _best(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and phase, the fastest variant's summary."""
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cur = best.setdefault(r["model"], {}).get(r["phase"])
        if cur is None or r["median_s"] < cur["median_s"]:
            best[r["model"]][r["phase"]] = {k: r[k] for k in (
                "layout", "compiled", "fused", "median_s", "min_s", "times_s", "flops_per_step", "images_per_s",
                "gflops", "frac_peak", "frac_conv_peak")}
    return best


def _ratios(report: dict[str, Any]) -> dict[str, float]:
    """Ours / smp per phase, best variant of each: per-FLOP throughput and images/s.

    ``*_per_flop`` uses the medians; ``*_per_flop_paired`` is the median over rounds of the ratio within each
    round (both measured back to back); ``*_per_flop_min`` uses each variant's fastest round. On a quiet
    machine the three agree; when they differ the machine was busy and the paired figure is the fairest.
    """
    best = report["best"]
    if "smp" not in best:
        return {}
    out = {}
    for phase in best["unetkit"]:
        if phase in best["smp"]:
            a, b = best["unetkit"][phase], best["smp"][phase]
            flop_ratio = a["flops_per_step"] / b["flops_per_step"]  # same batch for both
            out[f"{phase}_per_flop"] = a["gflops"] / b["gflops"]
            out[f"{phase}_per_flop_paired"] = _median([tb / ta * flop_ratio
                                                       for ta, tb in zip(a["times_s"], b["times_s"])])
            out[f"{phase}_per_flop_min"] = b["min_s"] / a["min_s"] * flop_ratio
            out[f"{phase}_images_per_s"] = a["images_per_s"] / b["images_per_s"]
    return out


def _goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    best = report["best"]["unetkit"]
    values = {"train_per_flop_vs_smp": report["ratios"].get("train_per_flop"),
              "train_frac_peak": best.get("train", {}).get("frac_peak"),
              "infer_b1_frac_peak": best.get("infer1", {}).get("frac_peak")}
    return {k: {"target": GOALS[k], "value": v, "met": None if v is None else bool(v >= GOALS[k])}
            for k, v in values.items()}


# --------------------------------------------------------------------------------------------------------
# Profiling


def profile_top_ops(model: nn.Module, phase: str, x_train: torch.Tensor, y_train: torch.Tensor,
                    x1: torch.Tensor, x_n: torch.Tensor, channels_last: str = "auto",
                    device: str | torch.device = "cpu", top: int = 10, fused: bool = True) -> list[dict[str, Any]]:
    """The ``top`` operators by self time in one step of ``phase`` (after one warm-up step).

    Each entry: ``op``, ``calls``, ``self_s`` and ``share`` of the step's total self time.
    """
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    layout = _resolve_layouts(channels_last, dev, "train" if phase == "train" else "infer")[-1]
    model = copy.deepcopy(model)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if phase == "train":
        model.train()
        v = _Variant("p", layout, False, False, model, model, _layout_tensor(x_train, layout), y_train,
                     torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        step = _train_step
    else:
        model.eval()
        if fused:
            fuse_conv_bn(model, x1.contiguous())
        v = _Variant("p", layout, False, fused, model, model, _layout_tensor(x1 if phase == "infer1" else x_n,
                                                                              layout))
        step = _infer_step
    step(v)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(v)
        _sync(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    avgs = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in avgs) or 1
    avgs.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "calls": e.count, "self_s": getattr(e, key) / 1e6, "share": getattr(e, key) / total}
            for e in avgs[:top]]


# --------------------------------------------------------------------------------------------------------
# Text output


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any], markdown: bool = False) -> str:
    """The benchmark report as a table (plain text or markdown), with peak, ratios and goals."""
    cfg, mach, peak = report["config"], report["machine"], report["peak"]
    lines = [f"{mach['cpu']} ({mach['cpu_count']} cores, {mach['torch_threads']} threads, "
             f"{mach['cpu_capability']})" + (f", {mach['gpu']}" if "gpu" in mach else "")
             + f", torch {mach['torch']}, {cfg['dtype']}, {cfg['size']}x{cfg['size']}, device {cfg['device']}",
             f"fp32 matmul peak (torch.mm n={peak['n']}, median of {len(peak['samples'])} rounds): "
             f"{peak['gflops']:.1f} GFLOP/s" + (f"; reference conv ({peak['conv']}): {peak['conv_gflops']:.1f} "
                                                "GFLOP/s" if "conv_gflops" in peak else "")]
    for key, m in report["models"].items():
        extra = f", {m['train_flops'] / 1e9:.1f} GFLOP per training step" if "train_flops" in m else ""
        lines.append(f"{key}: {m['name']}, {m['params'] / 1e6:.2f}M params, "
                     f"{m['forward_flops'] / 1e9:.2f} GFLOP forward per image{extra}")
    header = ("model", "phase", "batch", "layout", "compile", "fused", "median ms", "img/s", "GFLOP/s",
              "% mm peak", "% conv peak", "peak MB", "compile s")
    rows = []
    for r in report["rows"]:
        rows.append((r["model"], r["phase"], str(r["batch"]), r["layout"], "yes" if r["compiled"] else "no",
                     "yes" if r["fused"] else "no", _fmt(r["latency_ms"]), _fmt(r["images_per_s"], ".2f"),
                     _fmt(r["gflops"]), _fmt(100 * r["frac_peak"]), _fmt(100 * r["frac_conv_peak"]),
                     _fmt(r["peak_mem_mb"], ".0f"),
                     _fmt(r["compile_s"])))
    lines += ["", _table(header, rows, markdown), ""]
    for k, v in report["ratios"].items():
        lines.append(f"ratio unetkit/smp {k}: {v:.3f}")
    for k, g in report["goals"].items():
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"goal {k} >= {g['target']}: {_fmt(g['value'], '.3f')} ({state})")
    for key, phases in report.get("profile", {}).items():
        for phase, ops in phases.items():
            top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:6])
            lines.append(f"top ops {key}/{phase}: {top}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Metric update throughput


def bench_metrics(size: int = 512, num_classes: int = 8, batch: int = 8, iters: int = 20, warmup: int = 3,
                  device: str = "cpu", torchmetrics: bool = True, seed: int = 0) -> dict[str, Any]:
    """Pixels/s of ``SegmentationMetrics.update`` on logits and on label maps (and torchmetrics' peer).

    Inputs: ``batch`` images of ``size x size`` with ``num_classes`` classes; variants interleaved per round.
    """
    from .metrics import SegmentationMetrics

    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, size, size, generator=g).to(dev)
    labels = logits.argmax(1)
    target = torch.randint(0, num_classes, (batch, size, size), generator=g).to(dev)
    ours = SegmentationMetrics(num_classes)
    cases: dict[str, Callable[[], Any]] = {
        "unetkit_logits": lambda: ours.update(logits, target),
        "unetkit_labels": lambda: ours.update(labels, target),
    }
    if torchmetrics:
        try:
            from torchmetrics.classification import MulticlassConfusionMatrix

            tm = MulticlassConfusionMatrix(num_classes, validate_args=False).to(dev)
            cases["torchmetrics_logits"] = lambda: tm.update(logits, target)
            cases["torchmetrics_labels"] = lambda: tm.update(labels, target)
        except ImportError:
            pass
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    for r in range(iters):
        keys = list(cases)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]
        for k in keys:
            times[k].append(_timed(cases[k], dev))
    pixels = batch * size * size
    results = {k: {"median_s": _median(t), "pixels_per_s": pixels / _median(t), "times_s": t}
               for k, t in times.items()}
    return {"schema": SCHEMA_VERSION, "config": {"size": size, "num_classes": num_classes, "batch": batch,
                                                 "iters": iters, "warmup": warmup, "device": str(dev)},
            "machine": machine_info(dev), "pixels_per_update": pixels, "results": results}


def format_metrics(report: dict[str, Any], markdown: bool = False) -> str:
    """The metric benchmark as a table."""
    cfg = report["config"]
    rows = [(k, _fmt(1000 * r["median_s"], ".2f"), _fmt(r["pixels_per_s"] / 1e6, ".1f"))
            for k, r in report["results"].items()]
    title = (f"update() of {cfg['batch']}x{cfg['size']}x{cfg['size']}, {cfg['num_classes']} classes "
             f"({report['pixels_per_update'] / 1e6:.2f} Mpixel), median of {cfg['iters']}")
    return title + "\n\n" + _table(("case", "median ms", "Mpixel/s"), rows, markdown)


# --------------------------------------------------------------------------------------------------------
# Encoder table


def bench_encoders(names: Sequence[str] | None = None, size: int = 256, batch: int = 1, iters: int = 5,
                   warmup: int = 1, layouts: Sequence[str] = ("nchw", "channels_last"), num_classes: int = 2,
                   device: str = "cpu", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parameters, forward FLOPs and eval-mode forward latency (median, ms) of a UNet with each encoder.

    One model at a time (weights ``None``, eval mode, ``torch.inference_mode``); its layouts interleaved.
    """
    from .models.encoders import encoder_names

    dev = torch.device(device)
    rows = []
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    for name in names if names is not None else encoder_names():
        torch.manual_seed(0)
        model = build_unet(name, num_classes).to(dev).eval()
        row: dict[str, Any] = {"encoder": name, "params": _params(model),
                               "forward_flops": count_forward_flops(model, x[:1])}
        variants = []
        for layout in layouts:
            m = model if layout == "nchw" else copy.deepcopy(model).to(memory_format=torch.channels_last)
            variants.append(_Variant(name, layout, False, False, m, m, _layout_tensor(x, layout)))
        _run_rounds(variants, _infer_step, iters, warmup, dev, None, None)
        for v in variants:
            row[f"ms_{v.layout}"] = 1000 * _median(v.times)
        row["ms"] = min(row[f"ms_{layout}"] for layout in layouts)
        row["gflops"] = row["forward_flops"] * batch / row["ms"] * 1e3 / 1e9
        rows.append(row)
        if progress:
            progress(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.startswith("ms_")))
    return {"schema": SCHEMA_VERSION, "config": {"size": size, "batch": batch, "iters": iters, "warmup": warmup,
                                                 "layouts": list(layouts), "num_classes": num_classes,
                                                 "device": str(dev)},
            "machine": machine_info(dev), "rows": rows}


def format_encoders_markdown(report: dict[str, Any]) -> str:
    """The encoder table in markdown, with the machine and settings it was measured with."""
    cfg, mach = report["config"], report["machine"]
    layouts = cfg["layouts"]
    header = ("encoder", "params", "GFLOP", *[f"ms {'NCHW' if lay == 'nchw' else 'channels_last'}"
                                              for lay in layouts], "GFLOP/s")
    rows = [(r["encoder"], f"{r['params'] / 1e6:.1f}M", f"{r['forward_flops'] / 1e9:.1f}",
             *[_fmt(r[f"ms_{lay}"]) for lay in layouts], _fmt(r["gflops"])) for r in report["rows"]]
    note = (f"UNet with each encoder (weights None, {cfg['num_classes']} classes), forward pass, batch "
            f"{cfg['batch']}, 3x{cfg['size']}x{cfg['size']}, eval + inference_mode, median of {cfg['iters']} "
            f"after {cfg['warmup']} warm-up; {mach['cpu']}, {mach['torch_threads']} threads, torch "
            f"{mach['torch']}.")
    return note + "\n\n" + _table(header, rows, markdown=True)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
