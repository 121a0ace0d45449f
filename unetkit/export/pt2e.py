"""PyTorch-native static INT8 (PT2E with the x86 Inductor quantizer), the alternative to ONNX Runtime's."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .onnx import quiet_exporter


def quantize_pt2e(model: nn.Module, calibration_images: Iterable[torch.Tensor]) -> nn.Module:
    """PyTorch-native static INT8: PT2E with the x86 Inductor quantizer (needs the ``torchao`` package).

    ``torch.ao.quantization.quantize_pt2e`` moved to torchao (it is gone from torch 2.14), so this
    imports ``torchao.quantization.pt2e``. The model is captured with ``torch.export`` (batch, height
    and width dynamic), observed on ``calibration_images`` (normalised ``(C, H, W)``), and converted to a
    graph of quantize/dequantize ops around float convs. Eager calls of the result simulate INT8 (slow);
    ``torch.compile`` it (ideally with ``torch._inductor.config.freezing = True``) to get oneDNN INT8
    kernels. Returns the converted module (CPU).
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as e:
        raise ImportError("PT2E quantization needs torchao (torch 2.14 moved quantize_pt2e there): "
                          "pip install torchao; or use quantize_int8 (ONNX Runtime)") from e
    images = [im if im.ndim == 4 else im[None] for im in calibration_images]
    if not images:
        raise ValueError("quantize_pt2e needs at least one calibration image")
    model = model.to("cpu").eval()
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    example = images[0][:1].float().repeat(2, 1, 1, 1)  # batch 2: a batch-1 example would pin the batch size
    with quiet_exporter():
        graph = torch.export.export(model, (example,), dynamic_shapes=(dims,)).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in images:
            prepared(x.float())
    return convert_pt2e(prepared)
