"""Any timm model as an encoder: ``encoder="timm:<name>"`` (needs ``pip install 'unetkit[timm]'``).

The model is built with ``timm.create_model(name, features_only=True, in_chans=in_channels)``; its
``feature_info`` gives the stages' channels and reductions. Models whose feature maps are channels-last
(Swin, some ViT-likes: ``output_fmt == "NHWC"``) are permuted to NCHW. Weights: ``None`` (random),
``"imagenet"`` (timm's default pretrained tag, fetched through the Hugging Face hub / its cache) or a local
state-dict file of the *classification* model, loaded by timm itself (its checkpoint filter, classifier
removal and ``in_chans`` adaptation apply).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Encoder, as_tuple
from .torchvision_backbones import adapt_normalisation
from .weights import WeightsError

TIMM_MISSING = "encoder 'timm:{name}' needs timm, which is not installed: pip install 'unetkit[timm]'"


def _import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError as e:
        raise ImportError(TIMM_MISSING.format(name=name)) from e
    return timm


class TimmEncoder(Encoder):
    """A timm ``features_only`` model; ``forward`` returns its feature maps as NCHW tensors."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        info = model.feature_info
        self.out_channels = as_tuple(info.channels())
        self.reductions = as_tuple(info.reduction())
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)) == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)


def build_timm_encoder(name: str, in_channels: int = 3, weights: str | Path | None = None,
                       depth: int | None = None) -> TimmEncoder:
    """Build ``timm.create_model(name, features_only=True, ...)`` as an encoder with ``depth`` stages.

    Raises ``ImportError`` naming the install command when timm is missing, ``ValueError`` for an unknown
    model name or a bad ``depth``, :class:`WeightsError` for a missing weights file.
    """
    timm = _import_timm(name)
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_channels, "pretrained": weights is not None}
    if weights is not None and weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: encoder weights file not found; pass an existing .pth/.safetensors "
                               "path, 'imagenet' or None")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models() for the names")
    model = timm.create_model(name, **kwargs)
    stages = len(model.feature_info.channels())
    if depth is not None:
        if not 1 <= depth <= stages:
            raise ValueError(f"timm:{name} has {stages} feature stages; depth must be 1..{stages}, not {depth}")
        if depth < stages:  # rebuild so the layers after the last kept stage are not even created
            out_indices = tuple(model.feature_info.out_indices[:depth])
            model = timm.create_model(name, out_indices=out_indices, **kwargs)
    enc = TimmEncoder(model, name)
    if weights is not None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if "mean" in cfg and "std" in cfg:
            enc.mean, enc.std = adapt_normalisation(cfg["mean"], cfg["std"], in_channels)
    return enc
