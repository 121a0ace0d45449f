"""Class names and colours: defaults, and reading ``classes.yaml`` / ``classes.txt``."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

from ..yamlfile import read_yaml
from .errors import DatasetError

Color = tuple[int, int, int]

# Hand-picked, mutually distinct colours; index 0 (background) is black. Classes beyond this list get
# colours from a golden-ratio hue walk, which stays distinct for a few dozen classes.
_BASE_PALETTE: tuple[Color, ...] = (
    (0, 0, 0),
    (230, 40, 40),
    (40, 180, 70),
    (30, 110, 230),
    (250, 210, 30),
    (160, 50, 200),
    (40, 210, 220),
    (245, 130, 40),
    (235, 70, 200),
    (150, 230, 60),
    (0, 130, 130),
    (140, 80, 30),
    (250, 170, 200),
    (120, 120, 0),
    (110, 0, 20),
    (170, 160, 255),
    (0, 60, 120),
    (255, 240, 170),
    (128, 128, 128),
    (90, 255, 180),
)

#: The longest class name accepted (names are drawn on one line in legends and reports).
MAX_CLASS_NAME = 128

#: Colour used for ``ignore_index`` pixels when masks are written as palette PNGs.
IGNORE_COLOR: Color = (255, 255, 255)


def default_colors(num_classes: int) -> list[Color]:
    """A fixed list of ``num_classes`` distinct RGB colours; class 0 (background) is black."""
    colors = list(_BASE_PALETTE[:num_classes])
    hue = 0.13
    while len(colors) < num_classes:
        hue = (hue + 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if len(colors) % 2 else 0.7)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


def default_names(num_classes: int, binary: bool = False) -> list[str]:
    """``class_0 .. class_{n-1}``; ``background``/``foreground`` for a binary dataset."""
    if binary and num_classes == 2:
        return ["background", "foreground"]
    return [f"class_{i}" for i in range(num_classes)]


def parse_color(value: object, where: str) -> Color:
    """An RGB tuple from ``[r, g, b]`` (0-255) or a ``"#rrggbb"`` string; ``where`` names the source file."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif (isinstance(value, Sequence) and len(value) == 3
          and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise DatasetError(f"{where}: colour {value!r} is not [r, g, b] with 0-255 integers or '#rrggbb'; fix it")


def read_class_file(root: str | Path) -> tuple[list[str] | None, list[Color] | None, str | None]:
    """Read class names (and optional colours) from ``root/classes.yaml`` (or ``.yml``) or ``root/classes.txt``.

    ``classes.yaml`` may be a list of names, or a mapping with ``names`` (a list, or ``{index: name}``)
    and optional ``colors`` (a list of ``[r, g, b]`` or ``"#rrggbb"``). ``classes.txt`` has one name per
    line. Returns ``(names, colors, file_name)``; all ``None`` when there is no class file.
    """
    root = Path(root)
    for fname in ("classes.yaml", "classes.yml"):
        path = root / fname
        if path.is_file():
            return _read_yaml(path)
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError("classes.txt is empty; list one class name per line or delete the file")
        _check_unique(names, "classes.txt")
        return names, None, "classes.txt"
    return None, None, None


def _read_yaml(path: Path) -> tuple[list[str], list[Color] | None, str]:
    fname = path.name
    data = read_yaml(path, name=fname, error=DatasetError)  # bounded: no aliases, at most 1 MB
    colors_raw = None
    if isinstance(data, dict):
        if "names" not in data:
            raise DatasetError(f"{fname}: mapping has no 'names' key; write 'names: [background, ...]'")
        names_raw, colors_raw = data["names"], data.get("colors", data.get("colours"))
    else:
        names_raw = data
    if isinstance(names_raw, dict):
        try:
            keys = sorted(int(k) for k in names_raw)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{fname}: 'names' keys must be class indices 0..n-1") from e
        if keys != list(range(len(keys))):
            raise DatasetError(f"{fname}: 'names' indices must be 0..{len(keys) - 1} without gaps; fix the indices")
        names_raw = [names_raw.get(k, names_raw.get(str(k))) for k in keys]
    if not isinstance(names_raw, list) or not names_raw:
        raise DatasetError(f"{fname}: expected a non-empty list of class names (or a mapping with 'names')")
    names = [str(n) for n in names_raw]
    _check_unique(names, fname)
    colors = None
    if colors_raw is not None:
        if not isinstance(colors_raw, list) or len(colors_raw) != len(names):
            n = len(colors_raw) if isinstance(colors_raw, list) else "no list of"
            raise DatasetError(f"{fname}: {n} colors for {len(names)} names; give one colour per class")
        colors = [parse_color(c, fname) for c in colors_raw]
    return names, colors, fname


def _check_unique(names: list[str], fname: str) -> None:
    """Refuse repeated names and names over :data:`MAX_CLASS_NAME` characters (legends, reports and
    tables are drawn with every name on one line: a megabyte name costs gigabytes of pixels)."""
    for i, n in enumerate(names):
        if len(n) > MAX_CLASS_NAME:
            raise DatasetError(f"{fname}: class {i}'s name is {len(n)} characters long, over the limit of "
                               f"{MAX_CLASS_NAME}; shorten it")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DatasetError(f"{fname}: class name '{n}' appears twice; class names must be unique")
        seen.add(n)
