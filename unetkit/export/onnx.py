"""ONNX export: one self-contained ``.onnx`` file, checked against PyTorch before it is written.

:func:`export_onnx` writes dynamic batch/height/width and the unetkit metadata
(:mod:`unetkit.export.metadata`), then runs the file in ONNX Runtime on a few input sizes and refuses
one whose output differs from PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..checkpoint import DataInfo
from .metadata import onnx_metadata, set_metadata
from .runtime import ort_session

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """An exported model that does not reproduce the original closely enough."""


#: ONNX opsets each exporter writes for a UNet (measured with torch 2.14: the torch.export exporter writes 18
#: and converts down to 16 at the lowest, silently keeping 18 below that; the TorchScript one needs 9 for
#: resizing). The highest is what this torch's exporters declare, at most what ONNX Runtime is verified on.
MIN_OPSET = {True: 16, False: 9}
MAX_VERIFIED_OPSET = 23


def supported_opsets(dynamo: bool = True) -> range:
    """The opsets :func:`export_onnx` can write with the torch.export (``dynamo``) or TorchScript exporter."""
    try:
        from torch.onnx import _constants

        high = int(_constants.ONNX_MAX_OPSET if dynamo else _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        high = 20
    return range(MIN_OPSET[dynamo], min(high, MAX_VERIFIED_OPSET) + 1)


def check_opset(opset: int, dynamo: bool = True) -> None:
    """Refuse an opset the chosen exporter cannot write (``ValueError`` naming ``--opset`` and the range)."""
    ok = supported_opsets(dynamo)
    if opset not in ok:
        which = "" if dynamo else " with --legacy-exporter"
        raise ValueError(f"--opset {opset}: the exporter writes opsets {ok.start}..{ok.stop - 1}{which}; "
                         f"choose one of those")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' and quantizers' progress prints and notices (not their errors)."""
    # The root logger too: onnxruntime.quantization logs "Inference failed ..." notices (whole protos) there.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _to_proto(model: nn.Module, example: torch.Tensor, opset: int, dynamo: bool) -> Any:
    """Export ``model`` to an in-memory ``onnx.ModelProto`` with dynamic batch and spatial sizes."""
    import onnx

    names = ("depth", "height", "width")[-(example.dim() - 2):]
    axes = {0: "batch", **{2 + i: n for i, n in enumerate(names)}}
    with quiet_exporter():
        if dynamo:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                            dynamic_shapes=(axes,), input_names=[INPUT_NAME],
                                            output_names=[OUTPUT_NAME], external_data=False, verbose=False)
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
        return onnx.load_from_string(buf.getvalue())


def export_onnx(model: nn.Module, data_info: DataInfo, path: str | Path, opset: int = 17, *,
                dynamo: bool = True, check_shapes: Sequence[tuple[int, ...]] | None = None,
                atol: float = 1e-4, verbose: bool = True) -> float:
    """Export ``model`` to ``path`` (one file, written atomically) and return the max abs logit difference.

    Inputs are named ``image`` (N, C, H, W) and outputs ``logits`` (N, num_classes, H, W), with N, H, W
    dynamic. ``dynamo=True`` uses the ``torch.export`` based exporter (opset 18 internally, converted to
    ``opset``); ``dynamo=False`` the TorchScript tracer; both give the same graph for a UNet because the
    model's size matching does not branch on shapes while exporting. The file is verified with ONNX
    Runtime on every ``(N, H, W)`` of ``check_shapes`` (default ``(1, 128, 128), (2, 97, 131)``; for a 3D
    model, ``spatial_dims=3`` in its config, inputs are ``(N, C, D, H, W)`` and the shapes ``(N, D, H, W)``,
    default ``(1, 32, 32, 32), (1, 37, 50, 45)``): a max abs difference to PyTorch of ``atol`` times
    the largest logit (at least 1) or more raises :class:`ExportError` and nothing is written.
    """
    import onnx

    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        config = getattr(model, "config", None)
        nd = getattr(config, "spatial_dims", 2)
        if check_shapes is None:
            check_shapes = ((1, 128, 128), (2, 97, 131)) if nd == 2 else ((1, 32, 32, 32), (1, 37, 50, 45))
        example = torch.randn(1, data_info.in_channels, *(64 if nd == 2 else 32,) * nd, device=device)
        proto = _to_proto(model, example, opset, dynamo)
        written = next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")), opset)
        if written != opset:  # an exporter that fell back to another opset: say so rather than mislabel it
            raise ExportError(f"{path}: the exporter wrote opset {written}, not the {opset} asked for; not "
                              f"written. Use --opset {written}")
        set_metadata(proto, onnx_metadata(data_info, config.to_dict() if config is not None else None))
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
        sess = ort_session(data)
        gen = torch.Generator().manual_seed(0)
        diff, scale = 0.0, 1.0
        for n, *spatial in check_shapes:
            x = torch.randn(n, data_info.in_channels, *spatial, generator=gen)
            with torch.inference_mode():
                ref = model(x.to(device)).float().cpu().numpy()
            out = sess.run(None, {INPUT_NAME: x.numpy()})[0]
            if out.shape != ref.shape:
                raise ExportError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for input {tuple(x.shape)}")
            diff = max(diff, float(np.abs(out - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    finally:
        model.train(was_training)
    shapes = ", ".join("x".join(str(v) for v in (n, data_info.in_channels, *sp)) for n, *sp in check_shapes)
    if not diff < atol * scale:  # relative to the logits' size: fp32 keeps about 7 significant digits
        raise ExportError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (>= {atol:g} x the "
                          f"largest logit {scale:.3g}) "
                          f"on {shapes}; not written. Try dynamo={not dynamo} or another opset")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    if verbose:
        print(f"wrote {path} (opset {opset}); ONNX Runtime vs PyTorch max abs diff {diff:.2e} on {shapes}")
    return diff
