"""Choosing the device: the one resolver used by training, evaluation, prediction and benchmarks."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; otherwise ``name`` as given.

    ``"cuda"`` without an index means GPU ``local_rank`` (the process's GPU under torchrun), and it becomes
    the current CUDA device. Raises ``ValueError`` (one line, naming the fix) for an unusable name.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device
