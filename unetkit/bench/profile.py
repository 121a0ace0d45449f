"""Where a step's time goes: the top operators by self time, from ``torch.profiler``."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..device import resolve_device
from ..models.fuse import fuse_conv_bn
from ..timing import synchronize
from .harness import Variant, infer_step, layout_tensor, resolve_layouts, train_step


def profile_top_ops(model: nn.Module, phase: str, x_train: torch.Tensor, y_train: torch.Tensor,
                    x1: torch.Tensor, x_n: torch.Tensor, channels_last: str = "auto",
                    device: str | torch.device = "cpu", top: int = 10,
                    fused: bool = True) -> list[dict[str, Any]]:
    """The ``top`` operators by self time in one step of ``phase`` (after one warm-up step).

    ``model`` is copied (the caller's stays as it is). Each entry: ``op``, ``calls``, ``self_s`` and
    ``share`` of the step's total self time.
    """
    from torch.profiler import ProfilerActivity, profile

    dev = resolve_device(device)
    layout = resolve_layouts(channels_last, dev, "train" if phase == "train" else "infer")[-1]
    model = copy.deepcopy(model)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if phase == "train":
        model.train()
        v = Variant("p", layout, False, False, model, model, layout_tensor(x_train, layout), y_train,
                    torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        step = train_step
    else:
        model.eval()
        if fused:
            fuse_conv_bn(model, x1.contiguous())
        x = x1 if phase == "infer1" else x_n
        v = Variant("p", layout, False, fused, model, model, layout_tensor(x, layout))
        step = infer_step
    step(v)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(v)
        synchronize(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    avgs = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in avgs) or 1
    avgs.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "calls": e.count, "self_s": getattr(e, key) / 1e6, "share": getattr(e, key) / total}
            for e in avgs[:top]]
