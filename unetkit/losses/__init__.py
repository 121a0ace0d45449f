"""Segmentation losses: cross-entropy, BCE, Dice, Tversky, focal, combinations and deep supervision.

Modules: ``pixel`` (CE, BCE, focal), ``overlap`` (Dice, Tversky), ``combine`` (weighted sums, deep
supervision), ``build`` (:func:`build_loss` by name) and ``_common`` (input checks, target and
ignore handling, reductions).

Conventions shared by every loss here:

* Inputs are raw logits ``(N, C, *spatial)`` (2-D ``(N, C, H, W)`` or 3-D volumes alike).
* Targets are class indices ``(N, *spatial)`` in ``"multiclass"`` mode (``(N, 1, *spatial)`` is
  accepted and squeezed), or ``{0, 1}`` maps shaped like the logits in ``"binary"`` (one logit
  channel; ``(N, *spatial)`` is accepted) and ``"multilabel"`` modes.
* ``ignore_index`` pixels are left out of numerators and denominators alike.
* Reductions are computed in float32 (logits are cast with ``.float()``), so the losses are safe
  under ``torch.autocast`` with float16/bfloat16.
* NaN/Inf logits and out-of-range targets raise a ``ValueError`` that names the bad value, instead
  of a device-side assert or a silent NaN loss. The check costs one ``isfinite`` pass over the
  logits and one ``aminmax`` pass over the target.
"""

from .build import LOSS_NAMES, build_loss
from .combine import CombinedLoss, DeepSupervisionLoss, resize_target_nearest
from .overlap import DiceLoss, TverskyLoss
from .pixel import BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss

__all__ = [
    "BCEWithLogitsLoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "LOSS_NAMES",
    "TverskyLoss",
    "build_loss",
    "resize_target_nearest",
]
