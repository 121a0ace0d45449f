"""Reading pretrained encoder weights: torchvision weight enums or a local ``.pth``/``.safetensors`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class WeightsError(ValueError):
    """A weights file or name that cannot be used; the message names the file and the fix."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (``.safetensors``, or a ``torch.save`` file loaded weights-only).

    A checkpoint that wraps the weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: encoder weights file not found; pass an existing .pth/.safetensors path, "
                           "'imagenet' or None")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one clear message
        raise WeightsError(f"{p}: cannot read weights ({type(e).__name__}: {e}); is it a state dict?") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{p}: not a state dict of tensors")
    return dict(sd)


def torchvision_state_dict(weights_enum: Any) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum value, through torch hub's cache (downloads if absent)."""
    try:
        return weights_enum.get_state_dict(progress=True)
    except Exception as e:  # noqa: BLE001 - network or cache failures become one clear message
        raise WeightsError(
            f"cannot fetch torchvision weights {weights_enum} ({type(e).__name__}: {e}); download them once "
            "with network access, or pass a local state-dict path as encoder_weights"
        ) from e


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys that start with ``prefix`` and remove it; return ``sd`` unchanged if none do."""
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd
