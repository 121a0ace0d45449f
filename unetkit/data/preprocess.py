"""Preprocessing: the one path from stored pixels to the network's input, shared by training and inference.

``stored array (H, W, C) -> match channels (grey -> any, RGB -> grey) -> scale to [0, 1] by bit depth ->
clip to the planned per-channel range (optional) -> (x - mean) / std``. Training's datasets, validation,
``predict`` with a checkpoint and ``predict`` with an exported ONNX file all call :func:`prepare_image`
or :meth:`Normalization.apply`, and the checkpoint (and the ONNX metadata) carry the
:class:`Normalization`, so a model sees at inference exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from .io import channels_convertible, convert_channels, to_image_tensor


def imagenet_stats(in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for ``in_channels``, adapted as pretrained encoders adapt their first convolution
    (one channel: the average; more than three: the RGB values repeated cyclically)."""
    from ..models.encoders.torchvision_backbones import adapt_normalisation

    return adapt_normalisation(IMAGENET_MEAN, IMAGENET_STD, in_channels)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``clip`` (optional ``(low, high)`` in [0, 1] units), then ``(x - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple((float(lo), float(hi)) for lo, hi in self.clip))
        n = len(self.mean)
        if len(self.std) != n or (self.clip is not None and len(self.clip) != n):
            raise ValueError(f"mean, std and clip need one entry per channel, got {len(self.mean)}/"
                             f"{len(self.std)}/{'-' if self.clip is None else len(self.clip)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {list(self.std)}")
        if self.clip is not None and any(hi < lo for lo, hi in self.clip):
            raise ValueError(f"clip ranges must be (low, high) with low <= high, got {list(self.clip)}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def broadcast(self, channels: int) -> Normalization:
        """The same normalisation for ``channels`` channels (a one-channel one is repeated)."""
        if channels == self.channels:
            return self
        if self.channels != 1:
            raise ValueError(f"mean/std need {channels} values (in_channels), got {self.channels}")
        clip = None if self.clip is None else self.clip * channels
        return Normalization(self.mean * channels, self.std * channels, clip)

    def _view(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        # (C, H, W); a batch (N, C, H, W); a batch of volumes (N, C, D, H, W)
        shape = (-1, 1, 1) if like.ndim == 3 else (1, -1, *(1,) * (like.ndim - 2))
        return torch.tensor(values, dtype=torch.float32, device=like.device).view(shape)

    def apply(self, image01: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] image ``(C, H, W)`` or batch ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (returns a new
        tensor)."""
        x = image01
        if self.clip is not None:
            lo = self._view([c[0] for c in self.clip], x)
            hi = self._view([c[1] for c in self.clip], x)
            x = torch.maximum(torch.minimum(x, hi), lo)
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    def invert(self, image: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] for display (clipped values stay at their clip bounds)."""
        return image * self._view(self.std, image) + self._view(self.mean, image)

    def display(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image stretched to [0, 1] over its clip range (how the planned window shows it)."""
        x = self.invert(image)
        if self.clip is None:
            return x.clamp(0, 1)
        lo = self._view([c[0] for c in self.clip], x)
        hi = self._view([c[1] for c in self.clip], x)
        return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)

    def pad_value(self) -> torch.Tensor:
        """Per-channel value a black ([0, 1] value 0) pixel has after normalisation, ``(C,)``."""
        return self.apply(torch.zeros(self.channels, 1, 1)).view(-1)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std),
                "clip": None if self.clip is None else [list(c) for c in self.clip]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(tuple(d["mean"]), tuple(d["std"]), None if d.get("clip") is None else
                   tuple(tuple(c) for c in d["clip"]))


def match_channels(image: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
    """An ``(H, W, C)`` (or ``(H, W)``) array with ``channels`` channels, else ``ValueError``.

    Grey is replicated to any channel count and RGB becomes grey by luma
    (:func:`~unetkit.data.io.channels_convertible`, the rule of the folder datasets too).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    c = image.shape[-1]
    if not channels_convertible(c, channels):
        raise ValueError(f"{where}: {c}-channel image, but the model takes {channels} channel(s); only grey -> "
                         "any and RGB -> grey are converted: save the images with the model's channel count")
    return convert_channels(image, channels)


def prepare_image(image: np.ndarray, norm: Normalization, where: str = "image"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalised (C, H, W), [0, 1] (C, H, W))`` from a stored ``(H, W, C)`` array (``read_image``'s)."""
    chw = np.ascontiguousarray(match_channels(image, norm.channels, where).transpose(2, 0, 1))
    raw = to_image_tensor(chw)
    return norm.apply(raw), raw
