"""Warnings about data that plans and trains but is probably not what its owner meant.

A folder whose masks hold only background, or whose class count comes from one stray label value (a 77 in
one mask makes 78 classes, 70 of them empty), trains without error and learns nothing useful about them.
:func:`data_warnings` says so before training, from the fingerprint alone; ``unetkit plan`` and ``unetkit
train`` print the lines.
"""

from __future__ import annotations

from typing import Any

#: Empty classes beyond this share of the foreground classes suggest a stray label value.
EMPTY_SHARE = 0.5


def data_warnings(fp: Any) -> list[str]:
    """One line per problem the fingerprint ``fp`` shows (none for healthy data)."""
    pixels = list(fp.class_pixels)
    k = len(pixels)
    foreground = pixels[1:]
    lines: list[str] = []
    if k > 1 and foreground and sum(foreground) == 0:
        lines.append("warning: the training masks hold only background (class 0): the model can learn nothing "
                     "else; check that the masks store class indices (or 0/255 for binary)")
        return lines
    empty = [c for c in range(1, k) if pixels[c] == 0]
    if empty and len(empty) > EMPTY_SHARE * (k - 1):
        present = [c for c in range(1, k) if pixels[c] > 0]
        lines.append(f"warning: {len(empty)} of {k - 1} foreground classes have no pixels in the training masks "
                     f"(present: {', '.join(map(str, present[:8]))}); is the largest label {k - 1} a stray value? "
                     "fix the masks, or set --num-classes / classes.yaml")
    return lines
