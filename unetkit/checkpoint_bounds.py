"""Sanity bounds on a checkpoint's description of its model, checked before the model is built.

A checkpoint is read weights-only, but its ``model_config`` and ``data`` are plain numbers that
:meth:`unetkit.UNet.from_config` and inference trust: an edited or damaged file claiming a million
classes used to end in a MemoryError minutes later. :func:`check_checkpoint` compares those numbers with
fixed bounds and with the checkpoint's own tensors (the head's outputs must be its classes, the plain
encoder's first conv must take its input channels), in well under a second, and raises a one-line
:class:`unetkit.checkpoint.CheckpointError` naming the file, the value and the fix.
"""

from __future__ import annotations

from typing import Any

#: Bounds far beyond any model unetkit trains; a value past one is a damaged or edited file.
MAX_CLASSES = 1024
MAX_IN_CHANNELS = 1024
MAX_BASE_CHANNELS = 1024
MAX_DEPTH = 12
MAX_DECODER_CHANNELS = 8192
MAX_PATCH_SIDE = 16384
FIX = "the file is damaged or was edited; use the checkpoint 'unetkit train' wrote, or train again"


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _data_view(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """What the checkpoint says about its data: the whole ``data`` of earlier versions, else the facts gathered
    from ``classes``, ``plan`` and ``model_config`` (where each is stored once now)."""
    if "data" in ckpt:
        return ckpt["data"]
    mc, classes, plan = ckpt.get("model_config"), ckpt.get("classes"), ckpt.get("plan")
    if not all(isinstance(d, dict) for d in (mc, classes, plan)):
        return None
    assert isinstance(mc, dict) and isinstance(classes, dict) and isinstance(plan, dict)
    return {"num_classes": mc.get("num_classes"), "in_channels": mc.get("in_channels"),
            "class_names": classes.get("names"), "class_colors": classes.get("colors"),
            "patch_size": plan.get("patch_size")}


def check_checkpoint(ckpt: dict[str, Any]) -> None:
    """Refuse a checkpoint whose ``model_config``/``data`` are out of bounds or disagree with its tensors.

    ``ckpt`` is the dict :func:`unetkit.checkpoint.read_checkpoint` returns (with ``path``). Raises
    ``CheckpointError``; returns nothing when the checkpoint is plausible.
    """
    from .checkpoint import CheckpointError
    from .data.classes import MAX_CLASS_NAME

    path = ckpt.get("path", "checkpoint")

    def refuse(what: str) -> None:
        raise CheckpointError(f"{path}: {what}; {FIX}")

    mc, data, state = ckpt.get("model_config"), _data_view(ckpt), ckpt.get("model")
    if not isinstance(mc, dict) or not isinstance(data, dict) or not isinstance(state, dict):
        refuse("model_config, data (or classes and plan) and model must be mappings")
    assert isinstance(mc, dict) and isinstance(data, dict) and isinstance(state, dict)
    bounds = {"num_classes": (1, MAX_CLASSES), "in_channels": (1, MAX_IN_CHANNELS)}
    for source, d in (("model_config", mc), ("data", data)):
        for name, (low, high) in bounds.items():
            if not _int_in(d.get(name), low, high):
                refuse(f"{source} {name} is {d.get(name)!r}, outside {low}..{high}")
    for name in ("num_classes", "in_channels"):
        if mc[name] != data[name]:
            refuse(f"model_config says {name} {mc[name]} but data says {data[name]}")
    for name, high in (("base_channels", MAX_BASE_CHANNELS), ("depth", MAX_DEPTH)):
        if mc.get(name) is not None and not _int_in(mc.get(name), 1, high):
            refuse(f"model_config {name} is {mc.get(name)!r}, outside 1..{high}")
    dec = mc.get("decoder_channels")
    if isinstance(dec, (list, tuple)) and (len(dec) > MAX_DEPTH
                                           or not all(_int_in(c, 1, MAX_DECODER_CHANNELS) for c in dec)):
        refuse(f"model_config decoder_channels {list(dec)[:MAX_DEPTH + 1]} is not at most {MAX_DEPTH} widths "
               f"of 1..{MAX_DECODER_CHANNELS}")
    names = data.get("class_names")
    n = mc["num_classes"]
    if not isinstance(names, list) or len(names) > max(n, 2):
        refuse(f"data class_names must be a list of at most {max(n, 2)} names")
    assert isinstance(names, list)
    if any(not isinstance(s, str) or len(s) > MAX_CLASS_NAME for s in names):
        refuse(f"a class name is not text of at most {MAX_CLASS_NAME} characters")
    colors = data.get("class_colors")
    if not isinstance(colors, list) or len(colors) > max(n, 2):
        refuse(f"data class_colors must be a list of at most {max(n, 2)} colours")
    patch = data.get("patch_size")
    if patch is not None and (not isinstance(patch, (list, tuple)) or len(patch) not in (2, 3)
                              or not all(_int_in(s, 1, MAX_PATCH_SIDE) for s in patch)):
        refuse(f"data patch_size {patch!r} is not 2 or 3 sides of 1..{MAX_PATCH_SIDE} pixels")
    head = state.get("head.weight")
    if head is None or not hasattr(head, "shape") or head.dim() < 1:
        refuse("no head.weight tensor in its model")
    if int(head.shape[0]) != n:
        refuse(f"model_config says num_classes {n} but its head has {int(head.shape[0])} outputs")
    if mc.get("encoder", "plain") == "plain":
        first = state.get("encoder.stages.0.0.weight")
        if first is None or not hasattr(first, "shape") or first.dim() < 2:
            refuse("no first encoder conv (encoder.stages.0.0.weight) in its plain model")
        if int(first.shape[1]) != mc["in_channels"]:
            refuse(f"model_config says in_channels {mc['in_channels']} but its first conv takes "
                   f"{int(first.shape[1])}")
        if mc.get("base_channels") is not None and int(first.shape[0]) != mc["base_channels"]:
            refuse(f"model_config says base_channels {mc['base_channels']} but its first conv has "
                   f"{int(first.shape[0])} outputs")
        depth = mc.get("depth")
        stages = {k.split(".")[2] for k in state if k.startswith("encoder.stages.")}
        if depth is not None and len(stages) != depth:
            refuse(f"model_config says depth {depth} but its encoder has {len(stages)} stages")
