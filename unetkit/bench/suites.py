"""The smaller suites: metric update throughput, and a table of every encoder (params, FLOPs, latency)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..device import resolve_device
from ..models import UNet, UNetConfig
from ..timing import median, timed
from .flops import count_forward_flops, count_params
from .harness import SCHEMA_VERSION, Variant, infer_step, layout_tensor, run_rounds
from .machine import machine_info


def bench_metrics(size: int = 512, num_classes: int = 8, batch: int = 8, iters: int = 20, warmup: int = 3,
                  device: str | torch.device = "cpu", torchmetrics: bool = True,
                  seed: int = 0) -> dict[str, Any]:
    """Pixels/s of ``SegmentationMetrics.update`` on logits and on label maps (and torchmetrics' peer).

    Inputs: ``batch`` images of ``size x size`` with ``num_classes`` classes; variants interleaved per round.
    """
    from ..metrics import SegmentationMetrics

    dev = resolve_device(device)
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
            times[k].append(timed(cases[k], dev))
    pixels = batch * size * size
    results = {k: {"median_s": median(t), "pixels_per_s": pixels / median(t), "times_s": t}
               for k, t in times.items()}
    return {"schema": SCHEMA_VERSION, "config": {"size": size, "num_classes": num_classes, "batch": batch,
                                                 "iters": iters, "warmup": warmup, "device": str(dev)},
            "machine": machine_info(dev), "pixels_per_update": pixels, "results": results}


def bench_encoders(names: Sequence[str] | None = None, size: int = 256, batch: int = 1, iters: int = 5,
                   warmup: int = 1, layouts: Sequence[str] = ("nchw", "channels_last"), num_classes: int = 2,
                   device: str | torch.device = "cpu",
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parameters, forward FLOPs and eval-mode forward latency (median, ms) of a UNet with each encoder.

    Each model is ``UNet(UNetConfig(encoder=name, num_classes=num_classes))`` (no weights); one model at a
    time, eval mode, ``torch.inference_mode``, its layouts interleaved.
    """
    from ..models.encoders import encoder_names

    dev = resolve_device(device)
    rows = []
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    for name in names if names is not None else encoder_names():
        torch.manual_seed(0)
        model = UNet(UNetConfig(encoder=name, num_classes=num_classes)).to(dev).eval()
        row: dict[str, Any] = {"encoder": name, "params": count_params(model),
                               "forward_flops": count_forward_flops(model, x[:1])}
        variants = []
        for layout in layouts:
            m = model if layout == "nchw" else copy.deepcopy(model).to(memory_format=torch.channels_last)
            variants.append(Variant(name, layout, False, False, m, m, layout_tensor(x, layout)))
        run_rounds(variants, infer_step, iters, warmup, dev)
        for v in variants:
            row[f"ms_{v.layout}"] = 1000 * median(v.times)
        row["ms"] = min(row[f"ms_{layout}"] for layout in layouts)
        row["gflops"] = row["forward_flops"] * batch / row["ms"] * 1e3 / 1e9
        rows.append(row)
        if progress:
            progress(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k.startswith("ms_")))
    config = {"size": size, "batch": batch, "iters": iters, "warmup": warmup, "layouts": list(layouts),
              "num_classes": num_classes, "device": str(dev)}
    return {"schema": SCHEMA_VERSION, "config": config, "machine": machine_info(dev), "rows": rows}
