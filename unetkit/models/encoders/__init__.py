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
