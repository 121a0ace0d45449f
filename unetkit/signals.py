"""SIGTERM handled as Ctrl-C is: ``timeout``, Slurm, ``docker stop`` and Kubernetes end a job with SIGTERM,
and a run then writes its checkpoint, prints the resume line and exits 143 instead of dying mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

#: The exit code of a process ended by SIGTERM (128 + 15), as shells report it.
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (a ``KeyboardInterrupt``, so every
    ``except KeyboardInterrupt`` cleanup runs for it too)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
