"""Reading the YAML files a user hands to unetkit (``classes.yaml``, ``--config``), bounded by design.

``yaml.safe_load`` never runs code, but it does expand aliases: a few lines of nested ``&a``/``*a``
references (a "billion laughs" file) expand to gigabytes. The files unetkit reads are short lists and
mappings that never need aliases, so :func:`read_yaml` refuses them (and merge keys, ``<<: *a``, which
are aliases too) and refuses files over :data:`MAX_YAML_BYTES`; otherwise it returns what
``yaml.safe_load`` would. Errors are one line naming the file, the cause and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The largest YAML file unetkit reads (a classes.yaml of thousands of classes is a few tens of KB).
MAX_YAML_BYTES = 1 << 20


class _AliasFound(Exception):
    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor, line)
        self.anchor, self.line = anchor, line


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias instead of expanding it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(str(event.anchor), event.start_mark.line + 1)
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, *, name: str | None = None, error: type[Exception] = ValueError) -> Any:
    """The document in ``path`` as ``yaml.safe_load`` reads it, without aliases and at most 1 MB.

    ``name`` is how errors call the file (default: the path); ``error`` is the exception class raised
    (a ``ValueError`` subclass, so the command line prints it as one line with exit code 2).
    """
    p = Path(path)
    shown = name or str(p)
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{shown}: {size / 1e6:.1f} MB, over unetkit's {MAX_YAML_BYTES >> 20} MB limit for YAML "
                        "files; this is not a file unetkit wrote or expects: shorten it")
        with p.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # the file may have grown since stat
        if len(raw) > MAX_YAML_BYTES:
            raise error(f"{shown}: over unetkit's {MAX_YAML_BYTES >> 20} MB limit for YAML files; shorten it")
        text = raw.decode("utf-8")
    except OSError as e:
        raise error(f"{shown}: cannot read ({e.strerror or e}); check the file's permissions") from e
    except UnicodeDecodeError as e:
        raise error(f"{shown}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasFound as e:
        raise error(f"{shown}: line {e.line} uses the YAML alias *{e.anchor}; aliases are refused (nested ones "
                    "expand to gigabytes); write the values out in full") from None
    except yaml.YAMLError as e:
        raise error(f"{shown}: not valid YAML ({' '.join(str(e).split())}); fix the syntax") from e
    except RecursionError:
        raise error(f"{shown}: nested too deeply to be an options file; flatten it") from None
