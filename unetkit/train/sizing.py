"""Fitting a run's length to its time budget: the first steps are timed, the run is sized from them and
from an estimated validation cost, and resized from its pace as it goes, every rank agreeing.

:class:`RunSizing` is the part of :class:`unetkit.train.Trainer` that does this; the arithmetic is
:class:`unetkit.train.budget.Budget`'s.
"""

from __future__ import annotations

import torch

from .budget import forward_seconds
from .outputs import unwrap
from .plan import validation_windows

#: Optimizer steps timed (after one untimed) before a time-budgeted run fixes its length.
PROBE_STEPS = 6
#: Provisional length of a run that only a time budget bounds, until its first steps are timed.
UNBOUNDED_STEPS = 10**9


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    """``op`` ("MAX" or "MIN") over ranks in place (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks in place (a no-op in a single process): "any rank says stop"."""
    return _all_reduce(t, "MAX")


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks in place (a no-op in a single process): "every rank runs the smallest estimate"."""
    return _all_reduce(t, "MIN")


class RunSizing:
    """Sizes and resizes a time-budgeted run (mixed into :class:`unetkit.train.Trainer`, whose state it reads:
    ``budget``, ``plan``, ``model``, ``channels_last``, ``step``, ``total_steps``, ``val_every``, ``steps_per_epoch``, ``dist``)."""

    def _size_the_run(self, step_s: float) -> None:
        """Fix the run's length from the measured step and validation times and the budget (the validation
        schedule is the plan's, so which epochs are validated does not depend on the machine's load)."""
        dev = self.dist.device
        x = torch.zeros(self.plan.batch_size, self.train_ds.in_channels, *self.plan.patch_size, device=dev)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            fwd = forward_seconds(unwrap(self.model), x, self.clock)
        val_s = fwd * validation_windows(self.val_ds, self.plan.patch_size) * 1.2 + 0.01 * len(self.val_ds)
        self.budget.step_s, self.budget.val_s = step_s, val_s
        self.total_steps = self.budget.fit_steps(self.step, self.total_steps, self.val_every * self.steps_per_epoch)
        totals = torch.tensor([float(self.total_steps), -float(self.val_every)], device=dev)
        all_reduce_min(totals)  # every rank runs the same number of steps: the smallest estimate
        self.total_steps, self.val_every = int(totals[0]), int(-totals[1])
        self.sized = True
        self._sized_at = (self.step, self.budget.elapsed())
        self.log(f"measured {step_s:.3f} s/step and about {val_s:.1f} s per validation: {self.total_steps} steps "
                 f"({self.total_steps / self.steps_per_epoch:.1f} epochs), validating every "
                 f"{self.val_every} epoch(s)")

    def _resize(self) -> None:
        """Refit the remaining steps to the budget from the pace so far (:meth:`Budget.refit_steps`), agreed by
        every rank. Changes under 2 % are ignored."""
        if self.budget.limit is None or not self.sized or not hasattr(self, "_sized_at"):
            return
        if self.step - self._sized_at[0] < 2 * self.steps_per_epoch:
            return
        cap = self.plan.epochs * self.steps_per_epoch if self.plan.epochs else (self.plan.max_steps or UNBOUNDED_STEPS)
        total = torch.tensor([float(self.budget.refit_steps(self.step, self._sized_at, cap))],
                             device=self.dist.device)
        all_reduce_min(total)
        new = int(total.item())
        if abs(new - self.total_steps) > 0.02 * self.total_steps:
            self.total_steps = max(new, self.step)

    def _out_of_time(self) -> bool:
        """The budget (less the final evaluation's share) is spent, agreed by every rank."""
        if self.budget.limit is None:
            return False
        if not self.dist.enabled:  # the host clock alone: no tensor, no device sync on the training step
            return self.budget.spent()
        flag = torch.tensor([1.0 if self.budget.spent() else 0.0], device=self.dist.device)
        all_reduce_max(flag)
        return bool(flag.item())
