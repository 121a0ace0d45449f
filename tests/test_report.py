"""Pictures and the report a person reads: sample panels, legends, predict overlays, curves, confusion
matrix and ``report.html``."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from unetkit.evaluate import EvalResult, json_safe
from unetkit.models import UNetConfig
from unetkit.train import TrainConfig
from unetkit.train.report import (
    confusion_figure,
    curves_figure,
    loss_limits,
    png_bytes,
    split_config,
    write_report,
)
from unetkit.viz import (
    HEADER_H,
    LEGEND_LINE,
    LEGEND_PAD,
    SWATCH,
    TITLE_H,
    legend_entries,
    legend_strip,
    legend_width,
    overlay,
    overlay_view,
    sample_panel,
)

COLORS = [(0, 0, 0), (230, 40, 40), (40, 180, 70), (30, 110, 230)]
NAMES = ["background", "circle", "square", "triangle"]
ONE_LINE = 2 * LEGEND_PAD + SWATCH  # height of a legend strip whose entries fit on one line


def swatch_count(rgb: np.ndarray, color) -> int:
    """Pixels of exactly ``color``."""
    return int((rgb.reshape(-1, 3) == np.asarray(color, np.uint8)).all(1).sum())


def dark_columns(rgb: np.ndarray) -> np.ndarray:
    """x positions of text ink (dark pixels) in a white band."""
    return np.nonzero((rgb.max(2) < 140).any(0))[0]


def tiny_samples(n: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    truths = [torch.randint(0, 4, (size, size), generator=g) for _ in range(n)]
    preds = [torch.randint(0, 4, (size, size), generator=g) for _ in range(n)]
    return imgs, truths, preds


# ----------------------------------------------------------------------------------- legends
def test_legend_entries_fill_missing_names_and_leave_background_uncoloured():
    assert legend_entries(NAMES, COLORS) == [("background (uncoloured)", None), ("circle", COLORS[1]),
                                             ("square", COLORS[2]), ("triangle", COLORS[3])]
    assert legend_entries(["lesion"], [(0, 0, 0), (250, 210, 30)]) == [("background (uncoloured)", None),
                                                                      ("lesion", (250, 210, 30))]
    assert [label for label, _ in legend_entries(None, COLORS[:3])] == ["class 0 (uncoloured)", "class 1",
                                                                        "class 2"]


def test_legend_strip_swatches_and_wrapping():
    wide = legend_strip(NAMES, COLORS, 600)
    assert wide.shape == (ONE_LINE, 600, 3)
    for c in COLORS[1:]:  # each swatch: the inside of a 14 px box with a 1 px border
        assert swatch_count(wide, c) == (SWATCH - 2) ** 2
    assert swatch_count(wide, (0, 0, 0)) == 0  # background is an empty box, not a black one
    narrow = legend_strip(NAMES, COLORS, legend_width(NAMES, COLORS))  # background | circle square | triangle
    assert narrow.shape[0] == 2 * LEGEND_PAD + 2 * LEGEND_LINE + SWATCH == 74
    for c in COLORS[1:]:
        assert swatch_count(narrow, c) == (SWATCH - 2) ** 2
    with_ignored = legend_strip(NAMES, COLORS, 600, ignored=True)
    assert dark_columns(with_ignored).max() > dark_columns(wide).max() + 20  # the extra "ignored" entry
    assert legend_strip(NAMES, COLORS, 1200, scale=2).shape == (2 * ONE_LINE, 1200, 3)  # twice as large


# ----------------------------------------------------------------------------------- sample panels
def test_sample_panel_layout_titles_and_legend():
    imgs, truths, preds = tiny_samples()
    panel = sample_panel(imgs, truths, preds, COLORS, min_size=80, names=NAMES)
    legend_h = 2 * LEGEND_PAD + LEGEND_LINE + SWATCH  # two lines: "background (uncoloured)" fills the first
    assert panel.shape == (HEADER_H + 2 * 80 + 4 + legend_h, 3 * 80 + 2 * 4, 3) == (240, 248, 3)
    # Tiles: the first row's image enlarged 10x, nearest neighbour, right under the column titles.
    img0 = overlay(imgs[0], torch.zeros(8, 8, dtype=torch.long), COLORS)  # label 0 = the plain image
    assert np.array_equal(panel[HEADER_H:HEADER_H + 80:10, 0:80:10], img0)
    pred1 = overlay(imgs[1], preds[1], COLORS, 0.45)
    y1 = HEADER_H + 80 + 4
    assert np.array_equal(panel[y1 + 9:y1 + 80:10, 2 * 84 + 9:2 * 84 + 80:10], pred1)
    # One column title centred over each column.
    ink = dark_columns(panel[:HEADER_H])
    for j in range(3):
        col = ink[(ink >= j * 84) & (ink < j * 84 + 80)]
        assert col.size and abs((col.min() + col.max()) / 2 - (j * 84 + 40)) <= 2
    # The legend under the rows holds every class colour.
    legend = panel[-legend_h:]
    for c in COLORS[1:]:
        assert swatch_count(legend, c) >= (SWATCH - 2) ** 2


def test_sample_panel_title_band_ignored_swatch_and_sizes():
    imgs, truths, preds = tiny_samples(1)
    plain = sample_panel(imgs, truths, preds, COLORS, min_size=64, names=NAMES)
    titled = sample_panel(imgs, truths, preds, COLORS, min_size=64, names=NAMES, title="epoch 7")
    assert titled.shape[0] == plain.shape[0] + TITLE_H and titled.shape[1] == plain.shape[1]
    assert dark_columns(titled[:TITLE_H]).size and not dark_columns(plain[:4]).size
    assert np.array_equal(titled[TITLE_H:], plain)
    truths[0][0, 0] = 255  # an ignore_index pixel: the legend explains the white
    ign = sample_panel(imgs, truths, preds, COLORS, min_size=64, names=NAMES)
    strip = ign.shape[0] - (HEADER_H + 64)
    assert np.array_equal(ign[-strip:], legend_strip(NAMES, COLORS, ign.shape[1], ignored=True))
    # Tiles of a large image are shrunk to max_size, small ones never enlarged beyond min_size.
    big = sample_panel([torch.rand(1, 300, 200)], [torch.zeros(300, 200, dtype=torch.long)],
                       [torch.zeros(300, 200, dtype=torch.long)], COLORS, max_size=128)
    assert big.shape == (HEADER_H + 100 + 74, 3 * 67 + 8, 3)  # 300x200 shrunk by 3 -> 100x67; 3 legend lines
    # Narrow tiles: the panel widens to fit the legend's widest entry.
    small = sample_panel(*tiny_samples(1), COLORS, names=NAMES)
    assert small.shape[1] == legend_width(NAMES, COLORS) > 3 * 8 + 8


# ----------------------------------------------------------------------------------- predict overlays
def test_overlay_view_enlarges_small_images_and_adds_a_legend():
    img = torch.rand(3, 128, 96)
    labels = torch.zeros(128, 96, dtype=torch.long)
    labels[10:40, 20:50] = 2
    view = overlay_view(img, labels, COLORS, NAMES, alpha=0.5)
    assert view.shape == (4 * 128 + ONE_LINE + LEGEND_LINE, 4 * 96, 3)  # 512 // 128 = 4; a two-line legend
    native = overlay(img, labels, COLORS, 0.5)
    assert np.array_equal(view[:512:4, ::4], native) and np.array_equal(view[3:512:4, 3::4], native)
    assert swatch_count(view[512:], COLORS[2]) == (SWATCH - 2) ** 2
    # Large images keep their size; a narrow one is padded to fit the legend.
    assert overlay_view(torch.rand(1, 300, 700), torch.zeros(300, 700), COLORS, NAMES).shape == \
        (300 + ONE_LINE, 700, 3)
    tall = overlay_view(torch.rand(1, 600, 20), torch.zeros(600, 20), COLORS, NAMES)
    assert tall.shape[1] == legend_width(NAMES, COLORS) and (tall[:600, 20:] == 255).all()


def test_predict_writes_native_mask_and_enlarged_overlay(tmp_path):
    from unetkit import UNet
    from unetkit.checkpoint import DataInfo, save_checkpoint
    from unetkit.cli.main import main

    torch.manual_seed(0)
    model = UNet(num_classes=3, in_channels=1, base_channels=4, depth=2).eval()
    info = DataInfo(3, 1, ["bg", "cell", "edge"], COLORS[:3], (0.5,), (0.25,))
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(), "data": info.to_dict()},
                    tmp_path / "m.pt")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24), dtype=np.uint8)).save(tmp_path / "in/x.png")
    assert main(["predict", str(tmp_path / "m.pt"), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert Image.open(tmp_path / "out/x_mask.png").size == (24, 16)
    ov = np.asarray(Image.open(tmp_path / "out/x_overlay.png"))
    assert ov.shape == (21 * 16 + ONE_LINE, 21 * 24, 3)  # 512 // 24 = 21
    legend = ov[21 * 16:]
    assert swatch_count(legend, COLORS[1]) == swatch_count(legend, COLORS[2]) == (SWATCH - 2) ** 2


# ----------------------------------------------------------------------------------- curves
def history(spike: float = 9.0) -> list[dict]:
    """Ten epochs, validated every second one; mIoU peaks at epoch 6; epoch 1's training loss spikes."""
    miou = {2: 0.41, 4: 0.63, 6: 0.7512, 8: 0.7438, 10: 0.7501}
    rows = []
    for e in range(1, 11):
        r = {"epoch": e, "step": 5 * e, "train_loss": spike if e == 1 else 1.0 / e + 0.2, "lr": 1e-3, "seconds": 1.0}
        if e in miou:
            r.update(val_loss=1.2 / e + 0.25, val_miou=miou[e], val_dice=miou[e] + 0.1, val_pixel_accuracy=0.9)
        rows.append(r)
    return rows


