"""Run-directory outputs a person looks at: ``metrics.csv``, ``curves.png``, sample panels, ``report.html``.

Every file is written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..evaluate import EvalResult
from ..viz import save_rgb_png

CSV_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_miou", "val_dice", "val_pixel_accuracy", "lr", "seconds")


def write_metrics_csv(history: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per epoch, the columns of :data:`CSV_COLUMNS` (validation columns empty between validations)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)

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


def curves_png(history: Sequence[dict[str, Any]]) -> bytes:
    """Loss (train and validation) and validation mIoU/Dice per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    val = [h for h in history if "val_miou" in h]
    vep = [h["epoch"] for h in val]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(vep, [h["val_loss"] for h in val], label="validation", marker="." if len(val) < 30 else None)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.set_yscale("log")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(vep, [h["val_miou"] for h in val], label="val mIoU")
    b.plot(vep, [h["val_dice"] for h in val], label="val Dice")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend(loc="lower right")
    b.grid(alpha=0.3)
    return _figure_png(fig)


def confusion_png(cm: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """The confusion matrix normalised per true class (rows sum to 1), counts in the cells' labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if m[i, j] > 0:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return _figure_png(fig)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _cell(v: float | None) -> str:
    return "&ndash;" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def write_report(path: Path, *, title: str, result: EvalResult, history: Sequence[dict[str, Any]],
                 samples_png: bytes | None, config: dict[str, Any], facts: dict[str, str]) -> None:
    """A self-contained HTML page (images inlined): headline numbers, curves, per-class table, confusion
    matrix, sample overlays and the configuration."""
    names = result.class_names
    bf = result.boundary_f1 or [math.nan] * len(names)
    rows = "\n".join(
        f"<tr><td>{html.escape(n)}</td><td>{_cell(result.iou[i])}</td><td>{_cell(result.dice[i])}</td>"
        f"<td>{_cell(bf[i])}</td><td>{_cell(result.precision[i])}</td><td>{_cell(result.recall[i])}</td></tr>"
        for i, n in enumerate(names))
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items())
    cfg = html.escape("\n".join(f"{k}: {v}" for k, v in config.items()))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }}
.big {{ display: flex; gap: 2rem; }} .big div {{ background: #f4f6fa; padding: .7rem 1.2rem; border-radius: 8px; }}
.big b {{ display: block; font-size: 1.6rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .8rem; border-bottom: 1px solid #eee; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
pre {{ background: #f7f7f7; padding: .8rem; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="big"><div>val mIoU<b>{_cell(result.miou)}</b></div><div>val Dice<b>{_cell(result.mdice)}</b></div>
<div>Boundary F1<b>{_cell(result.mean_boundary_f1)}</b></div><div>pixel accuracy<b>{_cell(result.pixel_accuracy)}</b></div></div>
<table>{facts_html}</table>
<h2>Learning curves</h2>{_img(curves_png(history), "learning curves") if history else ""}
<h2>Per-class results (validation, best checkpoint)</h2>
<table><tr><th>class</th><th>IoU</th><th>Dice</th><th>Boundary F1</th><th>precision</th><th>recall</th></tr>
{rows}</table>
<h2>Confusion matrix</h2>{_img(confusion_png(result.confusion_matrix, names), "confusion matrix")}
<h2>Samples: image | truth | prediction</h2>{_img(samples_png, "samples") if samples_png else ""}
<h2>Configuration</h2><pre>{cfg}</pre>
</body></html>
"""
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
