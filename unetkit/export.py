"""ONNX export with unetkit metadata, and static INT8 quantization checked on real data.

* :func:`export_onnx` writes one self-contained ``.onnx`` file with dynamic batch/height/width and the
  data description (class names and colours, mean/std, channels, model config) in ``metadata_props``,
  then runs it in ONNX Runtime on two input sizes and refuses a file whose output differs from PyTorch.
* :func:`quantize_int8` runs ONNX Runtime's static post-training quantization (QDQ, per-channel weights,
  activations calibrated on real normalised images) and, given validation data, reports mIoU, argmax
  agreement and latency of fp32 vs INT8 (:class:`QuantReport`).
* :func:`count_dynamic_quantized_convs` shows the dynamic-quantization trap: ``quantize_dynamic`` leaves
  every convolution of a UNet in float (see ``docs/export.md``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write
from .checkpoint import CheckpointError, DataInfo

#: ``metadata_props`` keys written by :func:`export_onnx` (values are JSON strings).
METADATA_KEYS: tuple[str, ...] = ("unetkit_version", "num_classes", "in_channels", "class_names", "class_colors",
                                  "mean", "std", "ignore_index", "model_config")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Op types whose QDQ pairs ``quantize_int8`` checks for (the convolutions of a UNet).
CONV_OPS = ("Conv", "ConvTranspose")


class ExportError(RuntimeError):
    """An exported or quantized model that does not reproduce the original closely enough."""


# --------------------------------------------------------------------------------------------- metadata
def onnx_metadata(data_info: DataInfo, model_config: dict[str, Any] | None) -> dict[str, str]:
    """The ``metadata_props`` entries (JSON strings) that let ``unetkit predict`` run an ``.onnx`` file."""
    from . import __version__

    d = data_info.to_dict()
    values: dict[str, Any] = {
        "unetkit_version": __version__, "num_classes": d["num_classes"], "in_channels": d["in_channels"],
        "class_names": d["class_names"], "class_colors": d["class_colors"], "mean": d["mean"], "std": d["std"],
        "ignore_index": d["ignore_index"], "model_config": model_config,
    }
    return {k: json.dumps(v) for k, v in values.items()}


def set_metadata(model_proto: Any, metadata: dict[str, str]) -> None:
    """Replace ``model_proto``'s ``metadata_props`` entries named in ``metadata`` (others are kept)."""
    keep = [p for p in model_proto.metadata_props if p.key not in metadata]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in metadata.items():
        model_proto.metadata_props.add(key=k, value=v)


def parse_metadata(props: dict[str, str], source: str = "model") -> tuple[DataInfo, dict[str, Any] | None]:
    """``(DataInfo, model_config)`` from the ``metadata_props`` of a file written by :func:`export_onnx`."""
    missing = [k for k in ("num_classes", "in_channels", "mean", "std") if k not in props]
    if missing:
        raise CheckpointError(f"{source}: no unetkit metadata ({', '.join(missing)} missing); "
                              "export the model with 'unetkit export' so class names and normalisation travel with it")
    try:
        v = {k: json.loads(s) for k, s in props.items() if k in METADATA_KEYS}
        n = int(v["num_classes"])
        from .data.classes import default_colors, default_names

        info = DataInfo.from_dict({
            "num_classes": n, "in_channels": int(v["in_channels"]),
            "class_names": v.get("class_names") or default_names(n),
            "class_colors": v.get("class_colors") or default_colors(n),
            "mean": v["mean"], "std": v["std"], "ignore_index": v.get("ignore_index", 255),
        })
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{source}: unreadable unetkit metadata ({e}); re-export the model") from e
    return info, v.get("model_config")


def read_onnx_metadata(path: str | Path) -> tuple[DataInfo, dict[str, Any] | None]:
    """Read the data description and model config stored in an exported ``.onnx`` file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props}, str(path))


# --------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and the opset-conversion notices (not errors)."""
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
    """Export ``model`` to an in-memory ``onnx.ModelProto`` with dynamic batch, height and width."""
    import onnx

    with _quiet_exporter():
        if dynamo:
            dims = {0: "batch", 2: "height", 3: "width"}
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                            dynamic_shapes=(dims,), input_names=[INPUT_NAME],
                                            output_names=[OUTPUT_NAME], external_data=False, verbose=False)
            return program.model_proto
        buf = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
        return onnx.load_from_string(buf.getvalue())


