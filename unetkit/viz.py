"""Pictures of segmentations: label maps in class colours, overlays, sample panels, PNG writers.

Pictures meant for people carry their own captions: sample panels have column titles and a class
legend, and :func:`overlay_view` enlarges small images and adds the legend. Text is drawn with Pillow's
bundled font, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

Color = tuple[int, int, int]

TEXT_COLOR: Color = (30, 30, 30)
#: Legend geometry in pixels: swatch side, font size, line pitch, outer padding, space between entries.
SWATCH, LEGEND_FONT, LEGEND_LINE, LEGEND_PAD, LEGEND_SPACING = 14, 14, 22, 8, 16
#: Height of the column-title band of a sample panel, and of its title band (when a title is given).
HEADER_H, TITLE_H = 24, 26
#: The swatch of ``ignore_index`` pixels: white, as :func:`colorize` draws them.
IGNORE_SWATCH: Color = (255, 255, 255)


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def colorize(labels: np.ndarray | torch.Tensor, colors: Sequence[Color]) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 in the class colours; labels without a colour
    (e.g. ``ignore_index`` 255) are white."""
    lab = _numpy(labels).astype(np.int64)
    lut = np.full((max(256, int(lab.max(initial=0)) + 1), 3), 255, dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return lut[lab]


def to_rgb8(image01: np.ndarray | torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image in [0, 1] -> ``(H, W, 3)`` uint8: grey for 1 channel, RGB for 3, else channel 0."""
    img = _numpy(image01).astype(np.float32)
    img = img[:3] if img.shape[0] == 3 else np.repeat(img[:1], 3, axis=0)
    return np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(image01: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, colors: Sequence[Color],
            alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8: the ``[0, 1]`` image ``(C, H, W)`` with the class colours blended in at ``alpha``.

    Background (label 0) is left unblended so the image stays visible.
    """
    lab = _numpy(labels)
    rgb = to_rgb8(image01).astype(np.float32)
    col = colorize(lab, colors).astype(np.float32)
    out = np.where((lab != 0)[..., None], (1 - alpha) * rgb + alpha * col, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _font(size: int) -> Any:
    """Pillow's bundled font at ``size`` pixels (nothing is downloaded)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(font: Any, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _text_height(font: Any) -> int:
    box = font.getbbox("Ag")
    return int(box[3] - box[1])


def _draw_text(draw: Any, x: float, y: float, text: str, font: Any) -> None:
    """``text`` with its line box (the ink of ``Ag``) starting at ``(x, y)``, so lines share a baseline."""
    box = font.getbbox("Ag")
    draw.text((x - font.getbbox(text)[0], y - box[1]), text, font=font, fill=TEXT_COLOR)


def legend_entries(names: Sequence[str] | None, colors: Sequence[Color]) -> list[tuple[str, Color | None]]:
    """``(label, colour)`` per class; class 0 gets ``None`` because overlays leave it uncoloured.

    Missing names are filled in: ``background`` for a binary model that names only its foreground,
    ``class i`` otherwise.
    """
    if not colors:
        return []
    names = list(names or [])
    if len(names) == len(colors) - 1 and len(colors) == 2:
        names = ["background", *names]
    names += [f"class {i}" for i in range(len(names), len(colors))]
    return [(f"{names[0]} (uncoloured)", None)] + [
        (names[i], (int(c[0]), int(c[1]), int(c[2]))) for i, c in enumerate(colors) if i > 0]


def legend_width(names: Sequence[str] | None, colors: Sequence[Color], scale: int = 1) -> int:
    """The narrowest legend strip that fits its widest entry on one line."""
    font = _font(LEGEND_FONT * scale)
    widest = max((_text_width(font, label) for label, _ in legend_entries(names, colors)), default=0)
    return widest + (SWATCH + 6 + 2 * LEGEND_PAD) * scale


def legend_strip(names: Sequence[str] | None, colors: Sequence[Color], width: int,
                 ignored: bool = False, scale: int = 1) -> np.ndarray:
    """A white ``(H, width, 3)`` uint8 strip with a swatch and the name of every class, wrapped to ``width``,
    so the colours of a picture can be read without the class table.

    Class 0 is an empty crossed box (overlays leave it uncoloured); ``ignored`` adds a white swatch for
    ``ignore_index`` pixels. ``scale`` multiplies every size, for legends under very large pictures.
    """
    from PIL import Image, ImageDraw

    entries = legend_entries(names, colors)
    if ignored:
        entries.append(("ignored", IGNORE_SWATCH))
    sw, gap, pad, pitch = SWATCH * scale, 6 * scale, LEGEND_PAD * scale, LEGEND_LINE * scale
    font = _font(LEGEND_FONT * scale)
    lines: list[list[int]] = [[]]
    x = pad
    for i, (label, _) in enumerate(entries):  # wrap to the width; an entry wider than a line gets a line
        w = sw + gap + _text_width(font, label)
        if lines[-1] and x + w > width - pad:
            lines.append([])
            x = pad
        lines[-1].append(i)
        x += w + LEGEND_SPACING * scale
    im = Image.new("RGB", (width, 2 * pad + (len(lines) - 1) * pitch + sw), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for row, idx in enumerate(lines):
        x, y = pad, pad + row * pitch
        for i in idx:
            label, color = entries[i]
            draw.rectangle((x, y, x + sw - 1, y + sw - 1), fill=color or (255, 255, 255), outline=(100, 100, 100),
                           width=scale)
            if color is None:
                draw.line((x, y + sw - 1, x + sw - 1, y), fill=(160, 160, 160), width=scale)
            _draw_text(draw, x + sw + gap, y + (sw - _text_height(font)) / 2, label, font)
            x += sw + gap + _text_width(font, label) + LEGEND_SPACING * scale
    return np.asarray(im).copy()


def _fitting_font(texts: Sequence[str], width: int, sizes: Sequence[int] = (14, 12, 10, 8)) -> Any:
    """The largest of ``sizes`` at which every text fits in ``width`` pixels (else the smallest)."""
    for s in sizes:
        font = _font(s)
        if all(_text_width(font, t) <= width - 4 for t in texts):
            return font
    return _font(sizes[-1])


def _shrink(side: int, max_size: int | None) -> int:
    """The integer step that brings ``side`` down to at most ``max_size`` (1 when it fits)."""
    return -(-side // max_size) if max_size and side > max_size else 1


def sample_panel(images01: Sequence[torch.Tensor], truths: Sequence[torch.Tensor],
                 preds: Sequence[torch.Tensor], colors: Sequence[Color], gap: int = 4,
                 min_size: int = 0, max_size: int | None = None, *, names: Sequence[str] | None = None,
                 title: str | None = None,
                 columns: Sequence[str] = ("image", "truth", "prediction")) -> np.ndarray:
    """Rows of ``image | truth overlay | prediction overlay`` as one uint8 RGB array, captioned.

    From the top: ``title`` (e.g. the epoch; its band only when given), the column titles, the rows
    (``gap`` white pixels apart), then a legend of the class colours (``names``; ``class i`` where
    missing, plus ``ignored`` when a truth holds labels without a colour). Tiles smaller than ``min_size``
    pixels are enlarged by an integer factor, tiles larger than ``max_size`` shrunk by one (nearest
    neighbour both ways, so label edges stay crisp); tiles of different sizes are centred in their column.
    """
    from PIL import Image, ImageDraw

    rows: list[list[np.ndarray]] = []
    ignored = False
    for img, truth, pred in zip(images01, truths, preds):
        s = _shrink(max(img.shape[-2:]), max_size)  # shrink first: overlays of a huge image cost seconds
        img, truth, pred = img[..., ::s, ::s], truth[..., ::s, ::s], pred[..., ::s, ::s]
        ignored = ignored or bool((_numpy(truth) >= len(colors)).any())
        tiles = [to_rgb8(img), overlay(img, truth, colors, 0.45), overlay(img, pred, colors, 0.45)]
        k = max(1, min_size // max(img.shape[-2:]))
        rows.append([t.repeat(k, 0).repeat(k, 1) for t in tiles])
    if not rows:
        raise ValueError("sample_panel needs at least one image")
    col_w = max(t.shape[1] for r in rows for t in r)
    width = max(3 * col_w + 2 * gap, legend_width(names, colors))
    body = []
    for r in rows:
        h = max(t.shape[0] for t in r)
        line = np.full((h, width, 3), 255, np.uint8)
        for j, t in enumerate(r):
            x = j * (col_w + gap) + (col_w - t.shape[1]) // 2
            line[(h - t.shape[0]) // 2:(h - t.shape[0]) // 2 + t.shape[0], x:x + t.shape[1]] = t
        body += [line, np.full((gap, width, 3), 255, np.uint8)]
    top = (TITLE_H if title else 0) + HEADER_H
    canvas = np.concatenate([np.full((top, width, 3), 255, np.uint8), *body[:-1],
                             legend_strip(names, colors, width, ignored=ignored)], 0)
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    if title:
        font = _fitting_font([title], width, (16, 14, 12, 10, 8))
        _draw_text(draw, LEGEND_PAD, (TITLE_H - _text_height(font)) / 2, title, font)
    font = _fitting_font(columns, col_w)
    y = top - HEADER_H + (HEADER_H - _text_height(font)) / 2
    for j, text in enumerate(columns):
        _draw_text(draw, j * (col_w + gap) + (col_w - _text_width(font, text)) / 2, y, text, font)
    return np.asarray(im).copy()


def overlay_view(image01: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, colors: Sequence[Color],
                 names: Sequence[str] | None = None, alpha: float = 0.5, min_size: int = 512) -> np.ndarray:
    """:func:`overlay` for people: enlarged (nearest neighbour) by the largest whole factor that keeps the
    longer side within ``min_size``, so a 128x128 prediction can be seen, with a class legend underneath.

    Images larger than half of ``min_size`` keep their size. The picture is padded (white, on the right) when the
    legend's widest entry is wider than it; under very wide images the legend is drawn larger.
    """
    ov = overlay(image01, labels, colors, alpha)
    k = max(1, min_size // max(ov.shape[:2]))
    ov = ov.repeat(k, 0).repeat(k, 1)
    scale = max(1, round(ov.shape[1] / 1200))  # a legend still readable when a huge overlay is fitted to a screen
    width = max(ov.shape[1], legend_width(names, colors, scale))
    if width > ov.shape[1]:
        ov = np.pad(ov, ((0, 0), (0, width - ov.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([ov, legend_strip(names, colors, width, scale=scale)], 0)


def save_mask_png(labels: np.ndarray, colors: Sequence[Color], path: str | Path) -> None:
    """Write ``labels`` as a palette PNG: pixel value = class index, palette entry = class colour."""
    from PIL import Image

    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("palette PNG masks hold labels 0..255 only")
    im = Image.fromarray(labels.astype(np.uint8))
    flat = [0] * 768
    for i, c in enumerate(list(colors)[:256]):
        flat[3 * i:3 * i + 3] = [int(v) for v in c]
    im.putpalette(flat)
    im.save(path, format="PNG")


def save_rgb_png(rgb: np.ndarray, path: str | Path | BinaryIO) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(path, format="PNG")


def palette(info: Any) -> list[tuple[int, int, int]]:
    """One RGB colour per label value of a model (its :class:`~unetkit.checkpoint.DataInfo`): the class colours
    (a one-channel model's labels 0/1 get two)."""
    from .data.classes import default_colors

    n = max(info.num_classes, 2)
    colors = [tuple(int(v) for v in c) for c in info.class_colors[:n]]
    if len(colors) < n:
        colors = ([(0, 0, 0)] + colors)[:n] if info.num_classes == 1 else colors + default_colors(n)[len(colors):]
    return colors  # type: ignore[return-value]
