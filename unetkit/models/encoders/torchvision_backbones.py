"""Shared machinery for the encoders built from torchvision classification models.

Each family (``vgg.py``, ``resnet.py``, ``mobilenet.py``, ``efficientnet.py``, ``swin.py``,
``convnext.py``) builds torchvision's model with ``weights=None`` and keeps the modules it needs *under
torchvision's names*, so a torchvision state dict loads with strict key matching once the classifier keys
(and the layers beyond ``depth``) are dropped. This module holds what they share:

* :class:`TorchvisionEncoder`: stem adaptation to other than 3 input channels and state-dict loading;
* :class:`FeaturesEncoder`: the encoder for models whose body is one ``features`` Sequential, tapped at
  the last layer of each stride (its own state dict, keys ``N.*``, loads too);
* :func:`load_weights`: ``None`` / ``"imagenet"`` (torchvision's weights enum, cached by torch hub) / a
  local ``.pth``/``.safetensors`` path, setting ``encoder.mean/std`` from the weights;
* :data:`IMAGENET_WEIGHTS`: encoder name -> the torchvision weights enum ``"imagenet"`` resolves to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum

from .base import IMAGENET_MEAN, IMAGENET_STD, Encoder, adapt_input_conv, as_tuple
from .weights import WeightsError, load_state_dict_file, strip_prefix, torchvision_state_dict

#: Encoder name -> the torchvision weights enum that ``weights="imagenet"`` loads. Filled by the families.
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {}


def check_depth(depth: int | None, num_stages: int, arch: str) -> int:
    """``depth`` (``None`` means all stages) validated against the encoder's ``num_stages``."""
    if depth is None:
        return num_stages
    if not 1 <= depth <= num_stages:
        raise ValueError(f"{arch} has {num_stages} stages; depth must be 1..{num_stages}, not {depth}")
    return depth


