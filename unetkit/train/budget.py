"""Where a run's time goes: the budget of ``--time`` and its accounting."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .plan import format_duration


@dataclass
class Budget:
    """Where a run's time goes (seconds); ``limit`` is the budget (``None``: no budget).

    ``elapsed`` is the run's wall time by ``clock`` (earlier sessions of a resumed run included); setup,
    training, validation and the final evaluation are its parts, and "other" (checkpoints, pictures) the rest.
    """

    limit: float | None = None
    setup: float = 0.0
    train: float = 0.0
    validation: float = 0.0
    final: float = 0.0
    before: float = 0.0  # wall time of earlier sessions
    step_s: float | None = None
    val_s: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    start: float = field(default=0.0, repr=False, compare=False)

    def elapsed(self) -> float:
        return self.before + self.clock() - self.start

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("limit", "setup", "train", "validation", "final", "step_s", "val_s")}
        d["elapsed"] = self.elapsed()
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}

    def describe(self, steps: int, validations: int) -> str:
        total = self.elapsed()
        other = total - self.setup - self.train - self.validation - self.final
        parts = [f"setup {self.setup:.1f}s", f"training {self.train:.1f}s ({steps} steps"
                 + (f", {self.train / max(steps, 1):.3f} s/step)" if steps else ")"),
                 f"validation {self.validation:.1f}s ({validations}x)", f"final evaluation {self.final:.1f}s",
                 f"checkpoints and pictures {max(other, 0.0):.1f}s"]
        head = f"time {total:.1f}s" + (f" of a {format_duration(self.limit)} budget" if self.limit else "")
        return f"{head}: " + ", ".join(parts)