def test_loss_limits_ignore_an_early_spike_only():
    lo, hi = loss_limits([9.0, 0.7, 0.5, 0.4, 0.35, 0.3], [1, 2, 3, 4, 5, 6])
    assert 0.7 < hi < 0.8 and 0.25 < lo < 0.3  # the spike is off scale, epoch 2 is not
    lo, hi = loss_limits([1.0, 0.7, 0.5, 0.4, 0.35, 0.3], [1, 2, 3, 4, 5, 6])
    assert hi > 1.0  # a plain decreasing loss is shown whole
    assert loss_limits([], []) == (0.0, 1.0)


def test_curves_mark_best_epoch_label_axes_integer_ticks_and_legends_outside():
    import matplotlib.pyplot as plt

    fig = curves_figure(history())
    try:
        loss_ax, score_ax = fig.axes
        assert score_ax.get_ylabel() == "validation mIoU / Dice" and loss_ax.get_ylabel() == "loss"
        labels = [t.get_text() for t in score_ax.get_legend().get_texts()]
        assert "best: mIoU 0.7512, epoch 6" in labels
        star = next(ln for ln in score_ax.get_lines() if ln.get_marker() == "*")
        assert list(star.get_xdata()) == [6] and list(star.get_ydata()) == [0.7512]
        assert "0.7512" in [t.get_text() for t in score_ax.texts]
        for ax in (loss_ax, score_ax):  # a dashed line at the best epoch on both plots
            assert any(list(ln.get_xdata()) == [6, 6] and ln.get_linestyle() == "--" for ln in ax.get_lines())
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
        # The spike (9.0) is off scale; the rest of the losses fill the axis.
        bottom, top = loss_ax.get_ylim()
        assert 0.7 < top < 1.0 and bottom < 0.3
        assert "off scale (up to 9)" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
        # The legends sit above the plots, never over the data.
        fig.canvas.draw()
        for ax in (loss_ax, score_ax):
            legend_box = ax.get_legend().get_window_extent()
            assert legend_box.y0 >= ax.get_window_extent().y1
    finally:
        plt.close(fig)


