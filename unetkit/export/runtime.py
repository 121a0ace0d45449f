"""Running exported models: the one ONNX Runtime session builder and :class:`OnnxModel`.

Every ONNX Runtime session of unetkit (the export check, the INT8 report, ``predict`` on an ``.onnx``
file) is built by :func:`ort_session`, so they all run with the same options. ``onnxruntime`` is
imported only when a session is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError
from .metadata import parse_metadata

#: ``optimize`` names accepted by :func:`ort_session`, mapped to ``ort.GraphOptimizationLevel`` members.
OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                       "none": "ORT_DISABLE_ALL"}


def ort_session(model: str | Path | bytes, threads: int | None = None, providers: Sequence[str] | None = None,
                optimize: bool | str = True) -> Any:
    """An ``onnxruntime.InferenceSession`` for a file path or serialized model bytes.

    ``threads``: intra-op threads (``None``: ONNX Runtime's default, all cores). ``providers`` default
    to the CPU provider. ``optimize``: ``True`` (all graph optimisations: needed to fuse INT8 QDQ pairs
    into integer kernels), ``False`` (none), or a level name from :data:`OPTIMIZATION_LEVELS`. Idle
    threads sleep instead of busy-waiting, so interleaved sessions (the INT8 report) or PyTorch work
    between runs (tiled ``predict``) do not compete with spinning threads. Warnings are not logged.
    """
    import onnxruntime as ort

    level = ("all" if optimize else "none") if isinstance(optimize, bool) else optimize
    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimize must be a bool or one of {', '.join(OPTIMIZATION_LEVELS)}, not {optimize!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level])
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxModel:
    """An exported ``.onnx`` model run by ONNX Runtime, usable wherever ``unetkit.inference.predict`` takes a model.

    Reads the unetkit metadata written by :func:`unetkit.export.export_onnx` into :attr:`data_info`
    (class names and colours, mean/std, channels) and :attr:`config`. ``model(x)`` takes a float
    ``(N, C, H, W)`` tensor and returns the logits as a CPU tensor.
    """

    training = False

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: ONNX model not found")
        try:
            self.session = ort_session(self.path, threads=threads, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types; one clear message
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        self.data_info, self.config = parse_metadata(meta, str(self.path))
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")

    @property
    def num_classes(self) -> int:
        """Number of output channels (classes; 1 for a binary sigmoid model)."""
        return self.data_info.num_classes

    def eval(self) -> OnnxModel:
        """No-op (an exported model is always in inference mode); returns ``self`` like ``nn.Module.eval``."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, num_classes={self.num_classes}, in_channels={self.data_info.in_channels})"
