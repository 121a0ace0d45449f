"""Run-directory outputs a person looks at: ``metrics.csv``, ``curves.png``, sample panels, ``report.html``.

Figures are built by ``*_figure`` functions (tested through their texts, ticks and limits) and encoded by
the ``*_png`` ones.

Every file is written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..evaluate import EvalResult
from ..viz import Color, legend_entries, save_rgb_png

CSV_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_miou", "val_dice", "val_pixel_accuracy", "lr", "seconds")


def write_metrics_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per epoch, the columns of :data:`CSV_COLUMNS` (validation columns empty between validations)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)

    atomic_write(path, write)


def write_case_csv(per_case: dict[str, Any], path: Path) -> None:
    """``per_case.csv``: one row per case (and a last ``mean`` row), columns ``<metric>_<class>``."""
    classes = per_case["classes"]
    metrics = ("dice", "iou", "hd95", "nsd")
    fields = ["case"] + [f"{m}_{c}" for m in metrics for c in classes]

    def row(name: str, m: dict[str, Any]) -> dict[str, Any]:
        return {"case": name, **{f"{k}_{c}": m[k][j] for k in metrics for j, c in enumerate(classes)}}

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([row(c["case"], c) for c in per_case["cases"]] + [row("mean", per_case["mean"])])

    atomic_write(path, write)


def save_png(rgb: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda tmp: save_rgb_png(rgb, tmp))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 array encoded as PNG, for inlining in the report."""
    buf = io.BytesIO()
    save_rgb_png(rgb, buf)
    return buf.getvalue()


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_row(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> dict[str, Any] | None:
    """The validated row of ``best_epoch``; by default the first one with the highest ``val_miou`` (the
    trainer keeps ``best.pt`` from that epoch). ``None`` before any validation."""
    val = [h for h in history if "val_miou" in h]
    if best_epoch is not None:
        for h in val:
            if h["epoch"] == best_epoch:
                return h
    return max(val, key=lambda h: h["val_miou"]) if val else None  # max() keeps the first of equal values


def loss_limits(values: Sequence[float], epochs: Sequence[int]) -> tuple[float, float]:
    """Y limits of the loss plot that an early spike does not flatten.

    Values of the first fifth of the run that are more than twice the highest later value are left out of
    the range (they are drawn as off-scale markers); everything else is shown.
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(epochs, dtype=np.float64)
    ok = np.isfinite(v)
    v, e = v[ok], e[ok]
    if not v.size:
        return 0.0, 1.0
    later = v[e > e.min() + (e.max() - e.min()) / 5]
    keep = v <= 2 * later.max() if later.size >= 2 else np.ones_like(v, dtype=bool)
    top = float(v[keep].max())
    lo = float(v.min())
    span = max(top - lo, 1e-3 * max(abs(top), 1e-12))
    return max(0.0, lo - 0.08 * span) if lo >= 0 else lo - 0.08 * span, top + 0.08 * span


def curves_figure(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Any:
    """The figure of :func:`curves_png` (returned so tests can read its texts, ticks and limits)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    rows = [h for h in history if h.get("train_loss") is not None]
    val = [h for h in history if "val_miou" in h]
    ep, vep = [h["epoch"] for h in rows], [h["epoch"] for h in val]
    mark = {"marker": "o", "markersize": 3} if len(val) < 30 else {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [h["train_loss"] for h in rows], label="train", **(mark if len(rows) < 30 else {}))
    a.plot(vep, [h["val_loss"] for h in val], label="validation", **mark)
    losses = [h["train_loss"] for h in rows] + [h["val_loss"] for h in val]
    lo, hi = loss_limits(losses, ep + vep)
    a.set_ylim(lo, hi)
    off = [(e, v) for e, v in zip(ep + vep, losses) if v is not None and v > hi]
    if off:
        a.plot([e for e, _ in off], [hi] * len(off), linestyle="none", marker="^", color="0.35", clip_on=False,
               label=f"off scale (up to {max(v for _, v in off):.3g})")
    a.set_ylabel("loss")
    b.plot(vep, [h["val_miou"] for h in val], label="val mIoU", **mark)
    b.plot(vep, [h["val_dice"] for h in val], label="val Dice", **mark)
    best = best_row(history, best_epoch)
    if best is not None:
        for ax in (a, b):
            ax.axvline(best["epoch"], color="0.55", linestyle="--", linewidth=1)
        b.plot([best["epoch"]], [best["val_miou"]], linestyle="none", marker="*", markersize=12, color="C3",
               zorder=5, label=f"best: mIoU {best['val_miou']:.4f}, epoch {best['epoch']}")
        right = best["epoch"] > (min(vep) + max(vep)) / 2
        b.annotate(f"{best['val_miou']:.4f}", (best["epoch"], best["val_miou"]), xytext=(-8 if right else 8, -14),
                   textcoords="offset points", ha="right" if right else "left", fontsize=9, color="C3")
    elif not val:
        b.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=b.transAxes, color="0.4")
    b.set_ylim(0, 1)
    b.set_ylabel("validation mIoU / Dice")
    epochs = ep + vep
    first, last = (min(epochs), max(epochs)) if epochs else (1, 1)
    pad = max(0.5, 0.03 * (last - first))
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.set_xlim(first - pad, last + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # above the plot, so it never hides a curve
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3, frameon=False, fontsize=9,
                      borderaxespad=0.0)
    fig.tight_layout()
    return fig