def test_curves_best_epoch_can_be_given_and_history_may_lack_validation():
    import matplotlib.pyplot as plt

    fig = curves_figure(history(), best_epoch=10)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    plt.close(fig)
    assert "best: mIoU 0.7501, epoch 10" in labels
    fig = curves_figure([{"epoch": 1, "step": 3, "train_loss": 0.9, "lr": 1e-3, "seconds": 1.0}])
    texts = [t.get_text() for t in fig.axes[1].texts]
    ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    plt.close(fig)
    assert texts == ["no validation yet"] and ticks == [1.0]


# ----------------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_is_labelled_row_normalised_with_colour_bar_and_no_false_zeros():
    import matplotlib.pyplot as plt

    cm = [[100000, 30, 0], [40, 2000, 3], [0, 0, 0]]
    fig = confusion_figure(cm, ["background", "circle", "square"])
    try:
        ax, bar = fig.axes
        assert "row-normalised" in ax.get_title()
        assert bar.get_ylabel() == "fraction of the true class's pixels"
        cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert cells == {(0, 0): ">0.99", (0, 1): "<0.01", (1, 0): "0.02", (1, 1): "0.98", (1, 2): "<0.01",
                         (2, 2): "no pixels"}
        assert [t.get_text() for t in ax.get_yticklabels()] == ["background (100k px)", "circle (2.04k px)",
                                                                "square (0 px)"]
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------- report.html
class _Page(HTMLParser):
    """Collects the report's text per element class, swatches with the text after them, and images."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.text: dict[str, str] = {}
        self.swatches: list[tuple[str, str | None]] = []  # (colour or "none", following text)
        self.pending: str | None = None
        self.images: dict[str, bytes] = {}
        self.big: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "sw" in (a.get("class") or "").split():
            self.pending = (a.get("style") or "background:none").split(":")[1]
        if tag == "img":
            self.images[a["alt"]] = base64.b64decode(a["src"].split(",", 1)[1])
        self.stack.append((tag, a.get("class") or ""))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for _, cls in self.stack:
            if cls:
                self.text[cls] = self.text.get(cls, "") + data
        if self.pending is not None and data.strip():
            self.swatches.append((self.pending, data.strip()))
            self.pending = None
        if self.stack and self.stack[-1][0] == "b":
            self.big.append(data)


def eval_result() -> EvalResult:
    return EvalResult(miou=0.7512, mdice=0.85, pixel_accuracy=0.95, iou=[0.95, 0.8, 0.5, math.nan],
                      dice=[0.97, 0.88, 0.66, math.nan], precision=[0.9] * 4, recall=[0.9] * 4,
                      confusion_matrix=[[500, 3, 1, 0], [4, 90, 0, 0], [2, 0, 40, 0], [0, 0, 0, 0]],
                      boundary_f1=[0.5, 0.6, 0.7, math.nan], class_names=NAMES)


def test_report_headline_legend_curves_and_yaml_configuration(tmp_path):
    cfg = TrainConfig.from_dict({"data": "shapes", "epochs": 10, "base_channels": 4, "depth": 3,
                                 "batch_size": 4, "hflip": 0.5}).to_dict()
    panel = sample_panel(*tiny_samples(1), COLORS, min_size=64, names=NAMES, title="best checkpoint")
    buf = io.BytesIO()
    Image.fromarray(panel).save(buf, format="PNG")
    rows = [h for h in history() if "val_miou" in h]
    write_report(tmp_path / "report.html", title="run x", result=eval_result(), history=rows,
                 samples_png=buf.getvalue(), config=cfg, facts={"data": "shapes", "plan": "a  1\nb  2"},
                 colors=COLORS)
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    # The headline mIoU is the figure starred on the curve, at the epoch the headline names.
    assert page.big[0] == "0.7512" and "best epoch 6" in page.text["big"]
    assert set(page.images) == {"learning curves", "confusion matrix", "samples"}
    for data in page.images.values():
        Image.open(io.BytesIO(data)).verify()
    assert Image.open(io.BytesIO(page.images["samples"])).size == (panel.shape[1], panel.shape[0])
    # Swatches: the per-class table shows the mask colours, the legend above the samples the overlay colours.
    table = page.swatches[:4]
    assert table == [("#000000", "background"), ("#e62828", "circle"), ("#28b446", "square"),
                     ("#1e6ee6", "triangle")]
    assert page.swatches[4:] == [("none", "background (uncoloured)"), ("#e62828", "circle"),
                                 ("#28b446", "square"), ("#1e6ee6", "triangle")]
    # Configuration: YAML, the changed options first, then the defaults; together the whole config.
    changed = yaml.safe_load(page.text["changed"])
    defaults = yaml.safe_load(page.text["defaults"])
    assert changed == {"data": {"source": "shapes"}, "model": {"base_channels": 4, "depth": 3}, "batch_size": 4,
                       "epochs": 10, "hflip": 0.5}
    assert defaults["augment"] is True and defaults["data"]["num_classes"] is None
    assert defaults["model"]["encoder"] == "plain" and "depth" not in defaults["model"]
    merged = {**defaults, **changed, "model": {**defaults["model"], **changed["model"]},
              "data": {**defaults["data"], **changed["data"]}}
    assert merged == cfg
    html_text = (tmp_path / "report.html").read_text()
    assert html_text.index('class="changed"') < html_text.index('class="defaults"')
    config_part = html_text[html_text.index("<h2>Configuration"):]
    assert "None" not in config_part and "True" not in config_part and "False" not in config_part
    # A multi-line fact of aligned columns (the plan) becomes a small table, one row per line.
    assert '<td><table class="plan"><tr><td>a</td><td>1</td></tr><tr><td>b</td><td>2</td></tr></table></td>' in html_text


def test_split_config_against_the_defaults():
    default = TrainConfig().to_dict()
    changed, same = split_config(default)
    assert changed == {} and same == default
    cfg = {**default, "lr": 0.01, "model": {**UNetConfig().to_dict(), "attention": "scse"}, "extra": (1, 2)}
    changed, same = split_config(cfg)
    assert changed == {"lr": 0.01, "model": {"attention": "scse"}, "extra": [1, 2]}
    assert "lr" not in same and "attention" not in same["model"] and same["seed"] == 0


def test_report_without_colours_or_samples_still_renders(tmp_path):
    write_report(tmp_path / "r.html", title="t", result=eval_result(), history=[], samples_png=None,
                 config=TrainConfig().to_dict(), facts={})
    page = _Page()
    page.feed((tmp_path / "r.html").read_text())
    assert set(page.images) == {"confusion matrix"} and page.swatches == []
    assert "best epoch" not in page.text["big"]
    assert page.text["changed"] == "# every option has its default value"


@pytest.mark.parametrize("epochs,best", [(2, 2), (7, 6)])
def test_report_accepts_every_history_row(tmp_path, epochs, best):
    """The trainer may pass all rows (unvalidated ones too); the best epoch comes from the validated ones."""
    rows = history()[:epochs]
    write_report(tmp_path / "r.html", title="t", result=eval_result(), history=rows, samples_png=None,
                 config=TrainConfig().to_dict(), facts={})
    page = _Page()
    page.feed((tmp_path / "r.html").read_text())
    assert page.text["big"].count(f"best epoch {best}") == 1


# ----------------------------------------------------------------------------------- report.html layout
# What a real run writes into the summary table: a plan of ~200-character lines, a long time line, and here
# a long unbroken path, the values that once made the page wider than a laptop screen.
PLAN = """\
normalisation       zscore                           float [0, 1] images: the data set's mean and std
patch size          64x64                            median image 128x128, shrunk to 4096 pixels so that a step holds about 16 patches, rounded up to the network's stride
batch size          16                               about 65536 patch pixels per step on a CPU
foreground patches  0.50                             a class covers 0.24 % of the pixels (< 1 %): half the patches centred on a foreground pixel
validation          every 3 epoch(s) and at the end  one validation (72 windows) costs about 10 % of 3 epoch(s) of training (96 patches, forward and backward)"""
LONG_FACTS = {
    "data": "/data/" + "a_rather_long_folder_name_without_spaces_" * 6 + "images",
    "best epoch": "256 of 333",
    "training": "time 184.2s of a 30m budget: setup 0.9s, training 171.3s (2000 steps, 0.086 s/step), validation "
                "9.8s (37x), final evaluation 1.0s, checkpoints and pictures 1.2s",
    "model": "UNet(plain, base 16, depth 5): 1.94M parameters on cpu (bf16 autocast, --amp auto: bf16 "
             "measured faster on this CPU)",
    "plan": PLAN,
}
CLASSES8 = ["ribs", "cervical vertebrae", "thoracic vertebrae", "lumbar vertebrae", "right lung", "left lung",
            "soft tissue", "spinal cord"]


def wide_report(path):
    """A report with every wide part: long facts, a 2400 px sample panel, an 8-class per-case table."""
    m = {"dice": [0.9] * 8, "iou": [0.8] * 8, "hd95": [12.3] * 8, "nsd": [0.95] * 8}
    per_case = {"classes": CLASSES8, "cases": [{"case": f"case_{i:03d}", **m} for i in range(4)], "mean": m,
                "num_cases": 4, "tolerance_mm": 1.0}
    result = eval_result()
    result.per_case = per_case
    panel = np.full((300, 2400, 3), 200, np.uint8)
    write_report(path, title="unetkit run 20261125-130501", result=result, history=history(),
                 samples_png=png_bytes(panel), config=TrainConfig().to_dict(), facts=LONG_FACTS, colors=COLORS)
    return path.read_text()


def css_rules(page: str) -> dict[str, dict[str, str]]:
    """The report's ``<style>`` as ``{selector: {property: value}}`` (comments dropped, comma lists split)."""
    css = re.sub(r"/\*.*?\*/", "", re.search(r"<style>(.*?)</style>", page, re.S).group(1), flags=re.S)
    rules: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        decls = dict(tuple(x.strip() for x in d.split(":", 1)) for d in body.split(";") if ":" in d)
        for sel in selectors.split(","):
            rules.setdefault(" ".join(sel.split()), {}).update(decls)
    return rules


