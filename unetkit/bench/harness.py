"""The round-robin harness: measured variants, their steps, the timed rounds and one report row each.

A variant is one configuration of one model (memory layout, precision, compiled or not, conv+BN folded or
not). The
rounds time one step of every variant in an order rotated each round, so slow spells of a shared machine
hit them all alike; a row summarises one variant's times (medians) against its FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..device import amp_name
from ..inference import compile_for_inference, preferred_channels_last
from ..timing import median, timed
from .flops import main_output, train_loss
from .machine import PeakMemory
from .peak import PeakProbe

#: Version of the JSON reports the suites return.
SCHEMA_VERSION = 1
#: The phases a model benchmark can run: a training step, batch-1 latency, batch-N throughput.
PHASES = ("train", "infer1", "inferN")


@dataclass
class Variant:
    """One measured configuration: which model, layout, compiled, BN folded, autocast dtype; its state and
    timings.

    ``module`` is what runs (possibly ``torch.compile``'d), ``eager`` the ``nn.Module`` behind it. ``amp`` is the
    autocast dtype (``None``: fp32); an fp16 training variant steps through a ``GradScaler`` as training does.
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
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    times: list[float] = field(default_factory=list)
    mem: int | None = None
    first_s: float = math.nan

    @property
    def label(self) -> str:
        extra = ("+compile" if self.compiled else "") + ("+fused" if self.fused else "")
        if self.amp is not None:
            extra += "+" + amp_name(self.amp)
        return f"{self.model}/{self.layout}{extra}"

    def autocast(self) -> torch.autocast:
        """The variant's autocast context (disabled for fp32)."""
        return torch.autocast(self.x.device.type, dtype=self.amp, enabled=self.amp is not None)


def layout_tensor(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` in ``layout`` (``"channels_last"`` or ``"nchw"``), contiguous."""
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def resolve_layouts(channels_last: str, device: torch.device, phase: str) -> list[str]:
    """The layouts to measure for ``--channels-last`` ``auto``, ``on``, ``off`` or ``both``."""
    if channels_last == "both":
        return ["nchw", "channels_last"]
    if channels_last == "auto":
        return ["channels_last" if preferred_channels_last(device, phase) else "nchw"]
    if channels_last in ("on", "off"):
        return ["channels_last" if channels_last == "on" else "nchw"]
    raise ValueError(f"channels_last must be auto, on, off or both, not {channels_last!r}")


def on_off(value: str | bool, name: str) -> list[bool]:
    """The settings to measure for an ``on``/``off``/``both`` option (a bool is one setting)."""
    if isinstance(value, bool):
        return [value]
    choices = {"on": [True], "off": [False], "both": [False, True]}
    if value not in choices:
        raise ValueError(f"{name} must be on, off or both, not {value!r}")
    return choices[value]


def compile_variant(module: nn.Module, compile_mode: str | None,
                    inference: bool = False) -> Callable[..., Any]:
    """``torch.compile`` in ``compile_mode``; inference in the default mode compiles as :mod:`unetkit.inference`
    does (with freezing)."""
    if inference and compile_mode is None:
        return compile_for_inference(module)
    return torch.compile(module, mode=compile_mode)


def train_step(v: Variant) -> None:
    """One SGD step of ``v`` on its batch: forward under the variant's autocast, loss in fp32 as in training."""
    assert v.opt is not None and v.y is not None
    v.opt.zero_grad(set_to_none=True)
    with v.autocast():
        out = main_output(v.module(v.x))
    loss = train_loss(out.float(), v.y)
    if v.scaler is None:
        loss.backward()
        v.opt.step()
    else:
        v.scaler.scale(loss).backward()
        v.scaler.step(v.opt)
        v.scaler.update()


def infer_step(v: Variant) -> None:
    """One forward pass of ``v`` under ``torch.inference_mode``."""
    with torch.inference_mode(), v.autocast():
        v.module(v.x)


def run_rounds(variants: list[Variant], step: Callable[[Variant], None], iters: int, warmup: int,
               device: torch.device, probe: PeakProbe | None = None,
               progress: Callable[[str], None] | None = None) -> None:
    """Warm up every variant, measure its peak memory in one more step, then time ``iters`` rounds.

    A round times one step of every variant, in an order rotated each round. With a ``probe`` each round
    also samples the matmul (and conv) peak. Memory is measured outside the timed rounds because resetting
    the peak (returning freed heap to the OS) would add page faults to the timed step.
    """
    for v in variants:
        v.first_s = timed(lambda v=v: step(v), device)  # includes compilation for compiled variants
    for _ in range(max(warmup - 1, 0)):
        for v in variants:
            step(v)
    for v in variants:
        with PeakMemory(device) as pm:
            step(v)
        v.mem = pm.peak
    for r in range(iters):
        if probe is not None:
            probe.sample()
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            v.times.append(timed(lambda v=v: step(v), device))
        if progress is not None:
            times = ", ".join(f"{v.label} {v.times[-1]:.3f}s" for v in variants)
            progress(f"  round {r + 1}/{iters}: {times}")


def row(v: Variant, phase: str, batch: int, flops_per_step: int) -> dict[str, Any]:
    """The report row of a timed variant: medians, throughput, achieved GFLOP/s, memory, compile time."""
    med = median(v.times)
    gflops = flops_per_step / med / 1e9 if med > 0 else math.nan
    return {
        "model": v.model, "phase": phase, "batch": batch, "layout": v.layout, "amp": amp_name(v.amp),
        "compiled": v.compiled,
        "fused": v.fused, "iters": len(v.times), "times_s": v.times, "median_s": med, "min_s": min(v.times),
        "images_per_s": batch / med, "latency_ms": 1000 * med, "flops_per_step": flops_per_step,
        "gflops": gflops, "peak_mem_mb": None if v.mem is None else v.mem / 2**20,
        "first_call_s": v.first_s, "compile_s": max(v.first_s - med, 0.0) if v.compiled else None,
    }
