"""How a trained model runs fastest without changing its masks: conv+BN folding, memory layout, compile.

The choices are measured (docs/performance.md); ``unetkit bench --suite predict`` re-measures them on your
machine.
"""

from __future__ import annotations

import torch

#: Whether channels_last pays off, per device type and phase, from the measurements in docs/performance.md.
CHANNELS_LAST = {("cpu", "train"): True, ("cpu", "infer"): True, ("cuda", "train"): True,
                 ("cuda", "infer"): True}


def preferred_channels_last(device: str | torch.device, phase: str = "train") -> bool:
    """Whether to run in channels_last on ``device`` for ``phase`` (``"train"`` or ``"infer"``).

    Both are measured (docs/performance.md): channels_last is faster for training and inference on the
    CPU, and on an NVIDIA H200 1.5-1.8x faster for training and 1.15-1.4x for inference.
    ``unetkit bench --channels-last both`` re-measures it on your machine.
    """
    return CHANNELS_LAST.get((torch.device(device).type, phase), False)


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` asking inductor for ``freezing`` (weights as constants: conv+BN folding, conv+ReLU
    fusion, oneDNN weight prepacking on CPU). Only for models that no longer train.

    Known limit: Dynamo reads ``torch._inductor.config.freezing`` when it traces, before this per-call
    option applies, so with torch 2.14 the graph is not frozen (BN stays unfolded unless fused first).
    """
    return torch.compile(model, options={"freezing": True})  # type: ignore[return-value]


def prepare_inference(model: torch.nn.Module, example: torch.Tensor, fuse: bool = True,
                      channels_last: bool | None = None,
                      compile: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    """Return ``(model, example)`` set up for fast inference: eval, conv+BN folded, layout, compiled.

    ``channels_last=None`` uses :func:`preferred_channels_last` for the example's device. Call the result
    under ``torch.inference_mode()``; feed it inputs in the returned example's memory format. The model is
    changed in place (fusing is irreversible), so pass a copy to keep a trainable one.
    """
    from ..models.fuse import fuse_conv_bn

    model.eval()
    if fuse:
        fuse_conv_bn(model, example)
    cl = preferred_channels_last(example.device, "infer") if channels_last is None else channels_last
    if cl and example.ndim == 4:  # channels_last is a 2D layout (volumes keep theirs)
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    else:
        example = example.contiguous()
    return (compile_for_inference(model) if compile else model), example