def test_report_layout_rules_keep_the_page_within_the_window(tmp_path):
    """Without a browser: the CSS and markup that keep the page no wider than the window at any width."""
    page = wide_report(tmp_path / "report.html")
    rules = css_rules(page)
    assert rules["*"]["box-sizing"] == "border-box"  # the body's padding counts inside its max-width
    assert rules["body"]["max-width"] == "1100px" and rules["body"]["margin"] == "2rem auto"
    assert rules["html"]["overflow-wrap"] == "anywhere"  # an unbroken path breaks instead of widening the page
    assert rules["img"] == {"max-width": "100%", "height": "auto"}  # images scale to the page width
    assert rules["pre"]["white-space"] == "pre-wrap" and rules["pre"]["overflow-wrap"] == "anywhere"
    assert rules[".big"]["flex-wrap"] == "wrap"
    # The summary table: as wide as the page, fixed layout, values left-aligned (right-aligned values were
    # pushed off screen) and wrapping; the names never break.
    assert rules["table.facts"]["width"] == "100%" and rules["table.facts"]["table-layout"] == "fixed"
    td, th = rules["table.facts > tbody > tr > td"], rules["table.facts > tbody > tr > th"]
    assert td["text-align"] == "left" and td["overflow-wrap"] == "anywhere"
    assert th["white-space"] == "nowrap" and th["width"] == "8.5rem"
    # Right alignment is scoped to the number tables, and each of them scrolls inside its own box.
    assert "text-align" not in rules.get("td", {}) and rules["table.num td"]["text-align"] == "right"
    assert rules[".wide"]["overflow-x"] == "auto" and rules[".wide"]["max-width"] == "100%"
    assert rules["table.num"]["overflow-wrap"] == "normal"  # "case_000" is not cut into "case_" and "000"
    assert page.count('<table class="num">') == page.count('<div class="wide"><table class="num">') == 2
    # Only short labels are kept on one line; no rule keeps text unwrapped.
    nowrap = {sel for sel, d in rules.items() if d.get("white-space") in ("nowrap", "pre")}
    assert nowrap == {"table.facts > tbody > tr > th", "table.plan td:first-child", ".legend span"}
    # Every summary row is there, the plan as a table of its lines and three columns, nothing in a <pre>.
    facts = page[page.index('<table class="facts">'):page.index("<h2>Learning curves")]
    assert re.findall(r"<tr><th>(.*?)</th>", facts) == list(LONG_FACTS)
    plan_rows = re.findall(r"<tr>((?:<td>[^<]*</td>){3})</tr>", facts)
    assert len(plan_rows) == 5 and "<pre>" not in facts
    assert plan_rows[1].startswith("<td>patch size</td><td>64x64</td><td>median image 128x128, shrunk")
    assert "<td>/data/a_rather_long_folder_name" in facts


