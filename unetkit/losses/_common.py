"""Input checks and target handling shared by every loss: logits validation, ignore masks, reductions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Mode = Literal["binary", "multiclass", "multilabel"]
MODES = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")


def check_logits(logits: Tensor) -> None:
    """Raise if ``logits`` is not a floating ``(N, C, *spatial)`` tensor of finite values.

    A NaN/Inf check here names the problem (a diverged model) instead of returning a NaN loss.
    """
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.ndim < 3:
        raise ValueError(f"logits must be shaped (N, C, *spatial), got shape {tuple(logits.shape)}")
    # One float32 sum finds any NaN or Inf (they make it non-finite) at a twentieth of the cost of an
    # elementwise isfinite; only then are they counted. Finite logits whose sum overflows pass.
    if not bool(torch.isfinite(logits.sum(dtype=torch.float32))):
        n_nan = int(torch.isnan(logits).sum())
        n_inf = int(torch.isinf(logits).sum())
        if n_nan == n_inf == 0:
            return
        raise ValueError(
            f"logits contain {n_nan} NaN and {n_inf} Inf values (shape {tuple(logits.shape)}); "
            "the model diverged or its input contains NaN/Inf"
        )


def class_target(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """Validate a class-index target for ``logits`` and return it with its valid-pixel mask.

    Returns ``(target_clean, valid)`` where ignored pixels of ``target_clean`` are set to 0 (a
    valid index, so ``gather``/``one_hot`` are safe) and ``valid`` is ``None`` when nothing can
    be ignored.
    """
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise TypeError(f"multiclass target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}; "
            "expected (N, *spatial) class indices"
        )
    num_classes = logits.shape[1]
    valid = None if ignore_index is None else target != ignore_index
    clean = target.long() if valid is None else target.long().masked_fill(~valid, 0)
    if clean.numel():
        lo, hi = torch.aminmax(clean)
        lo_v, hi_v = (int(v) for v in torch.stack([lo, hi]).tolist())
        if lo_v < 0 or hi_v >= num_classes:
            bad = hi_v if hi_v >= num_classes else lo_v
            raise ValueError(
                f"target contains class {bad} but the model has {num_classes} classes "
                f"(valid targets are 0..{num_classes - 1}, ignore_index={ignore_index})"
            )
    return clean, valid


def binary_target(
    logits: Tensor, target: Tensor, ignore_index: int | float | None
) -> tuple[Tensor, Tensor | None]:
    """Validate a ``{0, 1}`` (or soft ``[0, 1]``) target for binary/multilabel logits.

    Returns ``(target_float32, valid)``; ignored pixels of the target are set to 0.
    """
    if target.ndim == logits.ndim - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}; "
            "binary/multilabel targets are {0,1} maps shaped like the logits"
        )
    valid = None if ignore_index is None else target != ignore_index
    t = target.float()
    if valid is not None:
        t = t.masked_fill(~valid, 0.0)
    if t.numel():
        lo, hi = (float(v) for v in torch.stack(list(torch.aminmax(t))).tolist())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN targets
            bad = lo if not lo >= 0.0 else hi
            raise ValueError(
                f"target contains value {bad:g} but binary/multilabel targets must lie in [0, 1] "
                f"(ignore_index={ignore_index})"
            )
    return t, valid


def masked_mean(loss: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``loss`` over valid elements; 0 (with a connected graph) when nothing is valid."""
    if valid is None:
        return loss.mean() if loss.numel() else loss.sum()
    v = valid.to(loss.dtype)
    return (loss * v).sum() / v.sum().clamp_min(1.0)


def reduce_loss(loss: Tensor, valid: Tensor | None, reduction: str) -> Tensor:
    """Apply ``reduction`` ("mean" over valid elements, "sum", or "none" with ignored elements zeroed)."""
    if reduction == "mean":
        return masked_mean(loss, valid)
    if valid is not None:
        loss = loss * valid.to(loss.dtype)
    return loss.sum() if reduction == "sum" else loss
