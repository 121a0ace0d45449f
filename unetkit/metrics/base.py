"""Cumulative metrics: state tensors summed over batches and, under DDP, over ranks.

A subclass declares its state tensors once with :meth:`CumulativeMetric.add_state`, adds each
batch's increments with :meth:`CumulativeMetric.accumulate` in its ``update`` and reads the totals
with :meth:`CumulativeMetric.state` in its ``compute``. The base provides ``reset()`` and a
collective ``sync()``, so every metric merges across ranks the same way, through
:func:`all_reduce_sum`, the one all-reduce of the project (the trainer uses it too).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["CumulativeMetric", "MeanMetric", "all_reduce_sum", "distributed_ready"]


def distributed_ready() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (collectives would run)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place and return it; a no-op without a process group.

    NCCL only reduces CUDA tensors, so under NCCL a CPU tensor travels through this rank's
    current CUDA device and the sum is copied back into it.
    """
    if not distributed_ready():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        buf = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        tensor.copy_(buf)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class CumulativeMetric(ABC):
    """Base of metrics accumulated as sums: declared state tensors, ``reset()`` and a DDP ``sync()``.

    Subclasses call :meth:`add_state` in ``__init__``, :meth:`accumulate` in ``update`` and read
    :meth:`state` in ``compute``. ``sync()`` is a collective (every rank calls it) that sums each
    state over the ranks; the local sums are kept and reported until the next ``sync()``, so
    ``sync()`` twice equals once and ``update()`` + ``sync()`` again never double-counts.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, Tensor] = {}
        self._local: dict[str, Tensor] = {}
        self._synced: dict[str, Tensor] | None = None
        self.update_count = 0

    def add_state(self, name: str, default: Tensor) -> None:
        """Declare a state tensor summed over batches and ranks; ``reset()`` restores ``default``."""
        if name in self._defaults:
            raise ValueError(f"state {name!r} is already declared")
        self._defaults[name] = default.detach().clone()
        self._local[name] = default.detach().clone()

    def state(self, name: str) -> Tensor:
        """Current total of state ``name``: the all-ranks sum if ``sync()`` ran since the last update."""
        return (self._synced if self._synced is not None else self._local)[name]

    def state_names(self) -> Iterator[str]:
        """Names of the declared states, in declaration order (the same on every rank)."""
        return iter(self._defaults)

    @torch.no_grad()
    def accumulate(self, **increments: Tensor) -> None:
        """Add one batch's increments to the named states (cast to each state's dtype and device).

        Call it once per ``update``: it counts the update and drops the result of the last ``sync()``.
        """
        for name, inc in increments.items():
            if name not in self._local:
                raise KeyError(f"unknown state {name!r}; declared: {list(self._local)}")
            local = self._local[name]
            # out of place: a state made under torch.inference_mode may be updated outside it
            self._local[name] = local + inc.detach().to(local.device, local.dtype)
        self._synced = None
        self.update_count += 1

    def to(self, device: torch.device | str) -> CumulativeMetric:
        """Move every state (and its reset default) to ``device``; returns ``self``."""
        self._defaults = {k: v.to(device) for k, v in self._defaults.items()}
        self._local = {k: v.to(device) for k, v in self._local.items()}
        if self._synced is not None:
            self._synced = {k: v.to(device) for k, v in self._synced.items()}
        return self

    def reset(self) -> None:
        """Forget everything accumulated: every state goes back to its declared default."""
        self._local = {k: v.clone() for k, v in self._defaults.items()}
        self._synced = None
        self.update_count = 0

    def sync(self) -> None:
        """Sum every state over the ranks (a collective; a no-op unless torch.distributed is initialised).

        States of one dtype travel together, so a metric costs one all-reduce per state dtype.
        """
        if not distributed_ready():
            return
        synced: dict[str, Tensor] = {}
        by_dtype: dict[torch.dtype, list[str]] = {}
        for name, value in self._local.items():
            by_dtype.setdefault(value.dtype, []).append(name)
        for names in by_dtype.values():
            device = self._local[names[0]].device
            flat = all_reduce_sum(torch.cat([self._local[n].reshape(-1).to(device) for n in names]))
            for n, chunk in zip(names, flat.split([self._local[n].numel() for n in names]), strict=True):
                synced[n] = chunk.reshape(self._local[n].shape).to(self._local[n].device)
        self._synced = synced

    @abstractmethod
    def update(self, *args: object, **kwargs: object) -> None:
        """Add one batch (subclasses validate it, then call :meth:`accumulate` once)."""

    @abstractmethod
    def compute(self) -> object:
        """The metric over everything accumulated (subclasses read :meth:`state`)."""


class MeanMetric(CumulativeMetric):
    """Weighted mean ``Σ w·v / Σ w`` of values over all updates (and ranks after ``sync()``).

    E.g. a validation loss: ``update(batch_mean_loss, weight=batch_size)`` per batch, then
    ``compute()`` is the per-sample mean over the dataset. Sums are float64; ``compute()`` is NaN
    when the total weight is 0.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.device = None if device is None else torch.device(device)
        self.add_state("sum", torch.zeros((), dtype=torch.float64, device=self.device))
        self.add_state("weight", torch.zeros((), dtype=torch.float64, device=self.device))

    def update(self, value: Tensor | float, weight: Tensor | float = 1.0) -> None:
        """Add ``value`` (a number or a tensor of values) with ``weight`` (broadcast against it).

        The sums live on ``device`` (default: that of the first tensor ``value``), so adding a
        CUDA loss never waits for the GPU; only ``compute()`` reads the result back.
        """
        if self.device is None and self.update_count == 0 and isinstance(value, Tensor):
            self.to(value.device)
        device = self.state("sum").device
        v = torch.as_tensor(value, dtype=torch.float64, device=device).detach()
        w = torch.as_tensor(weight, dtype=torch.float64, device=device).detach()
        v, w = torch.broadcast_tensors(v, w)
        self.accumulate(sum=(v * w).sum(), weight=w.sum())

    def compute(self) -> float:
        """The weighted mean (NaN if nothing was added)."""
        total, weight = float(self.state("sum")), float(self.state("weight"))
        return total / weight if weight != 0 else math.nan
