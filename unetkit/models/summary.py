"""A model summary: each stage's output shape, parameters and forward FLOPs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .encoders.base import axis_reductions


@dataclass
class SummaryRow:
    name: str
    shape: tuple[int, ...]
    params: int | None
    flops: int | None


def _params(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _shape(t: torch.Tensor | Sequence[torch.Tensor]) -> tuple[int, ...]:
    return tuple((t[0] if isinstance(t, list | tuple) else t).shape)


def summary(model: nn.Module, input_size: Sequence[int] = (1, 3, 256, 256),
            print_fn: Callable[[str], None] | None = print) -> list[SummaryRow]:
    """Print (and return) a table of the UNet's stages: output shape, parameters, forward FLOPs.

    FLOPs count a multiply-add as two, as ``torch.utils.flop_counter`` does. A 3D model takes
    ``(N, C, D, H, W)``; a stage reduced differently per axis shows each (``/1x2x2``). Runs one forward pass in
    eval mode on zeros of ``input_size`` (on the model's device); the model's mode is restored after.
    """
    param = next(model.parameters())
    x = torch.zeros(*input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    enc_out: list[torch.Tensor] = []
    outs: dict[str, torch.Tensor] = {}
    named = {"encoder": model.encoder}
    named.update({f"decoder.blocks.{i}": b for i, b in enumerate(model.decoder.blocks)})
    if getattr(model, "bottleneck_attention", None) is not None:
        named["bottleneck_attention"] = model.bottleneck_attention
    named["head"] = model.head
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n, m in named.items()]
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    enc_out = outs["encoder"]
    flops = {k.split(".", 1)[1] if "." in k else "": sum(v.values()) for k, v in counter.get_flop_counts().items()}
    rows = [SummaryRow("input", tuple(x.shape), None, None)]
    reds = [r[0] if len(set(r)) == 1 else "x".join(map(str, r)) for r in axis_reductions(model.encoder)]
    for i, f in enumerate(enc_out):
        rows.append(SummaryRow(f"encoder.stage{i} (/{reds[i]})", tuple(f.shape), None, None))
    rows.append(SummaryRow("encoder (total)", _shape(enc_out[-1]), _params(model.encoder), flops.get("encoder", 0)))
    for name in named:
        if name in ("encoder",):
            continue
        rows.append(SummaryRow(name, _shape(outs[name]), _params(named[name]), flops.get(name, 0)))
    extra = _params(model) - sum(r.params or 0 for r in rows)
    if extra:
        rows.append(SummaryRow("stage heads + fusion", _shape(y), extra, None))
    rows.append(SummaryRow("output", _shape(y), _params(model), counter.get_total_flops()))
    if print_fn is not None:
        print_fn(format_summary(rows))
    return rows


def format_summary(rows: Sequence[SummaryRow]) -> str:
    """Render summary rows as a fixed-width text table."""
    def fmt(v: int | None, scale: float, unit: str) -> str:
        return "" if v is None else f"{v / scale:,.2f}{unit}"

    lines = [f"{'layer':<28}{'output shape':<24}{'params':>14}{'FLOPs':>14}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r.name:<28}{str(list(r.shape)):<24}{fmt(r.params, 1e6, 'M'):>14}{fmt(r.flops, 1e9, 'G'):>14}")
    return "\n".join(lines)
