"""The suites' reports as text: plain aligned tables for the terminal, or markdown for the docs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """``rows`` under ``header``: a markdown table, or plain columns (first left-aligned, others right)."""
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
    """The model suite's report as a table (plain text or markdown), with peak, ratios and goals."""
    cfg, mach, peak = report["config"], report["machine"], report["peak"]
    gpu = f", {mach['gpu']}" if "gpu" in mach else ""
    conv = (f"; reference conv ({peak['conv']}): {peak['conv_gflops']:.1f} GFLOP/s"
            if "conv_gflops" in peak else "")
    lines = [f"{mach['cpu']} ({mach['cpu_count']} cores, {mach['torch_threads']} threads, "
             f"{mach['cpu_capability']}){gpu}, torch {mach['torch']}, {'/'.join(cfg['amp'])}, "
             f"{cfg['size']}x{cfg['size']}, device {cfg['device']}",
             f"fp32 matmul peak (torch.mm n={peak['n']}, median of {len(peak['samples'])} rounds): "
             f"{peak['gflops']:.1f} GFLOP/s{conv}"]
    for key, m in report["models"].items():
        extra = f", {m['train_flops'] / 1e9:.1f} GFLOP per training step" if "train_flops" in m else ""
        lines.append(f"{key}: {m['name']}, {m['params'] / 1e6:.2f}M params, "
                     f"{m['forward_flops'] / 1e9:.2f} GFLOP forward per image{extra}")
    header = ("model", "phase", "batch", "layout", "amp", "compile", "fused", "median ms", "img/s", "GFLOP/s",
              "% mm peak", "% conv peak", "peak MB", "compile s")
    rows = []
    for r in report["rows"]:
        rows.append((r["model"], r["phase"], str(r["batch"]), r["layout"], r["amp"], "yes" if r["compiled"] else "no",
                     "yes" if r["fused"] else "no", fmt(r["latency_ms"]), fmt(r["images_per_s"], ".2f"),
                     fmt(r["gflops"]), fmt(100 * r["frac_peak"]), fmt(100 * r["frac_conv_peak"]),
                     fmt(r["peak_mem_mb"], ".0f"),
                     fmt(r["compile_s"])))
    lines += ["", table(header, rows, markdown), ""]
    for k, v in report["ratios"].items():
        model, _, what = k.rpartition("/")
        lines.append(f"ratio {model or 'unetkit'}/smp {what}: {v:.3f}")
    for k, g in report["goals"].items():
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"goal {k} >= {g['target']}: {fmt(g['value'], '.3f')} ({state})")
    for key, phases in report.get("profile", {}).items():
        for phase, ops in phases.items():
            top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:6])
            lines.append(f"top ops {key}/{phase}: {top}")
    return "\n".join(lines)


def format_metrics(report: dict[str, Any], markdown: bool = False) -> str:
    """The metric benchmark as a table."""
    cfg = report["config"]
    rows = [(k, fmt(1000 * r["median_s"], ".2f"), fmt(r["pixels_per_s"] / 1e6, ".1f"))
            for k, r in report["results"].items()]
    title = (f"update() of {cfg['batch']}x{cfg['size']}x{cfg['size']}, {cfg['num_classes']} classes "
             f"({report['pixels_per_update'] / 1e6:.2f} Mpixel), median of {cfg['iters']}")
    return title + "\n\n" + table(("case", "median ms", "Mpixel/s"), rows, markdown)


def format_encoders_markdown(report: dict[str, Any]) -> str:
    """The encoder table in markdown, with the machine and settings it was measured with."""
    cfg, mach = report["config"], report["machine"]
    layouts = cfg["layouts"]
    header = ("encoder", "params", "GFLOP", *[f"ms {'NCHW' if lay == 'nchw' else 'channels_last'}"
                                              for lay in layouts], "GFLOP/s")
    rows = [(r["encoder"], f"{r['params'] / 1e6:.1f}M", f"{r['forward_flops'] / 1e9:.1f}",
             *[fmt(r[f"ms_{lay}"]) for lay in layouts], fmt(r["gflops"])) for r in report["rows"]]
    note = (f"UNet with each encoder (weights None, {cfg['num_classes']} classes), forward pass, batch "
            f"{cfg['batch']}, 3x{cfg['size']}x{cfg['size']}, eval + inference_mode, median of {cfg['iters']} "
            f"after {cfg['warmup']} warm-up; {mach['cpu']}, {mach['torch_threads']} threads, torch "
            f"{mach['torch']}.")
    return note + "\n\n" + table(header, rows, markdown=True)
