"""The catalog of registered encoders: ``list_encoders()`` records and a ``format_encoders()`` table.

Used by ``unetkit info --encoders``. Parameter counts and stage shapes come from building each encoder
(without weights, on the ``meta`` device so nothing is allocated or initialised) once per process; whether
ImageNet weights are cached is checked afresh each call (``<torch hub dir>/checkpoints/<file>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from . import encoder_names, get_encoder
from .torchvision_backbones import IMAGENET_WEIGHTS, hub_checkpoint_path


@dataclass(frozen=True)
class EncoderRecord:
    """One registered encoder.

    Attributes:
        name: the ``UNet(encoder=...)`` name.
        params: parameter count of the encoder alone (3 input channels, all stages).
        out_channels, reductions: the stages, shallow to deep.
        imagenet_weights: the torchvision weights enum ``"imagenet"`` loads (``None``: no ImageNet weights).
        imagenet_cached: that file is already in torch hub's cache, so ``"imagenet"`` works offline.
    """

    name: str
    params: int
    out_channels: tuple[int, ...]
    reductions: tuple[int, ...]
    imagenet_weights: str | None
    imagenet_cached: bool


@cache
def _shape_of(name: str) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(params, out_channels, reductions) of encoder ``name`` built without weights."""
    try:
        with torch.device("meta"):
            enc = get_encoder(name)
    except (RuntimeError, NotImplementedError):  # a builder that cannot run on meta tensors
        enc = get_encoder(name)
    return sum(p.numel() for p in enc.parameters()), tuple(enc.out_channels), tuple(enc.reductions)


def list_encoders(names: list[str] | None = None) -> list[EncoderRecord]:
    """Records for ``names`` (default: every registered encoder), sorted by name."""
    records = []
    for name in sorted(names if names is not None else encoder_names()):
        params, channels, reductions = _shape_of(name)
        enum = IMAGENET_WEIGHTS.get(name)
        records.append(EncoderRecord(name, params, channels, reductions,
                                     None if enum is None else f"{type(enum).__name__}.{enum.name}",
                                     enum is not None and hub_checkpoint_path(enum).is_file()))
    return records


def format_encoders(records: list[EncoderRecord] | None = None) -> str:
    """A plain-text table of ``records`` (default: :func:`list_encoders`) for the CLI."""
    records = list_encoders() if records is None else records
    header = ("encoder", "params", "channels", "reductions", "imagenet")
    rows = [header]
    for r in records:
        imagenet = "-" if r.imagenet_weights is None else ("cached" if r.imagenet_cached else "download")
        rows.append((r.name, f"{r.params / 1e6:.1f}M", ",".join(map(str, r.out_channels)),
                     ",".join(map(str, r.reductions)), imagenet))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    footer = "timm:<name> also works for any timm model (pip install 'unetkit[timm]')."
    return "\n".join([*lines, "", footer])
