"""Timing code the way benchmarks and reports need it: synchronised, warmed up, median of repeats."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so wall time covers the work itself."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> float:
    """Seconds one call of ``fn`` takes, synchronising ``device`` before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1,
                device: torch.device | str | None = None) -> float:
    """Median seconds of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return median([timed(fn, device) for _ in range(repeats)])