def test_report_multiline_fact_without_columns_is_wrapping_pre(tmp_path):
    write_report(tmp_path / "r.html", title="t", result=eval_result(), history=[], samples_png=None,
                 config=TrainConfig().to_dict(), facts={"note": "first line\nsecond line, longer"})
    assert "<td><pre>first line\nsecond line, longer</pre></td>" in (tmp_path / "r.html").read_text()


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


MEASURE = """<script>
const de = document.documentElement, box = e => e.getBoundingClientRect();
const rows = [...document.querySelectorAll("table.facts > tbody > tr")].map(tr => ({
  name: tr.cells[0].textContent, left: box(tr.cells[0]).left, right: box(tr.cells[1]).right,
  width: box(tr.cells[1]).width, height: box(tr).height}));
const imgs = [...document.images].map(i => ({alt: i.alt, right: box(i).right, width: box(i).width,
  natural: i.naturalWidth}));
const out = document.createElement("output");
out.id = "measure";
out.textContent = JSON.stringify({scrollWidth: de.scrollWidth, clientWidth: de.clientWidth,
  innerWidth: window.innerWidth, rows, imgs});
document.body.append(out);
</script>"""


def measure_in_browser(browser: str, page: str, width: int, tmp_path) -> dict:
    """Open ``page`` in headless Chromium with a ``width`` px wide window and read the layout back."""
    html_file = tmp_path / f"measure_{width}.html"
    html_file.write_text(page.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           f"--window-size={width},900", "--dump-dom", html_file.as_uri()],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    found = re.search(r'<output id="measure">(.*?)</output>', proc.stdout, re.S)
    assert found, f"no measurement from {browser}: {proc.stderr[-2000:]}"
    return json.loads(found.group(1))


