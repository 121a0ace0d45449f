"""Process-group setup for DistributedDataParallel runs launched by ``torchrun`` (or ``--devices N``).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; when they
are present, :func:`init_distributed` joins the group (NCCL on CUDA, gloo on CPU) and picks this
process's device. Without them the run is a plain single process.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..device import resolve_device
from ..metrics.base import all_reduce_sum as all_reduce_sum  # re-exported: the project's one all-reduce


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes, its device and whether it joined a
    process group (launched by torchrun, even as its only process: then DDP and the collectives run as
    they would with more, which is how the NCCL path is exercised on a one-GPU machine)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    joined: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.joined


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...), or return a
    single-process ``DistInfo`` when not launched by torchrun.

    A collective that waits longer than ``timeout_s`` (e.g. because another rank died) raises instead of
    hanging; torchrun then stops the remaining ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:  # not launched by torchrun
        return DistInfo(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict = {"device_id": dev} if backend == "nccl" else {}
        timeout = timedelta(seconds=timeout_s)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun restarted the workers and reuses its store: the failed attempt's keys are still there,
            # and gloo would connect to the dead workers' addresses. One key prefix per attempt keeps them apart.
            agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                                  timeout=timeout)
            kwargs.update(store=dist.PrefixStore(f"unetkit/attempt_{restart}", agent), rank=rank, world_size=world)
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistInfo(rank, local_rank, world, dev, joined=True)


def cleanup_distributed() -> None:
    """Leave the process group, and free now, not at interpreter exit, what still holds it.

    A finished ``Trainer`` sits in reference cycles that only the garbage collector frees, and with it the DDP
    model, whose reducer holds the gloo process group and its threads. Left to interpreter teardown, that
    teardown was seen to abort a rank ("terminate called without an active exception") after a run that had
    completed; collecting here frees them while the runtime is whole.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def launch_local(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m unetkit <args>`` in ``nproc`` local processes through torchrun; return its exit code."""
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "unetkit", *args]
    child = subprocess.Popen(cmd)
    stopped: list[int] = []

    def forward(signum: int, frame: object) -> None:  # SIGTERM/SIGINT reach torchrun, which stops every rank
        stopped.append(signum)
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:  # each rank wrote its checkpoint and said how to resume; torchrun's own exit code says less
        return 143 if stopped[0] == signal.SIGTERM else 130
    return code