def _session(path_or_bytes: str | Path | bytes, threads: int | None = None, optimize: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    # Idle threads must not busy-wait: compare_onnx alternates two sessions, and one's spinning threads
    # would otherwise slow the other down.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, data_info: DataInfo, path: str | Path, opset: int = 17, *,
                dynamo: bool = True, check_shapes: Sequence[tuple[int, int, int]] = ((1, 128, 128), (2, 97, 131)),
                atol: float = 1e-4, verbose: bool = True) -> float:
    """Export ``model`` to ``path`` (one file, written atomically) and return the max abs logit difference.

    Inputs are named ``image`` (N, C, H, W) and outputs ``logits`` (N, num_classes, H, W), with N, H, W
    dynamic. ``dynamo=True`` uses the ``torch.export`` based exporter (opset 18 internally, converted to
    ``opset``); ``dynamo=False`` the TorchScript tracer; both give the same graph for a UNet because the
    model's size matching does not branch on shapes while exporting. The file is verified with ONNX
    Runtime on every ``(N, H, W)`` of ``check_shapes``: a max abs difference to PyTorch of ``atol`` or more
    raises :class:`ExportError` and nothing is written.
    """
    import onnx

    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        example = torch.randn(1, data_info.in_channels, 64, 64, device=device)
        proto = _to_proto(model, example, opset, dynamo)
        config = getattr(model, "config", None)
        set_metadata(proto, onnx_metadata(data_info, config.to_dict() if config is not None else None))
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
        sess = _session(data)
        gen = torch.Generator().manual_seed(0)
        diff = 0.0
        for n, h, w in check_shapes:
            x = torch.randn(n, data_info.in_channels, h, w, generator=gen)
            with torch.inference_mode():
                ref = model(x.to(device)).float().cpu().numpy()
            out = sess.run(None, {INPUT_NAME: x.numpy()})[0]
            if out.shape != ref.shape:
                raise ExportError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for input {tuple(x.shape)}")
            diff = max(diff, float(np.abs(out - ref).max()))
    finally:
        model.train(was_training)
    shapes = ", ".join(f"{n}x{data_info.in_channels}x{h}x{w}" for n, h, w in check_shapes)
    if not diff < atol:
        raise ExportError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (>= {atol:g}) "
                          f"on {shapes}; not written. Try dynamo={not dynamo} or another opset")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    if verbose:
        print(f"wrote {path} (opset {opset}); ONNX Runtime vs PyTorch max abs diff {diff:.2e} on {shapes}")
    return diff


# --------------------------------------------------------------------------------------------- INT8
def _as_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"calibration images must be (C, H, W) or (N, C, H, W), got shape {arr.shape}")
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
        with _quiet_exporter():
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
        if not self.latency_fp32_ms or not self.latency_int8_ms:
            return None
        return self.latency_fp32_ms / self.latency_int8_ms

    def to_dict(self) -> dict[str, Any]:
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


def median_latency_ms(sess: Any, x: np.ndarray, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of ``sess.run`` on ``x`` after ``warmup`` untimed runs."""
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def compare_onnx(fp32_path: str | Path, int8_path: str | Path,
                 eval_data: Iterable[tuple[torch.Tensor, torch.Tensor]], *, report: QuantReport | None = None,
                 num_classes: int | None = None, ignore_index: int | None = None, threads: int | None = None,
                 repeats: int = 5) -> QuantReport:
    """mIoU of both models on ``eval_data`` (``(image, mask)`` pairs), argmax agreement, median latency.

    Latency is measured on the first image, both models interleaved in the same process, so the
    ratio stays meaningful on a busy machine.
    """
    from .metrics import SegmentationMetrics

    info, _ = read_onnx_metadata(fp32_path)
    n_cls = num_classes or info.num_classes
    ign = info.ignore_index if ignore_index is None else ignore_index
    report = report or QuantReport(str(fp32_path), str(int8_path))
    s32, s8 = _session(fp32_path, threads), _session(int8_path, threads)
    name32, name8 = s32.get_inputs()[0].name, s8.get_inputs()[0].name
    m32, m8 = SegmentationMetrics(max(n_cls, 2), ign), SegmentationMetrics(max(n_cls, 2), ign)
    same = total = count = 0
    first: np.ndarray | None = None
    for image, mask in eval_data:
        x = _as_array(image)
        first = x if first is None else first
        l32 = torch.from_numpy(s32.run(None, {name32: x})[0])
        l8 = torch.from_numpy(s8.run(None, {name8: x})[0])
        p32, p8 = _labels(l32), _labels(l8)
        target = mask if mask.ndim == 3 else mask[None]
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
    t32, t8 = [], []
    for _ in range(2):  # interleave so both see the same machine load
        t32.append(median_latency_ms(s32, first, repeats))
        t8.append(median_latency_ms(s8, first, repeats))
    report.latency_fp32_ms, report.latency_int8_ms = min(t32), min(t8)
    return report


def _labels(logits: torch.Tensor) -> torch.Tensor:
    """Class labels from logits: argmax over classes, or ``> 0`` for a one-channel (sigmoid) model."""
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


# --------------------------------------------------------------------------------------------- the trap
def count_dynamic_quantized_convs(model: nn.Module) -> tuple[int, int, nn.Module]:
    """``(convs before, quantized convs after, quantized model)`` for ``quantize_dynamic`` on a copy.

    Dynamic quantization only has kernels for ``nn.Linear`` and recurrent layers, so asking for
    ``{nn.Conv2d, nn.Linear}`` on a UNet quantizes nothing: the count after is 0 and the output is
    bit-identical. This is why unetkit quantizes statically (:func:`quantize_int8`).
    """
    import copy

    from torch.ao.quantization import quantize_dynamic

    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Conv2d, nn.Linear}, dtype=torch.qint8)
    quantized = sum(1 for m in q.modules()
                    if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
                    and "Conv" in type(m).__name__)
    return convs, quantized, q


# --------------------------------------------------------------------------------------------- PT2E
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
    with _quiet_exporter():
        graph = torch.export.export(model, (example,), dynamic_shapes=(dims,)).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in images:
            prepared(x.float())
    return convert_pt2e(prepared)
