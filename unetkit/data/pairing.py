"""Pairing images with masks (2D folders) or image volumes with label volumes (volume folders) by name.

Names are compared after Unicode NFC normalisation, so ``images/café.png`` written by a macOS tool (NFD:
``e`` + combining accent) pairs with ``masks/café.png`` written on Linux (NFC: one ``é``). A mask pairs
with an image when their stems are equal (the rule that always wins) or when the mask's stem is the
image's stem plus one of :data:`MASK_SUFFIXES` (``img_000_mask.png`` -> ``img_000.png``, compared
case-insensitively). Two masks that could both belong to one image are refused, naming both files.

:func:`pair_by_name` returns the matches and a one-line :attr:`Pairing.rule` (e.g. ``masks paired by the
suffix _mask``) for the scan to report.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError

#: Mask-name endings accepted after the image's stem (``img_000_mask.png`` pairs with ``img_000.png``).
MASK_SUFFIXES: tuple[str, ...] = (
    "_mask", "-mask", "_masks", "-masks", "_label", "-label", "_labels", "-labels", "_seg", "-seg",
    "_segmentation", "_gt", "-gt",
)


def name_key(stem: str) -> str:
    """The form names are compared in: Unicode NFC (macOS tools write NFD, Linux tools NFC)."""
    return unicodedata.normalize("NFC", stem)


def rel(root: Path, path: Path) -> str:
    """``path`` relative to the dataset folder ``root`` (POSIX slashes), for messages; else as given."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def index_by_name(root: Path, paths: Iterable[Path], stem_of: Callable[[Path], str | None], what: str,
                  fix: str) -> dict[str, Path]:
    """``{name_key(stem): path}`` of the files ``stem_of`` names (``None``: not one); two files with one
    stem (after normalisation) are refused naming both: ``"A and B {what} 'stem'; {fix}"``."""
    found: dict[str, Path] = {}
    for p in paths:
        stem = stem_of(p)
        if stem is None:
            continue
        key = name_key(stem)
        if key in found:
            raise DatasetError(f"{rel(root, found[key])} and {rel(root, p)} {what} '{key}'; {fix}")
        found[key] = p
    return found


@dataclass(frozen=True)
class Match:
    """One pair: the image's stem as written, both files, and the suffix the mask matched by (``""``: the
    same name)."""

    stem: str
    image: Path
    mask: Path
    suffix: str = ""
    normalised: bool = False  # the names matched only after Unicode normalisation


@dataclass(frozen=True)
class Pairing:
    """The matches of one images/masks folder pair, in image-name order."""

    matches: list[Match]

    @property
    def rule(self) -> str:
        """Which rule(s) paired the masks, for the CLI to print (see :func:`describe_rules`)."""
        return describe_rules([self])


def describe_rules(pairings: Iterable[Pairing], noun: str = "masks") -> str:
    """One line saying how ``noun`` were paired over ``pairings`` (train and val folders together), e.g.
    ``masks paired by the same name``, ``masks paired by the suffix _mask`` or ``masks paired by the same
    name (3) and the suffix _mask (2)``; ``, names compared after Unicode normalisation (NFC)`` is added
    when that mattered."""
    counts: dict[str, int] = {}
    normalised = False
    for pairing in pairings:
        for m in pairing.matches:
            counts[m.suffix] = counts.get(m.suffix, 0) + 1
            normalised = normalised or m.normalised
    if not counts:
        return f"no {noun} paired"
    names = {s: ("the same name" if not s else f"the suffix {s}") for s in counts}
    order = sorted(counts, key=lambda s: (s != "", s))
    if len(order) == 1:
        text = f"{noun} paired by {names[order[0]]}"
    else:
        parts = [f"{names[s]} ({counts[s]})" for s in order]
        text = f"{noun} paired by " + ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + (", names compared after Unicode normalisation (NFC)" if normalised else "")


def _mask_suffix(mask_key: str, image_key: str) -> str | None:
    """The :data:`MASK_SUFFIXES` entry that turns ``image_key`` into ``mask_key`` (as the mask spells it)."""
    if len(mask_key) <= len(image_key) or not mask_key.startswith(image_key):
        return None
    tail = mask_key[len(image_key):]
    return tail if tail.lower() in MASK_SUFFIXES else None


def _base_of(mask_key: str) -> list[tuple[str, str]]:
    """``(image stem, suffix)`` candidates a mask stem could come from under :data:`MASK_SUFFIXES`."""
    lower = mask_key.lower()
    return [(mask_key[: -len(s)], mask_key[-len(s):]) for s in MASK_SUFFIXES
            if lower.endswith(s) and len(mask_key) > len(s)]


def pair_by_name(root: Path, img_dir: Path, mask_dir: Path, images: dict[str, Path], masks: dict[str, Path], *,
                 image_noun: str = "image", mask_noun: str = "mask", mask_example: str = ".png",
                 stem_of: Callable[[Path], str | None] = lambda p: p.stem) -> Pairing:
    """Pair ``images`` with ``masks`` (both from :func:`index_by_name`); every file must find its partner.

    Exact (normalised) stems pair first; a mask left over pairs by suffix with the image it extends. Errors
    (one line, files relative to ``root``): an image without a mask, a mask without an image, two masks
    for one image.
    """
    rel_img, rel_mask = rel(root, img_dir), rel(root, mask_dir)
    left = {k: p for k, p in masks.items() if k not in images}
    by_suffix: dict[str, list[tuple[str, str]]] = {}  # image key -> [(mask key, suffix)]
    for mkey in left:
        for base, suffix in _base_of(mkey):
            if base in images:
                by_suffix.setdefault(base, []).append((mkey, suffix))
    matches: list[Match] = []
    used: set[str] = set()
    for key in sorted(images):
        image = images[key]
        stem = stem_of(image) or key
        if key in masks:
            mkey, suffix = key, ""
        elif key in by_suffix:
            found = by_suffix[key]
            if len(found) > 1:
                a, b = (rel(root, masks[m]) for m, _ in found[:2])
                raise DatasetError(f"{rel(root, image)} could pair with two {mask_noun}s, {a} and {b}; rename or "
                                   f"remove one so each {image_noun} has exactly one {mask_noun}")
            mkey, suffix = found[0]
        else:
            raise DatasetError(f"{rel(root, image)} has no {mask_noun} in {rel_mask}/ (expected {rel_mask}/{key}"
                               f"{mask_example}); add it or remove the {image_noun}")
        mask = masks[mkey]
        used.add(mkey)
        matches.append(Match(stem, image, mask, suffix, (stem_of(mask) or mkey) != stem + suffix))
    for key, p in masks.items():
        if key not in used:
            base = next((b for b, _ in _base_of(key)), key)
            if base in images and base in masks:  # e.g. masks/a.png and masks/a_mask.png for images/a.png
                raise DatasetError(f"{rel(root, images[base])} could pair with two {mask_noun}s, "
                                   f"{rel(root, masks[base])} and {rel(root, p)}; rename or remove one so each "
                                   f"{image_noun} has exactly one {mask_noun}")
            raise DatasetError(f"{rel(root, p)} has no {image_noun} in {rel_img}/ (expected {rel_img}/{base}.*); "
                               f"add it or remove the {mask_noun}")
    return Pairing(matches)
