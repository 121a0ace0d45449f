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

    def time_left(self, step: int, total: int, steps_before: int = 0) -> float:
        """Seconds until the run ends: what is left of the budget (the end's reserve included), else the
        remaining steps at the pace of this session's ``step - steps_before`` steps so far."""
        if self.limit is not None:
            return max(0.0, self.limit - self.elapsed())
        done = step - steps_before
        pace = (self.clock() - self.start - self.setup) / done if done > 0 else 0.0
        return max(0.0, (total - step) * pace)

    # ----------------------------------------------------------------- sizing a run to the budget
    def reserve(self) -> float:
        """Seconds kept for the end: the last validation (with Boundary F1) and, when that was not the best
        epoch, the best checkpoint's evaluation, plus the report."""
        return 2.5 * (self.val_s or 0.0) + 2.0

    def spent(self) -> bool:
        """Whether the budget, less :meth:`reserve`, is used up (never without a limit)."""
        return self.limit is not None and self.elapsed() >= self.limit - self.reserve()

    def fit_steps(self, step: int, total: int, steps_between_validations: int) -> int:
        """The run's length in steps once ``step_s`` and ``val_s`` are measured: as many as the budget holds
        after ``step`` (a validation every ``steps_between_validations`` steps), never more than ``total``."""
        if self.limit is None or self.step_s is None:
            return total
        left = self.limit - self.elapsed() - self.reserve()
        per_step = self.step_s + (self.val_s or 0.0) / max(1, steps_between_validations)
        return max(step, min(total, step + int(max(0.0, left) / per_step)))

    def refit_steps(self, step: int, since: tuple[int, float], cap: int) -> int:
        """The run's length from the pace since ``since`` = ``(step, elapsed)`` (checkpoints and validation
        included), so the learning-rate schedule ends when the time does; at most ``cap``."""
        step0, t0 = since
        pace = (self.elapsed() - t0) / max(1, step - step0)
        left = (self.limit or 0.0) - self.elapsed() - self.reserve()
        return min(cap, step + max(0, int(left / pace)))


def forward_seconds(model: Any, x: Any, clock: Callable[[], float] = time.monotonic) -> float:
    """Seconds per sample of an inference forward pass of ``model`` on the batch ``x`` (timed after one warm-up
    pass; call it under the run's autocast), from which a validation's cost is estimated."""
    import torch

    from ..timing import synchronize

    was = model.training
    model.eval()
    with torch.inference_mode():
        model(x)
        synchronize(x.device)
        t0 = clock()
        model(x)
        synchronize(x.device)
        seconds = (clock() - t0) / x.shape[0]
    model.train(was)
    return seconds