@pytest.mark.skipif(chromium() is None, reason="no headless Chromium installed")
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_fits_the_window_in_a_real_browser(tmp_path, width):
    """Measured in headless Chromium: no horizontal scrolling at laptop and desktop widths, every summary row
    inside the window with its value shown, and the images scaled down to the page."""
    page = wide_report(tmp_path / "report.html")
    m = measure_in_browser(chromium(), page, width, tmp_path)
    assert m["innerWidth"] == width
    assert m["scrollWidth"] <= m["innerWidth"] and m["scrollWidth"] <= m["clientWidth"]
    assert [r["name"] for r in m["rows"]] == list(LONG_FACTS)
    for r in m["rows"]:
        assert r["left"] >= 0 and r["right"] <= m["clientWidth"], r
        assert r["width"] > 500 and r["height"] > 0, r  # the value column has room, not a sliver
    imgs = {i["alt"]: i for i in m["imgs"]}
    assert set(imgs) == {"learning curves", "confusion matrix", "samples"}
    assert all(i["right"] <= m["clientWidth"] for i in imgs.values())
    assert imgs["samples"]["natural"] == 2400 and imgs["samples"]["width"] <= 1100  # scaled to the page


def test_json_safe_keeps_metrics_parseable():
    """NaN (a class absent from a case) becomes null, an infinite HD95 the string "inf", floats round to 6 places."""
    raw = {"dice": [0.123456789, math.nan], "hd95": (math.inf, 2.0), "name": "case_1", "n": 3}
    clean = json_safe(raw)
    assert clean == {"dice": [0.123457, None], "hd95": ["inf", 2.0], "name": "case_1", "n": 3}
    assert json.loads(json.dumps(clean, allow_nan=False)) == clean
