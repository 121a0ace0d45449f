"""What the model's logits mean: the one place that turns them into labels or probabilities.

A UNet returns raw logits ``(N, C, *spatial)``. With ``C >= 2`` they are per-class scores (softmax,
argmax); with ``C == 1`` the model is binary (sigmoid, ``logit > 0``). Training's validation, the metrics,
``predict`` (checkpoint or ONNX) and the INT8 report all read logits through these two functions.
"""

from __future__ import annotations

import torch


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class labels ``(N, *spatial)`` int64: the first maximum over channels, or ``logit > 0`` for one channel.

    (``torch.max(...).indices`` returns argmax's first-maximum index and is much faster than ``argmax`` on
    CPU.)
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return torch.max(logits, dim=1).indices


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float32 probabilities ``(N, C, *spatial)``: softmax over classes, or sigmoid for one channel."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def probs_to_labels(probs: torch.Tensor) -> torch.Tensor:
    """Class labels from :func:`logits_to_probs`' output (``p > 0.5`` for one channel), as for logits."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > 0.5).long()
    return torch.max(probs, dim=1).indices