def curves_png(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> bytes:
    """Loss (train and validation) and validation mIoU/Dice per epoch, side by side, as PNG.

    The best epoch (``best_epoch``, by default the first with the highest val mIoU) is marked with a
    dashed line and a star labelled with its mIoU, the figure the report's headline shows.
    """
    return _figure_png(curves_figure(history, best_epoch))


def _fraction_text(v: float) -> str:
    """A row-normalised cell: two decimals, but never ``0.00``/``1.00`` for a cell that is not exactly that."""
    if 0 < v < 0.01:
        return "<0.01"
    if 0.99 < v < 1:
        return ">0.99"
    return f"{v:.2f}"


def _count_text(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n)}"


def confusion_figure(cm: Sequence[Sequence[int]], names: Sequence[str]) -> Any:
    """The figure of :func:`confusion_png` (returned so tests can read its texts)."""
    plt = _pyplot()
    m = np.asarray(cm, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(2.6 + 0.7 * n, 1.4 + 0.6 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("fraction of the true class's pixels")
    # Class names are plain text: a '$' in a name must not be parsed as mathtext (an unclosed one raises).
    ax.set_xticks(range(n), names, rotation=45, ha="right", parse_math=False)
    ax.set_yticks(range(n), [f"{name} ({_count_text(rows[i, 0])} px)" for i, name in enumerate(names)],
                  parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("row-normalised: each true class's row sums to 1", fontsize=10)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if m[i, j] > 0:
                    ax.text(j, i, _fraction_text(norm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
            if rows[i, 0] == 0:
                ax.text(i, i, "no pixels", ha="center", va="center", fontsize=6, color="0.45")
    return fig


def confusion_png(cm: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """The confusion matrix as PNG, normalised per true class (rows sum to 1, said in its title), with a
    colour bar; cells with pixels show their fraction (``<0.01`` rather than ``0.00``), the row labels the
    true class's pixel count."""
    return _figure_png(confusion_figure(cm, names))


def _plain(v: Any) -> Any:
    """``v`` with tuples as lists and unknown objects as strings, so YAML can write it."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(changed, defaults)``: the options that differ from :class:`TrainConfig`'s defaults (planned values
    count as changed), and those that do not; the nested ``model`` and ``data`` mappings are split the same
    way against :class:`UNetConfig`'s and :class:`DataConfig`'s defaults. Key order is kept."""
    from .config import TrainConfig

    defaults = _plain(TrainConfig().to_dict())
    changed: dict[str, Any] = {}
    same: dict[str, Any] = {}
    for key, value in _plain(config).items():
        if key in ("model", "data") and isinstance(value, dict):
            for k, v in value.items():
                side = same if k in defaults[key] and defaults[key][k] == v else changed
                side.setdefault(key, {})[k] = v
        elif key in defaults and defaults[key] == value:
            same[key] = value
        else:
            changed[key] = value
    return changed, same


def _yaml(d: dict[str, Any]) -> str:
    """Block-style YAML, except that lists of plain values stay on one line (``patch_size: [48, 48]``)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def short_list(dumper: yaml.SafeDumper, value: list[Any]) -> Any:
        flat = all(not isinstance(v, (list, dict)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)

    Dumper.add_representer(list, short_list)
    return yaml.dump(d, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(v: float | None) -> str:
    return "&ndash;" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _fact(text: str) -> str:
    """A summary value as HTML: one line as text; lines of aligned columns (two or more spaces apart, as
    :meth:`Plan.table` writes them) as a small table whose last column wraps; other lines as wrapping ``<pre>``."""
    if "\n" not in text:
        return html.escape(text)
    lines = [line for line in text.splitlines() if line.strip()]
    cells = [re.split(r" {2,}", line.strip()) for line in lines]
    if len({len(c) for c in cells}) == 1 and len(cells[0]) >= 2:
        return '<table class="plan">' + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells) + "</table>"
    return f"<pre>{html.escape(text)}</pre>"


def _swatch(color: Sequence[int] | None) -> str:
    """A small colour box; ``None``: an empty crossed box, for the class overlays leave uncoloured."""
    if color is None:
        return '<span class="sw none" title="not coloured"></span>'
    hexa = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in color[:3]))
    return f'<span class="sw" style="background:{hexa}" title="{hexa}"></span>'


def write_report(path: Path, *, title: str, result: EvalResult, history: Sequence[dict[str, Any]],
                 samples_png: bytes | None, config: dict[str, Any], facts: dict[str, str],
                 colors: Sequence[Color] | None = None, best_epoch: int | None = None) -> None:
    """A self-contained HTML page (images inlined): headline numbers, curves, per-class table, confusion
    matrix, sample overlays and the configuration (YAML, options changed from the defaults first).

    ``history``: validated rows, or every row (the curves then show every epoch's training loss).
    ``colors``: the class colours, for the swatches of the per-class table (the mask colours) and the legend
    above the samples (where class 0 is left uncoloured, as the overlays leave it).
    ``best_epoch``: the epoch of the evaluated checkpoint, named in the headline and starred on the curve
    (default: the first with the highest val mIoU in ``history``).
    """
    names = result.class_names or [f"class {i}" for i in range(len(result.iou))]
    best = best_row(history, best_epoch)
    bf = result.boundary_f1 or [math.nan] * len(names)
    sw = [_swatch(tuple(colors[i])) if colors and i < len(colors) else "" for i in range(len(names))]
    rows = "\n".join(
        f"<tr><td>{sw[i]}{html.escape(n)}</td><td>{_cell(result.iou[i])}</td>"
        f"<td>{_cell(result.dice[i])}</td><td>{_cell(bf[i])}</td><td>{_cell(result.precision[i])}</td>"
        f"<td>{_cell(result.recall[i])}</td></tr>"
        for i, n in enumerate(names))
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fact(v)}</td></tr>" for k, v in facts.items())
    legend = ""
    if colors:
        legend = '<p class="legend">' + " ".join(
            f"<span>{_swatch(c)}{html.escape(label)}</span>" for label, c in legend_entries(names, colors)) + "</p>"
    best_note = f"<small>best epoch {best['epoch']}</small>" if best is not None else ""
    changed, same = split_config(config)
    changed_yaml = _yaml(changed) if changed else "# every option has its default value"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
/* Reads on a laptop screen without horizontal scrolling: the page is at most 1100 px wide and never wider
   than the window, long values wrap (anywhere, so a long path cannot push the page wider), images scale
   down to the page width, and only a data table too wide for the page scrolls, inside its own box. */
*, *::before, *::after {{ box-sizing: border-box; }}
html {{ overflow-wrap: anywhere; }}
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 1rem; margin-bottom: .3rem; }}
.big {{ display: flex; flex-wrap: wrap; gap: 1rem 2rem; }}
.big div {{ background: #f4f6fa; padding: .7rem 1.2rem; border-radius: 8px; }}
.big b {{ display: block; font-size: 1.6rem; }} .big small {{ color: #666; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .8rem; border-bottom: 1px solid #eee; }}
.wide {{ max-width: 100%; overflow-x: auto; }}
table.num {{ overflow-wrap: normal; }}  /* names and numbers stay whole; .wide scrolls instead */
table.num td, table.num th {{ text-align: right; }}
table.num td:first-child, table.num th:first-child {{ text-align: left; }}
table.facts {{ width: 100%; margin-top: 1rem; table-layout: fixed; }}
table.facts > tbody > tr > th {{ width: 8.5rem; white-space: nowrap; text-align: left; vertical-align: top; }}
table.facts > tbody > tr > td {{ text-align: left; word-break: break-word; overflow-wrap: anywhere; }}
table.plan {{ width: 100%; font-size: 13px; }}
table.plan td {{ padding: .1rem .6rem .1rem 0; border: none; vertical-align: top; }}
table.plan td:first-child {{ white-space: nowrap; color: #555; }}
img {{ max-width: 100%; height: auto; }}
pre {{ background: #f7f7f7; padding: .8rem; font-size: 12px; white-space: pre-wrap; word-break: break-word;
       overflow-wrap: anywhere; }}
td pre {{ margin: 0; background: none; padding: 0; }}
.sw {{ display: inline-block; width: .9em; height: .9em; border: 1px solid #666; margin-right: .4em;
       vertical-align: -.1em; }}
.sw.none {{ background: linear-gradient(to top right, #fff 46%, #999 50%, #fff 54%); }}
.legend span {{ margin-right: 1.2em; white-space: nowrap; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="big"><div>val mIoU<b>{_cell(result.miou)}</b>{best_note}</div><div>val Dice<b>{_cell(result.mdice)}</b></div>
<div>Boundary F1<b>{_cell(result.mean_boundary_f1)}</b></div><div>pixel accuracy<b>{_cell(result.pixel_accuracy)}</b></div></div>
<table class="facts">{facts_html}</table>
<h2>Learning curves</h2>{_img(curves_png(history, best_epoch), "learning curves") if history else ""}
<h2>Per-class results (validation, best checkpoint)</h2>
<div class="wide"><table class="num"><tr><th>class</th><th>IoU</th><th>Dice</th><th>Boundary F1</th><th>precision</th>
<th>recall</th></tr>
{rows}</table></div>
{_case_section(result.per_case)}
<h2>Confusion matrix</h2>{_img(confusion_png(result.confusion_matrix, names), "confusion matrix")}
<h2>Samples: image | truth | prediction</h2>{legend}{_img(samples_png, "samples") if samples_png else ""}
<h2>Configuration</h2>
<h3>Changed from the defaults (planned values included)</h3><pre class="changed">{html.escape(changed_yaml)}</pre>
<details><summary>Defaults ({sum(len(v) if isinstance(v, dict) else 1 for v in same.values())} options)</summary>
<pre class="defaults">{html.escape(_yaml(same))}</pre></details>
</body></html>
"""
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _case_section(per_case: dict[str, Any] | None) -> str:
    """The per-case table of a volume run: Dice and HD95 per class and case, with NSD and IoU means."""
    if not per_case:
        return ""
    classes = per_case["classes"]
    tol = per_case.get("tolerance_mm", 1.0)
    head = "".join(f"<th>{html.escape(c)}<br><small>Dice | HD95 mm | NSD</small></th>" for c in classes)

    def cells(m: dict[str, Any]) -> str:
        return "".join(f"<td>{_cell(m['dice'][j])} | {_mm(m['hd95'][j])} | {_cell(m['nsd'][j])}</td>"
                       for j in range(len(classes)))

    body = "\n".join(f"<tr><td>{html.escape(c['case'])}</td>{cells(c)}</tr>" for c in per_case["cases"])
    body += f"\n<tr><th>mean</th>{cells(per_case['mean'])}</tr>"
    return (f"<h2>Per case (validation volumes, best checkpoint)</h2><p>{per_case['num_cases']} case(s); "
            f"HD95 = 95 % Hausdorff distance, NSD = normalised surface Dice at {tol:g} mm; empty cells: the "
            "class is absent from the case; the HD95 mean leaves out cases where a class was missed or "
            f"invented (inf).</p><div class=\"wide\"><table class=\"num\"><tr><th>case</th>{head}</tr>\n{body}</table></div>")


def _mm(v: float) -> str:
    if math.isnan(v):
        return "-"
    return "inf" if math.isinf(v) else f"{v:.1f}"


class TensorBoardLog:
    """Metrics of every epoch as TensorBoard scalars in ``<run>/tensorboard`` when ``tensorboard`` is installed
    (``pip install 'unetkit[tensorboard]'``); otherwise it does nothing. ``tensorboard --logdir runs`` shows
    all runs side by side."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def epoch(self, row: dict[str, Any]) -> None:
        """One ``metrics.csv`` row: losses, validation metrics (when validated) and the learning rate, by step."""
        if self.writer is None:
            return
        for key in ("train_loss", "val_loss", "val_miou", "val_dice", "val_pixel_accuracy", "lr"):
            if key in row:
                group = "loss" if key.endswith("loss") else ("optim" if key == "lr" else "val")
                self.writer.add_scalar(f"{group}/{key}", float(row[key]), int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
