"""The machine a benchmark runs on: what it is, how its memory is measured and tuned, how many threads.

Every number a benchmark reports needs this context (CPU, threads, versions), and two process-wide
settings change the numbers themselves: glibc's malloc policy and torch's intra-op thread count.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

from ..device import resolve_device
from ..timing import synchronize


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU/GPU model, cores, torch threads and versions: the context every number needs."""
    dev = resolve_device(device)
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


class PeakMemory:
    """Peak memory (bytes, in :attr:`peak`) used while the block runs, above the level when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process's peak resident set (``VmHWM``),
    reset through ``/proc/self/clear_refs`` after returning freed heap to the OS; ``None`` elsewhere.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
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

    def __enter__(self) -> PeakMemory:
        self._base: int | None = None
        if self.device.type == "cuda":
            synchronize(self.device)
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
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self._status()["VmHWM"] - self._base, 0)


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
