"""Command-line flags generated from dataclass fields (``UNetConfig``, ``TrainConfig``).

Each field becomes ``--field-name`` with its metadata's help and choices, so an option is described once,
next to its default, and ``train``, ``info`` and ``bench`` offer the same model flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from ..models.config import UNetConfig


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def none_or_str(value: str) -> str | None:
    return None if value.lower() in ("none", "null") else value


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join("x".join(str(a) for a in v) if isinstance(v, (list, tuple)) else str(v) for v in value)
    return str(value)


def add_field(group: argparse._ActionsContainer, f: dataclasses.Field, hint: Any, *, default: Any,
              suppress: bool, name: str | None = None) -> None:
    """Add ``--<name>`` (default: the field's name) to ``group``.

    ``suppress=True``: an absent flag leaves no attribute (so "given" can be told from "default"); the help
    shows ``default`` unless it is ``None`` (the help text then says what happens).
    """
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    meta = f.metadata
    text = meta.get("help", "")
    if default is not None and default != [] and "(default" not in text:
        text += f" (default: {_shown(default)})"
    kw: dict[str, Any] = {"default": argparse.SUPPRESS if suppress else default, "help": text}
    name = name or f.name
    choices = meta.get("choices")
    if base is bool:
        group.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kw)
        return
    origin = typing.get_origin(base)
    if origin in (tuple, list):
        item = typing.get_args(base)[0]
        n = len(typing.get_args(base)) if origin is tuple and Ellipsis not in typing.get_args(base) else None
        nargs = "+" if n is None or f.name in ("patch_size", "spacing") else n
        metavar = name.upper() if nargs == "+" else tuple(f"{name.upper()}{i + 1}" for i in range(n))
        if str in args:  # numbers or one word (--decoder-channels mirror); the config checks which
            item = _number_or_word(item)
        if typing.get_origin(item) in (tuple, list):  # per-stage axes (--strides 1x1x1 1x2x2): the config parses
            item = str
        group.add_argument(flag(name), type=item, nargs=nargs, metavar=metavar, **kw)
        return
    # "none" means None only where None is a value (e.g. --attention none); --norm none stays the string.
    kind = base if base in (int, float) else (none_or_str if optional else str)
    if choices:
        shown = [c for c in choices if c is not None]
        kw["metavar"] = "{" + ",".join(str(c) for c in shown) + "}"
        kw["choices"] = _Choices(shown, none=None in choices)
    else:
        kw["metavar"] = "DIR|NAME" if name == "data" else name.upper()
    group.add_argument(flag(name), type=kind, **kw)


def _number_or_word(kind: type) -> Any:
    """An argparse type: ``kind`` of a number, else the word as given."""
    def convert(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            return value
    convert.__name__ = kind.__name__
    return convert


class _Choices(list):
    """Allowed values shown without ``None`` (given as ``none``), but ``None`` accepted where it is a value."""

    def __init__(self, values: list, none: bool) -> None:
        super().__init__(values)
        self.none = none

    def __contains__(self, value: object) -> bool:
        return (value is None and self.none) or super().__contains__(value)


def add_model_options(parser: argparse.ArgumentParser, *, suppress: bool, skip: Iterable[str] = (),
                      defaults: UNetConfig | None = None, title: str = "model") -> None:
    """One group of flags for every :class:`UNetConfig` field (but ``skip``)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(UNetConfig)
    defaults = defaults or UNetConfig()
    for f in dataclasses.fields(UNetConfig):
        if f.name not in skip:
            add_field(group, f, hints[f.name], default=getattr(defaults, f.name), suppress=suppress)


def model_config_from_args(args: argparse.Namespace, **fixed: Any) -> UNetConfig:
    """The :class:`UNetConfig` the model flags describe (``fixed`` fields win)."""
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return UNetConfig.from_dict({**values, **fixed}, where="flags")


def add_data_options(parser: argparse.ArgumentParser, *, suppress: bool = True, skip: Iterable[str] = (),
                     title: str = "data") -> None:
    """One group of flags for every :class:`DataConfig` field (but ``skip`` and the built-ins' ``options``);
    ``source`` is ``--data``."""
    from ..data.config import FLAG_NAMES, DataConfig

    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(DataConfig)
    defaults = DataConfig()
    for f in dataclasses.fields(DataConfig):
        if f.name not in skip and f.name != "options":
            add_field(group, f, hints[f.name], default=getattr(defaults, f.name), suppress=suppress,
                      name=FLAG_NAMES.get(f.name))


def data_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The data options given as flags, by :class:`DataConfig` field name (``--data`` is ``source``)."""
    from ..data.config import FLAG_NAMES, field_names

    flags = {FLAG_NAMES.get(n, n): n for n in field_names() if n != "options"}
    return {name: vars(args)[flag] for flag, name in flags.items() if flag in vars(args)}


def add_tta_option(p: argparse.ArgumentParser) -> None:
    """``--tta/--no-tta``: flip averaging, by default over the flips the model was trained with."""
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average the probabilities over flips (default: on, over the flips the model was trained "
                        "with, for a model trained with --hflip/--vflip; off otherwise). --tta on a model trained "
                        "without flips averages flips along every axis")
