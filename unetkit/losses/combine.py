"""Loss combinations: weighted sums of losses and deep supervision over multi-scale outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["CombinedLoss", "DeepSupervisionLoss", "resize_target_nearest"]


class CombinedLoss(nn.Module):
    """Weighted sum ``Σ w_i · loss_i(logits, target)``, e.g. ``0.5·CE + 0.5·Dice``.

    ``weights`` defaults to equal weights summing to 1.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(losses) == 0:
            raise ValueError("CombinedLoss needs at least one loss")
        if weights is None:
            weights = [1.0 / len(losses)] * len(losses)
        if len(weights) != len(losses):
            raise ValueError(f"got {len(losses)} losses but {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = None
        for w, fn in zip(self.weights, self.losses, strict=True):
            term = w * fn(logits, target)
            total = term if total is None else total + term
        return total


def resize_target_nearest(target: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the trailing ``len(size)`` axes of a label/mask tensor.

    Pure index sampling (pixel-centre aligned, like ``F.interpolate(mode="nearest-exact")``):
    output values are a subset of the input values and the dtype is kept, so class indices stay
    integers and ``ignore_index`` survives.
    """
    size = tuple(int(s) for s in size)
    k = len(size)
    if target.ndim < k:
        raise ValueError(f"cannot resize a {target.ndim}-D target to a {k}-D size")
    out = target
    for d, n_out in enumerate(size):
        axis = target.ndim - k + d
        n_in = target.shape[axis]
        if n_in == n_out:
            continue
        idx = ((2 * torch.arange(n_out, device=target.device) + 1) * n_in) // (2 * n_out)
        out = out.index_select(axis, idx)
    return out


class DeepSupervisionLoss(nn.Module):
    """Weighted loss over ``[main, aux_1, aux_2, ...]`` outputs of a deeply supervised UNet.

    ``main`` is at full resolution and ``aux_i`` at decreasing resolutions. Each output is scored
    with ``loss`` against the target resized with :func:`resize_target_nearest` to its spatial
    size (labels stay exact integers). Default weights are ``1 / 2**i`` (``i = 0`` for main),
    normalised to sum to 1. A single tensor is simply ``loss(outputs, target)``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    @staticmethod
    def default_weights(n: int) -> list[float]:
        """``1/2**i`` for ``i < n``, normalised to sum to 1."""
        raw = [0.5**i for i in range(n)]
        s = sum(raw)
        return [w / s for w in raw]

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            return self.loss(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("DeepSupervisionLoss got an empty list of outputs")
        weights = self.weights if self.weights is not None else self.default_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"got {len(outputs)} outputs but {len(weights)} weights")
        total = None
        for w, out in zip(weights, outputs, strict=True):
            size = out.shape[2:]
            same = tuple(target.shape[-len(size):]) == tuple(size)
            t = target if same else resize_target_nearest(target, size)
            term = w * self.loss(out, t)
            total = term if total is None else total + term
        return total
