"""Exported models: ONNX export with unetkit metadata, running them, and INT8 quantization checked on data.

One module per job:

* :mod:`~unetkit.export.metadata`: the class names, colours, normalisation and model config stored in an
  ``.onnx`` file (:func:`onnx_metadata`, :func:`read_onnx_metadata`, ...).
* :mod:`~unetkit.export.runtime`: :func:`ort_session`, the one ONNX Runtime session builder, and
  :class:`OnnxModel`, an exported model usable wherever ``predict`` takes a model.
* :mod:`~unetkit.export.onnx`: :func:`export_onnx`, verified against PyTorch before it writes.
* :mod:`~unetkit.export.quantize`: ONNX Runtime static INT8 (:func:`quantize_int8`) and the fp32-vs-INT8
  report (:func:`compare_onnx`, :class:`QuantReport`).
* :mod:`~unetkit.export.pt2e`: PyTorch-native static INT8 (:func:`quantize_pt2e`, needs torchao).

``onnx`` and ``onnxruntime`` are imported only when a function needs them.
"""

from __future__ import annotations

from .metadata import METADATA_KEYS, onnx_metadata, parse_metadata, read_onnx_metadata, set_metadata
from .onnx import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx
from .pt2e import quantize_pt2e
from .quantize import CONV_OPS, QuantReport, compare_onnx, quantize_int8, quantized_node_counts
from .runtime import OnnxModel, ort_session

__all__ = [
    "CONV_OPS", "INPUT_NAME", "METADATA_KEYS", "OUTPUT_NAME", "ExportError", "OnnxModel", "QuantReport",
    "compare_onnx", "export_onnx", "onnx_metadata", "ort_session", "parse_metadata", "quantize_int8",
    "quantize_pt2e", "quantized_node_counts", "read_onnx_metadata", "set_metadata",
]
