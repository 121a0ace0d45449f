"""Choosing the device and its precision: the one resolver of ``--device`` and of ``--amp`` (autocast dtype),
used by training, evaluation, prediction and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

#: How every command describes --device.
DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; otherwise ``name`` as given.

    ``"cuda"`` without an index means GPU ``local_rank`` (the process's GPU under torchrun), and it becomes
    the current CUDA device. Raises ``ValueError`` (one line, naming the fix) for an unusable name.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device


# --------------------------------------------------------------------------- mixed precision
#: The ``amp`` choices: ``auto`` (the rule of :func:`resolve_amp`), ``off`` (fp32), ``bf16``, ``fp16``.
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
#: Environment variable forcing :func:`cpu_has_native_bf16`'s verdict: ``1`` (yes) or ``0`` (no).
CPU_BF16_ENV = "UNETKIT_CPU_BF16"
#: The probe's verdict is yes when its bf16 convolution takes at most this share of the fp32 time. CPUs
#: with native bf16 (AVX512-BF16, AMX) measure about 0.6 here; without it bf16 is emulated and slower than
#: fp32 (over 100x without AVX-512), so a bf16 that does not win clearly is not worth its rounding.
BF16_MAX_RATIO = 0.9
#: File (under the user's cache folder) holding the measured verdicts, keyed by CPU model and torch version.
BF16_CACHE_FILE = "cpu_bf16.json"


def resolve_amp(amp: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or ``None`` for fp32: the one rule behind training (its
    validation included), ``unetkit evaluate`` and ``unetkit predict``.

    ``auto`` is bf16 on CUDA GPUs that support it and fp16 on older ones; on a CPU it is bf16 where
    :func:`cpu_has_native_bf16` says the CPU runs it natively (measured, cached), else fp32. On such CPUs
    bf16 training won all 20 paired runs of the development suite at the same wall time (five seeds a set,
    docs/training.md) and its inference labels 99.98 % of pixels as fp32 does. ``bf16`` forces bf16 autocast
    anywhere (on a CPU without native bf16 it is many times slower); ``fp16`` needs CUDA; ``off`` is fp32.
    Only the model's forward pass runs under autocast: losses, metrics, parameters and optimizer state stay
    fp32.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be auto, off, fp16 or bf16, not {amp!r}")
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use --amp off (or bf16 on a CPU with native bf16)")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def amp_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: how summaries name an autocast dtype from :func:`resolve_amp`."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def describe_amp(amp: str, dtype: torch.dtype | None, device: str | torch.device) -> str:
    """One phrase for summaries: the precision :func:`resolve_amp` chose and, for ``auto``, why."""
    name = amp_name(dtype) + (" autocast" if dtype is not None else "")
    if amp != "auto":
        return f"{name}, --amp {amp}"
    if torch.device(device).type == "cpu":
        forced = os.environ.get(CPU_BF16_ENV, "").strip()
        if forced:
            why = f"{CPU_BF16_ENV}={forced}"
        else:
            why = "bf16 measured faster on this CPU" if dtype is not None else "no fast bf16 on this CPU"
        return f"{name}, --amp auto: {why}"
    return f"{name}, --amp auto"


def cpu_has_native_bf16() -> bool:
    """Whether bf16 autocast is clearly faster than fp32 on this CPU (so ``--amp auto`` uses it there).

    Not just the CPU flag: :func:`probe_cpu_bf16` times a small convolution both ways, and the verdict is
    yes when bf16 takes at most :data:`BF16_MAX_RATIO` of the fp32 time. Measured once per CPU model and
    torch version: the verdict is kept in the process and in ``cpu_bf16.json`` under
    ``$XDG_CACHE_HOME/unetkit`` (default ``~/.cache/unetkit``; an unwritable folder only costs a probe of
    about 10 ms per process). ``UNETKIT_CPU_BF16=1`` or ``0`` overrides it.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 autocast on this CPU), 0 (fp32) or leave "
                             "it unset (measured)")
        return forced == "1"
    return _measured_cpu_bf16()


@functools.cache
def _measured_cpu_bf16() -> bool:
    key = _cpu_key()
    path = bf16_cache_path()
    known = _read_json(path)
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("native_bf16"), bool):
        return entry["native_bf16"]
    result = probe_cpu_bf16()
    with contextlib.suppress(OSError, ValueError):  # an unwritable cache: measure again next time
        from .atomic import atomic_write

        known = {**_read_json(path), key: result}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(known, indent=1, sort_keys=True)))
    return bool(result["native_bf16"])


def bf16_cache_path() -> Path:
    """Where :func:`cpu_has_native_bf16` keeps its verdicts: ``$XDG_CACHE_HOME/unetkit/cpu_bf16.json``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unetkit" / BF16_CACHE_FILE


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_key() -> str:
    return f"{cpu_model()} | {platform.machine()} | torch {torch.__version__}"


def _cpu_flags() -> list[str]:
    """The bf16-related CPU flags (``avx512_bf16``, ``amx_bf16``, ...) from ``/proc/cpuinfo``; for the record."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f)
    return []


def probe_cpu_bf16(pairs: int = 8) -> dict[str, Any]:
    """Time a 3x3 convolution (32 -> 32 channels, 1x32x64x64, channels_last) in fp32 and under bf16 autocast.

    One thread (what is measured is the core's arithmetic, and a second thread waiting for a busy core
    would add stalls of milliseconds), a warm-up call each (oneDNN builds its kernels on first use), then
    ``pairs`` interleaved fp32/bf16 calls; the fastest call of each counts (other processes only ever add
    time). Stops after 3 pairs when bf16 is over 4x slower (emulated). About 10 ms where bf16 is native,
    well under a second where it is not. Uses its own random generator, so the global RNG is untouched.
    Returns the verdict (``native_bf16``), both times (ms), their ratio, the threshold and the CPU's flags.
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(32, 32, 3, 3, generator=g) * 0.06).contiguous(memory_format=torch.channels_last)
    b = torch.zeros(32)

    def seconds(bf16: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            F.conv2d(x, w, b, padding=1)
            return time.perf_counter() - t0

    fp32: list[float] = []
    bf16: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            seconds(False)
            seconds(True)
            for i in range(pairs):
                fp32.append(seconds(False))
                bf16.append(seconds(True))
                if i == 2 and min(bf16) > 4 * min(fp32):
                    break
    finally:
        torch.set_num_threads(threads)
    ratio = min(bf16) / min(fp32)
    return {"native_bf16": ratio <= BF16_MAX_RATIO, "ratio": round(ratio, 3), "threshold": BF16_MAX_RATIO,
            "fp32_ms": round(min(fp32) * 1e3, 4), "bf16_ms": round(min(bf16) * 1e3, 4),
            "cpu_flags": _cpu_flags(), "cpu": cpu_model(), "torch": torch.__version__}
