"""The machine's practical fp32 peak: a large ``torch.mm`` and a reference convolution, timed alike.

Achieved GFLOP/s of a model mean little alone; reported as a fraction of what the same library reaches
on a plain matmul (and on one large convolution) in the same run, they say how close to the machine's
limit the model runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..device import resolve_device
from ..timing import median, timed


def _matmul_operands(device: torch.device, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = n or (2048 if device.type == "cpu" else 8192)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    return a, b


def _matmul_sample(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """GFLOP/s of ``a @ b`` (median of ``repeats``)."""
    n = a.shape[0]
    ts = [timed(lambda: torch.mm(a, b), a.device) for _ in range(repeats)]
    return 2 * n**3 / median(ts) / 1e9


def matmul_peak(device: str | torch.device = "cpu", n: int | None = None, repeats: int = 7) -> dict[str, Any]:
    """The fp32 matmul rate of a square ``torch.mm`` of size ``n`` (2048 on CPU, 8192 on GPU), in GFLOP/s.

    This is the practical peak the model's convolutions are compared with (same library, same threads).
    """
    dev = resolve_device(device)
    a, b = _matmul_operands(dev, n)
    torch.mm(a, b)  # warm-up
    samples = [_matmul_sample(a, b, 1) for _ in range(repeats)]
    return {"gflops": median(samples), "samples": samples, "n": a.shape[0], "dtype": "float32"}


class PeakProbe:
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
        """Time the matmul (and the convolution) three times each and keep the medians as this round's."""
        self.mm.append(_matmul_sample(self.a, self.b))
        if self.conv_module is not None:
            ts = [timed(self._run_conv, self.device) for _ in range(3)]
            self.conv.append(self.conv_flops / median(ts) / 1e9)

    def summary(self) -> dict[str, Any]:
        """The report's ``peak`` entry: medians over rounds, every sample, and how they were taken."""
        out: dict[str, Any] = {
            "gflops": median(self.mm), "max_gflops": max(self.mm, default=math.nan), "samples": self.mm,
            "n": self.a.shape[0], "dtype": "float32",
            "method": "torch.mm of two n x n fp32 matrices, 3 calls per round, median over rounds"}
        if self.conv_module is not None:
            bsz, ch, side = self.CONV
            out.update({"conv_gflops": median(self.conv), "conv_samples": self.conv,
                        "conv": f"3x3 conv {ch}->{ch}, {bsz}x{side}x{side}, channels_last, forward"})
        return out
