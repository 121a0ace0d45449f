"""FLOPs and parameters of a model, counted by ``torch.utils.flop_counter`` (a multiply-add counts two).

Forward FLOPs per image (eval mode) and the FLOPs of one whole training step (forward and backward of the
benchmark's loss): the numerators of every achieved GFLOP/s the benchmarks report.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def main_output(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The main logits of a model's output (deep supervision returns ``[main, aux_1, ...]`` in training)."""
    return out[0] if isinstance(out, list | tuple) else out


def train_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The benchmark's training loss: cross-entropy, or binary cross-entropy for a one-channel model."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on ``x`` (FlopCounterMode; the mode is restored)."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was)
    return int(counter.get_total_flops())


def count_train_flops(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (cross-entropy loss); gradients are cleared after."""
    was = model.training
    model.train()
    try:
        with FlopCounterMode(display=False) as counter:
            train_loss(main_output(model(x)), target).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return int(counter.get_total_flops())
