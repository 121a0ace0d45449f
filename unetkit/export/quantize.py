"""Static INT8 quantization with ONNX Runtime, checked on real data against the fp32 model.

:func:`quantize_int8` runs ONNX Runtime's static post-training quantization (QDQ, per-channel weights,
activations calibrated on real normalised images); :func:`compare_onnx` reports mIoU, argmax agreement
and latency of fp32 vs INT8 (:class:`QuantReport`); :func:`quantized_node_counts` counts which
convolutions of a graph run in INT8.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..models.outputs import logits_to_labels
from ..timing import median_time
from .metadata import read_onnx_metadata, set_metadata
from .onnx import quiet_exporter
from .runtime import ort_session

#: Op types whose QDQ pairs ``quantize_int8`` checks for (the convolutions of a UNet).
CONV_OPS = ("Conv", "ConvTranspose")


@dataclass
class QuantReport:
    """What :func:`quantize_int8` did and, with evaluation data, how the INT8 model compares with fp32."""

    fp32_path: str
    int8_path: str
    quant_format: str = "qdq"
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    calibrate_method: str = "minmax"
    head_fp32: bool = True
    convs_float: int = 0
    convs_qdq: int = 0
    convs_qlinear: int = 0
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    miou_fp32: float | None = None
    miou_int8: float | None = None
    agreement: float | None = None
    latency_fp32_ms: float | None = None
    latency_int8_ms: float | None = None
    eval_images: int = 0
    per_class_iou: dict[str, list[float]] = field(default_factory=dict)

    @property
    def miou_drop_points(self) -> float | None:
        """fp32 mIoU minus INT8 mIoU, in percentage points."""
        if self.miou_fp32 is None or self.miou_int8 is None:
            return None
        return 100.0 * (self.miou_fp32 - self.miou_int8)

    @property
    def speedup(self) -> float | None:
        """fp32 latency divided by INT8 latency (above 1: INT8 is faster)."""
        if not self.latency_fp32_ms or not self.latency_int8_ms:
            return None
        return self.latency_fp32_ms / self.latency_int8_ms

    def to_dict(self) -> dict[str, Any]:
        """All fields plus the derived ``miou_drop_points`` and ``speedup`` (JSON-ready)."""
        return {**asdict(self), "miou_drop_points": self.miou_drop_points, "speedup": self.speedup}

    def table(self) -> str:
        """A small markdown table: mIoU, agreement and latency of fp32 vs INT8."""
        def f(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        rows = [
            "| model | mIoU | argmax agreement | median latency (ms) |",
            "|---|---|---|---|",
            f"| fp32 | {f(self.miou_fp32, '.4f')} | 1 | {f(self.latency_fp32_ms, '.1f')} |",
            f"| int8 | {f(self.miou_int8, '.4f')} | {f(self.agreement, '.4f')} | {f(self.latency_int8_ms, '.1f')} |",
        ]
        tail = (f"\nINT8 ({self.quant_format}, per_channel={self.per_channel}): {self.convs_qdq + self.convs_qlinear} "
                f"quantized convs, {self.convs_float} float; mIoU drop {f(self.miou_drop_points, '.2f')} points, "
                f"speed-up {f(self.speedup, '.2f')}x on {self.eval_images} images")
        return "\n".join(rows) + tail


def _as_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous float32 ``(N, C, H, W)`` array from a ``(C, H, W)`` or ``(N, C, H, W)`` image (a 3D model's
    volumes come batched, ``(N, C, D, H, W)``)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim not in (4, 5):
        raise ValueError(f"calibration images must be (C, H, W), (N, C, H, W) or (N, C, D, H, W), got shape "
                         f"{arr.shape}")
    return np.ascontiguousarray(arr)


def _calibration_reader(images: Iterable[torch.Tensor | np.ndarray], input_name: str) -> Any:
    """A ``CalibrationDataReader`` feeding normalised images one at a time (sizes may differ)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = [_as_array(im) for im in images]
            if not self._items:
                raise ValueError("quantize_int8 needs at least one calibration image")
            self._it = iter(self._items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self._it = iter(self._items)

    return _Reader()


def quantize_int8(onnx_path: str | Path, out_path: str | Path,
                  calibration_images: Iterable[torch.Tensor | np.ndarray], *,
                  eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  quant_format: str = "qdq", per_channel: bool = True, reduce_range: bool = False,
                  activation_type: str = "uint8", calibrate_method: str = "minmax",
                  keep_head_fp32: bool = True, preprocess: bool = True,
                  threads: int | None = None) -> QuantReport:
    """Statically quantize an exported model to INT8 and write it to ``out_path``.

    Weights are int8 (per output channel with ``per_channel``), activations ``activation_type``
    (``uint8``: the u8s8 kernels of x86 CPUs) with ranges from running ``calibration_images``
    (normalised ``(C, H, W)`` tensors, like the validation images) through the fp32 model.
    ``quant_format``: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs around float ops, fused into
    integer kernels by ONNX Runtime) or ``"qoperator"`` (QLinearConv etc. written out).
    ``preprocess`` first runs ORT's ``quant_pre_process`` (shape inference, Conv+BN folding).
    ``keep_head_fp32`` (default) leaves the final 1x1 head conv (and the resize after it) in float: it is
    a tiny share of the compute, but quantizing the logits themselves turns close class scores into ties
    and costs argmax agreement (99.1% -> 99.7% on a small ct-chest model).
    The unetkit metadata is copied over. With ``eval_data`` (``(image, mask)`` pairs, normalised) the
    report carries mIoU, argmax agreement and latency of both models; without it only the node counts.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}.get(quant_format.lower())
    if fmt is None:
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', not {quant_format!r}")
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(activation_type.lower())
    if act is None:
        raise ValueError(f"activation_type must be 'uint8' or 'int8', not {activation_type!r}")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}.get(calibrate_method.lower())
    if method is None:
        raise ValueError(f"calibrate_method must be 'minmax', 'percentile' or 'entropy', not {calibrate_method!r}")
    source = onnx.load(str(onnx_path))
    metadata = {p.key: p.value for p in source.metadata_props}
    input_name = source.graph.input[0].name

    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = out_path.parent / f".{out_path.name}.work"
    work.mkdir(exist_ok=True)
    try:
        model_in: Path = onnx_path
        if preprocess:
            model_in = work / "pre.onnx"
            quant_pre_process(str(onnx_path), str(model_in), skip_symbolic_shape=True)
        exclude = _head_nodes(onnx.load(str(model_in))) if keep_head_fp32 else []
        tmp_out = work / "int8.onnx"
        with quiet_exporter():
            quantize_static(str(model_in), str(tmp_out), _calibration_reader(calibration_images, input_name),
                            quant_format=fmt, per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": False})
        q = onnx.load(str(tmp_out))
        set_metadata(q, metadata)
        data = q.SerializeToString()
    finally:
        for p in sorted(work.glob("*"), reverse=True):
            p.unlink()
        work.rmdir()
    atomic_write(out_path, lambda tmp: tmp.write_bytes(data))
    report = QuantReport(fp32_path=str(onnx_path), int8_path=str(out_path), quant_format=quant_format,
                         per_channel=per_channel, reduce_range=reduce_range, activation_type=activation_type,
                         calibrate_method=calibrate_method, head_fp32=keep_head_fp32, **quantized_node_counts(q))
    if eval_data is not None:
        compare_onnx(onnx_path, out_path, eval_data, report=report, threads=threads)
    return report


def _head_nodes(model: Any) -> list[str]:
    """Names of the last Conv and every node after it (the segmentation head and the final resize)."""
    nodes = list(model.graph.node)
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=None)
    return [] if last_conv is None else [n.name for n in nodes[last_conv:]]


def quantized_node_counts(model: Any) -> dict[str, int]:
    """Convolutions and how many of them run in INT8 (QDQ-wrapped or QLinearConv), from an ONNX model."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    convs = [n for n in nodes if n.op_type in CONV_OPS]
    qdq = sum(1 for n in convs
              if producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"
              and producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear")
    qlinear = sum(1 for n in nodes if n.op_type in ("QLinearConv", "QLinearConvTranspose", "ConvInteger"))
    return {"convs_float": len(convs) - qdq, "convs_qdq": qdq, "convs_qlinear": qlinear,
            "quantize_nodes": sum(1 for n in nodes if n.op_type == "QuantizeLinear"),
            "dequantize_nodes": sum(1 for n in nodes if n.op_type == "DequantizeLinear")}


def compare_onnx(fp32_path: str | Path, int8_path: str | Path,
                 eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]], *, report: QuantReport | None = None,
                 num_classes: int | None = None, ignore_index: int | None = None, threads: int | None = None,
                 repeats: int = 5) -> QuantReport:
    """mIoU of both models on ``eval_data`` (``(image, mask)`` pairs), argmax agreement, median latency.

    Latency (:func:`unetkit.timing.median_time` of ``repeats`` runs after 2 warm-up runs, on the first
    image) is measured twice per model, the two models interleaved in the same process, and the smaller
    median is kept, so the ratio stays meaningful on a busy machine.
    """
    from ..metrics import SegmentationMetrics

    info, _ = read_onnx_metadata(fp32_path)
    n_cls = num_classes or info.num_classes
    ign = info.ignore_index if ignore_index is None else ignore_index
    report = report or QuantReport(str(fp32_path), str(int8_path))
    s32, s8 = ort_session(fp32_path, threads), ort_session(int8_path, threads)
    name32, name8 = s32.get_inputs()[0].name, s8.get_inputs()[0].name
    m32, m8 = SegmentationMetrics(max(n_cls, 2), ign), SegmentationMetrics(max(n_cls, 2), ign)
    same = total = count = 0
    first: np.ndarray | None = None
    for image, mask in eval_data:
        x = _as_array(image)
        first = x if first is None else first
        p32 = logits_to_labels(torch.from_numpy(s32.run(None, {name32: x})[0]))
        p8 = logits_to_labels(torch.from_numpy(s8.run(None, {name8: x})[0]))
        target = mask if mask.ndim == p32.ndim else mask[None]
        m32.update(p32, target.long())
        m8.update(p8, target.long())
        same += int((p32 == p8).sum())
        total += p32.numel()
        count += x.shape[0]
    if first is None:
        raise ValueError("compare_onnx needs at least one evaluation image")
    r32, r8 = m32.compute(), m8.compute()
    report.miou_fp32, report.miou_int8 = float(r32["miou"]), float(r8["miou"])
    report.per_class_iou = {"fp32": [float(v) for v in r32["iou"]], "int8": [float(v) for v in r8["iou"]]}
    report.agreement = same / total
    report.eval_images = count

    def latency_ms(sess: Any, name: str) -> float:
        feed = {name: first}
        return 1000.0 * median_time(lambda: sess.run(None, feed), repeats=repeats, warmup=2)

    t32, t8 = [], []
    for _ in range(2):  # interleave so both see the same machine load
        t32.append(latency_ms(s32, name32))
        t8.append(latency_ms(s8, name8))
    report.latency_fp32_ms, report.latency_int8_ms = min(t32), min(t8)
    return report
