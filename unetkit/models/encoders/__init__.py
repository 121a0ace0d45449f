"""Encoder registry: a name maps to a builder returning an :class:`Encoder`.

Builders take ``(in_channels, weights, depth, **options)``; ``weights`` is ``None``, ``"imagenet"`` or a
path to a local state dict. Register a new backbone with :func:`register_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Encoder, adapt_input_conv, check_contract

EncoderBuilder = Callable[..., Encoder]
_REGISTRY: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: register ``builder`` under ``name``."""

    def wrap(builder: EncoderBuilder) -> EncoderBuilder:
        _REGISTRY[name] = builder
        return builder

    return wrap


def encoder_names() -> list[str]:
    """Names accepted by ``UNet(encoder=...)`` (plus ``"timm:<name>"`` when timm is installed)."""
    return sorted(_REGISTRY)


def get_encoder(name: str, in_channels: int = 3, weights: str | None = None, depth: int | None = None,
                **options) -> Encoder:
    """Build the encoder called ``name``; raise ``ValueError`` listing the choices for an unknown name."""
    if name.startswith("timm:"):
        from .timm import build_timm_encoder

        enc = build_timm_encoder(name[5:], in_channels=in_channels, weights=weights, depth=depth)
    elif name in _REGISTRY:
        enc = _REGISTRY[name](in_channels=in_channels, weights=weights, depth=depth, **options)
    else:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(encoder_names())} or 'timm:<name>'")
    check_contract(enc)
    return enc


# Importing the modules registers their encoders.
from . import convnext, efficientnet, mobilenet, plain, resnet, swin, vgg  # noqa: E402,F401
from .catalog import EncoderRecord, format_encoders, list_encoders  # noqa: E402

__all__ = ["Encoder", "EncoderRecord", "adapt_input_conv", "encoder_names", "format_encoders", "get_encoder",
           "list_encoders", "register_encoder"]


def encoder_normalisation(name: str, weights: str | None, in_channels: int
                          ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input statistics the weights of encoder ``name`` were trained with, for ``in_channels``, without
    building it or reading its weights; ``None`` for an encoder trained from scratch.

    ``"imagenet"``: the preprocessing of the torchvision weights enum (timm: the model's pretrained config);
    a local weights file: ImageNet's, as :func:`~.torchvision_backbones.load_weights` assumes.
    """
    from .base import IMAGENET_MEAN, IMAGENET_STD
    from .torchvision_backbones import IMAGENET_WEIGHTS, adapt_normalisation, enum_normalisation

    if weights is None:
        return None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights == "imagenet" and name in IMAGENET_WEIGHTS:
        mean, std = enum_normalisation(IMAGENET_WEIGHTS[name])
    elif weights == "imagenet" and name.startswith("timm:"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(name[5:])
            if cfg is not None and cfg.mean and cfg.std:
                mean, std = tuple(cfg.mean), tuple(cfg.std)
        except (ImportError, RuntimeError):
            pass
    return adapt_normalisation(mean, std, in_channels)
