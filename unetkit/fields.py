"""Option fields shared by the config dataclasses (``UNetConfig``, ``DataConfig``, ``TrainConfig``).

A field carries its command-line help and allowed values (:func:`option`), so flags, YAML files and
checkpoints describe an option once; :func:`check_value` converts what a YAML file or a flag gave to the
field's type, naming the option and the file when it does not fit.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import field
from typing import Any


def option(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field carrying its command-line help and allowed values."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


def check_value(name: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to ``hint`` (int, float, str, bool, tuple/list of numbers, optional of those).

    Raises ``ValueError`` naming ``name`` and ``where`` for a value of the wrong kind (e.g. ``epochs: abc``).
    """
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"{where}: {name} needs a value, not None")
    if str in args:  # a word where a union allows one (decoder_channels: mirror, or [mirror] from a flag)
        word = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
        if isinstance(word, str) and not word.strip().isdigit():
            return word
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base)
    kind = "true or false" if base is bool else getattr(base, "__name__", str(base))
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
                return value.lower() in ("true", "yes", "on")
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin in (tuple, list):
            item = typing.get_args(base)[0]
            items = value if isinstance(value, (list, tuple)) else [value]
            conv = [check_value(name, v, item, where) for v in items]
            kind = f"a list of {item.__name__}"
            return tuple(conv) if origin is tuple else conv
    except (TypeError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {name} must be {kind}, not {value!r}") from None
    return value