def adapt_normalisation(mean: Sequence[float], std: Sequence[float], in_channels: int
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``mean``/``std`` for ``in_channels`` inputs, mirroring :func:`adapt_input_conv`.

    One channel (kernels summed): the average mean and std. More channels (kernels repeated): the RGB
    values repeated cyclically. Three channels: unchanged.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if in_channels == len(mean):
        return mean, std
    if in_channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return (tuple(mean[i % len(mean)] for i in range(in_channels)),
            tuple(std[i % len(std)] for i in range(in_channels)))


def hub_checkpoint_path(weights_enum: WeightsEnum) -> Path:
    """Where torch hub caches ``weights_enum``'s file (``<hub dir>/checkpoints/<file name of the URL>``)."""
    name = os.path.basename(urlparse(weights_enum.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def enum_normalisation(weights_enum: WeightsEnum) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``mean``/``std`` of the preprocessing that ships with ``weights_enum`` (ImageNet's if absent)."""
    try:
        preprocess = weights_enum.transforms()
        return as_float_tuple(preprocess.mean), as_float_tuple(preprocess.std)
    except (AttributeError, TypeError):
        return IMAGENET_MEAN, IMAGENET_STD


def as_float_tuple(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


class TorchvisionEncoder(Encoder):
    """An encoder whose parameters carry torchvision's names for the same model.

    Subclasses set ``arch`` and ``stem_conv`` (the dotted name of the first convolution), assign the
    torchvision modules they keep, then call :meth:`_finish` with the full torchvision model so foreign
    checkpoints can be recognised and the stem adapted.
    """

    arch: str
    stem_conv: str

    def _finish(self, full_model: nn.Module, in_channels: int) -> None:
        """Record the full model's keys and adapt the stem to ``in_channels`` (keeping its init)."""
        # A plain attribute (not a buffer): it must not appear in the state dict.
        self._reference_keys = frozenset(full_model.state_dict())
        self.in_channels = in_channels
        if in_channels == 3:
            return
        parent_name, _, attr = self.stem_conv.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        old: nn.Conv2d = getattr(parent, attr)
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                        old.groups, old.bias is not None, old.padding_mode, device=old.weight.device,
                        dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(old.weight, in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        setattr(parent, attr, new)

    def load_torchvision_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a torchvision state dict of the same architecture (whole model, classifier included).

        Keys of the classifier and of layers beyond ``depth`` are ignored; ``module.`` (DataParallel) and
        ``encoder.`` (a unetkit model) prefixes are stripped. The stem's RGB kernels are adapted to
        ``in_channels`` (:func:`adapt_input_conv`). Raises :class:`WeightsError` for keys that torchvision's
        ``arch`` does not have, for missing keys and for shape mismatches.
        """
        sd = strip_prefix(strip_prefix(sd, "module."), "encoder.")
        foreign = sorted(set(sd) - self._reference_keys)
        if foreign:
            raise WeightsError(f"{len(foreign)} weight keys are not in torchvision's {self.arch}, e.g. "
                               f"{foreign[:3]}; is this a torchvision {self.arch} state dict?")
        own = self.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}
        stem_key = f"{self.stem_conv}.weight"
        if stem_key in sd:
            sd[stem_key] = adapt_input_conv(sd[stem_key], self.in_channels)
        # Old checkpoints lack BatchNorm's ``num_batches_tracked``; BatchNorm fills it in itself.
        missing = sorted(k for k in set(own) - set(sd) if not k.endswith("num_batches_tracked"))
        if missing:
            raise WeightsError(f"{self.arch} weights lack {len(missing)} keys, e.g. {missing[:3]}")
        try:
            self.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsError(f"{self.arch} weights do not fit: {e}") from e


class FeaturesEncoder(TorchvisionEncoder):
    """An encoder over torchvision's ``features`` Sequential, returning the outputs of layers ``taps``.

    ``self.features`` is torchvision's ``features`` cut after the deepest tap kept, so its state-dict keys
    are torchvision's (``features.N.*``).
    """

    stem_conv = "features.0.0"

    def __init__(self, arch: str, full_model: nn.Module, taps: Sequence[int], out_channels: Sequence[int],
                 reductions: Sequence[int], in_channels: int, depth: int | None) -> None:
        super().__init__()
        self.arch = arch
        depth = check_depth(depth, len(taps), arch)
        self.taps = as_tuple(taps[:depth])
        self.features: nn.Sequential = full_model.features[: self.taps[-1] + 1]
        self.out_channels = as_tuple(out_channels[:depth])
        self.reductions = as_tuple(reductions[:depth])
        self._finish(full_model, in_channels)

    def load_torchvision_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """As :meth:`TorchvisionEncoder.load_torchvision_state_dict`; the state dict of torchvision's
        ``features`` Sequential alone (keys ``N.*``, e.g. ``torch.save(vgg.features.state_dict())``) is
        read as the whole model's ``features.N.*``."""
        sd = strip_prefix(strip_prefix(sd, "module."), "encoder.")
        if sd and all(k.split(".", 1)[0].isdigit() for k in sd):
            sd = {f"features.{k}": v for k, v in sd.items()}
        super().load_torchvision_state_dict(sd)

    def _stage_output(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Hook for subclasses to post-process a tapped output (e.g. Swin's NHWC -> NCHW)."""
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        start = 0
        for stage, tap in enumerate(self.taps):
            for layer in self.features[start : tap + 1]:
                x = layer(x)
            start = tap + 1
            feats.append(self._stage_output(x, stage))
        return feats


def load_weights(encoder: TorchvisionEncoder, weights: str | Path | None, name: str) -> TorchvisionEncoder:
    """Load ``weights`` into ``encoder`` and set its ``mean``/``std``; return it.

    ``None``: nothing (trained from scratch, ``mean``/``std`` stay ``None``). ``"imagenet"``: the state dict
    of ``IMAGENET_WEIGHTS[name]`` through torch hub's cache (downloaded only if the file is missing).
    Otherwise a path to a local torchvision state dict, assumed ImageNet-normalised.
    """
    if weights is None:
        return encoder
    if weights == "imagenet":
        enum = IMAGENET_WEIGHTS[name]
        sd = torchvision_state_dict(enum)
        mean, std = enum_normalisation(enum)
    else:
        sd = load_state_dict_file(weights)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    encoder.load_torchvision_state_dict(sd)
    encoder.mean, encoder.std = adapt_normalisation(mean, std, encoder.in_channels)
    return encoder


def register_imagenet(name: str, weights_enum: Any) -> None:
    """Declare the torchvision weights enum value ``weights="imagenet"`` means for encoder ``name``."""
    IMAGENET_WEIGHTS[name] = weights_enum
