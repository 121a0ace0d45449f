"""``Predictor``: a trained model together with everything needed to apply it.

A checkpoint (``.pt`` or a run directory) or an exported ``.onnx`` file carries the model and its
:class:`~unetkit.checkpoint.DataInfo`: the normalisation, the training patch size, the classes, how
volumes were sliced. The predictor adds the device, the precision and the tiling, and is the one way a
trained model is applied: by ``unetkit predict`` and ``evaluate``, by training's validation, by the
benchmarks, and from Python::

    from unetkit.inference import Predictor

    predictor = Predictor.load("runs/demo")            # or "model.onnx"
    mask = predictor.predict("scan.png")               # (H, W) class indices, as `unetkit predict` writes
    labels = predictor.predict_volume("ct.nii.gz")     # (I, J, K), the scan's own grid
    predictor.predict_folder(["scans/"], "out/")       # masks, overlays (and volumes) into out/
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..checkpoint import DataInfo, load_model
from ..data.preprocess import prepare_image
from ..device import amp_name, describe_amp, resolve_amp, resolve_device
from ..models.outputs import probs_to_labels
from .sliding import TTA, Model, model_spatial_dims, predict
from .volume import predict_volume

if TYPE_CHECKING:
    from ..data.volume_io import Volume
    from .folder import FolderResult


#: Images with more pixels than this are predicted in bands of rows, so memory grows with the band (about this
#: many pixels), not with the image.
BAND_PIXELS = 1024 * 1024


#: 3D windows run at most this many voxels a forward pass (two 96^3 windows): a batch of 16 large windows
#: would hold gigabytes of activations.
MAX_WINDOW_VOXELS = 2 * 96**3


def resolve_tta(tta: bool | Sequence[int] | None, flip_axes: tuple[int, ...] | None) -> TTA:
    """The flips a predictor averages (``tta`` of :func:`~unetkit.inference.predict`). ``None`` (the default):
    the flips the model was trained with (:attr:`DataInfo.flip_axes`; a flip it never saw only adds noise), none
    if it was trained without or they are not recorded. ``True``: the trained flips too, or every axis for a
    model trained without. ``False``: none. A list of axes (``-1`` width, ``-2`` height, ``-3`` depth): those."""
    if tta is None or tta is True:
        return tuple(flip_axes) if flip_axes else bool(tta)
    return tta if tta is False else tuple(int(a) for a in tta)


def describe_tta(tta: TTA) -> str:
    """``flip TTA (W, H)``, ``flip TTA (every axis)``, or ``""`` for none."""
    if not tta:
        return ""
    if tta is True:
        return "flip TTA (every axis)"
    names = {-1: "W", -2: "H", -3: "D"}
    return f"flip TTA ({', '.join(names.get(a, str(a)) for a in sorted(tta, reverse=True))})"


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append .npy to the temporary name
        np.save(fh, arr)


class Predictor:
    """Apply a trained model to images, volumes and folders exactly as ``unetkit predict`` does.

    * ``model``: a :class:`unetkit.UNet` (or any module returning logits) or an :class:`OnnxModel`;
      ``info``: what it was trained on (:class:`DataInfo`).
    * ``device``: where a PyTorch model runs (``"auto"``: CUDA when available); ``amp``: ``"auto"`` (bf16/fp16
      on CUDA, bf16 on a CPU that runs it natively, else fp32), ``"off"``, ``"bf16"``, ``"fp16"`` or a
      ``torch.dtype``/``None`` as :func:`unetkit.device.resolve_amp` returns. An ONNX model runs as exported.
    * ``tile``: the sliding-window size (default: the training patch size, else whole images); ``overlap``
      and ``batch_size`` (windows or slices per forward pass) as in :func:`unetkit.inference.predict`.
    * ``tta``: flip averaging (:func:`resolve_tta`). By default a model trained with flips is applied averaged
      over those flips, as nnU-Net applies a mirror-trained model; one trained without, as it is.
    * ``fast``: fold conv+BN and use the measured memory layout first (:func:`prepare_inference`; the model is
      changed in place, so pass a copy of one that still trains). Masks agree with the unfolded model on all
      but a handful of pixels.
    """

    def __init__(self, model: Model, info: DataInfo, *, device: str | torch.device = "auto",
                 amp: str | torch.dtype | None = "auto", tile: int | tuple[int, ...] | None = None,
                 overlap: float = 0.5, tta: bool | Sequence[int] | None = None, batch_size: int = 16,
                 fast: bool = False) -> None:
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.info = info
        self.onnx = not isinstance(model, torch.nn.Module)
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.amp_option = amp if isinstance(amp, str) else None
        self.amp: torch.dtype | None = None if self.onnx else (resolve_amp(amp, self.device) if isinstance(amp, str)
                                                               else amp)
        if isinstance(tile, int):
            tile = (tile,) * model_spatial_dims(model)
        self.tile: tuple[int, ...] | None = tuple(tile) if tile is not None else info.patch_size
        self.overlap, self.batch_size = overlap, batch_size
        self.tta = resolve_tta(tta, info.flip_axes)
        if self.tile is not None and len(self.tile) == 3:  # 3D windows: a batch's activations, not its count, bound it
            self.batch_size = max(1, min(batch_size, MAX_WINDOW_VOXELS // math.prod(self.tile)))
        self.pad_value = info.normalization.pad_value() if self.tile is not None else None
        if fast and not self.onnx:
            from .policy import prepare_inference

            size = self.tile or (64, 64)
            example = torch.zeros(1, info.in_channels, *size, device=self.device)
            model = prepare_inference(model, example)[0]  # type: ignore[arg-type]
        self.model = model

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "auto", fast: bool = True,
             **options: Any) -> Predictor:
        """A predictor for a checkpoint (``.pt`` or run directory) or an exported ``.onnx`` file; ``options``
        as the constructor's. Nothing is downloaded: the architecture and every tensor come from the file."""
        p = Path(path)
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if p.suffix.lower() == ".onnx":
            from ..export.runtime import OnnxModel

            gpu = dev.type != "cpu"
            onnx_model = OnnxModel(p, providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else None)
            return cls(onnx_model, onnx_model.data_info, device=dev, **options)
        model, info, _ = load_model(p, dev)
        return cls(model, info, device=dev, fast=fast, **options)

    # ----------------------------------------------------------------- what it is
    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    def describe(self) -> str:
        """What really runs, e.g. ``bf16 autocast, --amp auto: bf16 measured faster on this CPU`` or
        ``ONNX Runtime (CPU), as exported``."""
        if self.onnx:
            providers = getattr(getattr(self.model, "session", None), "get_providers", lambda: [])()
            where = f" ({', '.join(p.removesuffix('ExecutionProvider') for p in providers)})" if providers else ""
            return f"ONNX Runtime{where}, as exported"
        if self.amp_option:
            return describe_amp(self.amp_option, self.amp, self.device)
        return "fp32" if self.amp is None else f"{amp_name(self.amp)} autocast"

    def tiling(self) -> str:
        """How images are covered, e.g. ``64x64 windows, 50 % overlap, flip TTA (W, H)`` or ``whole images``."""
        tta = describe_tta(self.tta)
        if self.tile is None:
            return "whole images" + (f", {tta}" if tta else "")
        return f"{'x'.join(map(str, self.tile))} windows, {100 * self.overlap:.0f} % overlap" + (f", {tta}" if tta else "")

    # ----------------------------------------------------------------- applying it
    def preprocess(self, image: np.ndarray, where: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalised (C, H, W), [0, 1] (C, H, W))`` from a stored ``(H, W[, C])`` array (as
        :func:`unetkit.data.read_image` returns): channels matched where meaningful (RGB -> grey, grey ->
        any), pixels scaled by bit depth, then the model's normalisation. ``ValueError`` otherwise."""
        return prepare_image(image, self.info.normalization, where)

    def predict_tensor(self, x: torch.Tensor, output: str = "labels") -> torch.Tensor:
        """Labels, ``"probs"`` or ``"logits"`` for a normalised ``(C, H, W)`` or ``(N, C, H, W)`` tensor."""
        return predict(self.model, x, tile_size=self.tile, overlap=self.overlap, tta=self.tta, output=output,
                       batch_size=self.batch_size, pad_value=self.pad_value, autocast_dtype=self.amp)

    def predict_labels(self, image: np.ndarray, where: str = "image", probs_path: Path | None = None) -> np.ndarray:
        """Class indices (uint8; uint16 past 256 classes) of a stored ``(H, W[, C])`` array, memory bounded by
        the tile: an image of more than :data:`BAND_PIXELS` pixels is predicted in bands of rows, each with the
        windows the whole image's tiling puts there (so the result is the whole-image one), normalised band by
        band. ``probs_path``: also write the probabilities ``(C, H, W)`` float32 there as ``.npy``."""
        h, w = image.shape[:2]
        dtype = np.uint8 if max(self.num_classes, 2) <= 256 else np.uint16
        tile = self.tile
        banded = tile is not None and len(tile) == 2 and h * w > BAND_PIXELS and h > 2 * tile[0] and w >= tile[1]
        if not banded:
            x, _ = self.preprocess(image, where)
            scores = self.predict_tensor(x, output="probs").float().cpu()
            if probs_path is not None:
                _write_npy(probs_path, scores.numpy())
            return probs_to_labels(scores[None])[0].numpy().astype(dtype)
        assert tile is not None
        from .sliding import _per_axis, model_stride, tile_starts

        align = _per_axis(model_stride(self.model), 2)
        ys = tile_starts(h, tile[0], self.overlap, align[0])
        xs = tile_starts(w, tile[1], self.overlap, align[1])
        # at least 4 tile heights a band, so few windows (those across a band's edge) are computed twice
        rows = max(4 * tile[0], BAND_PIXELS // w // tile[0] * tile[0])
        labels = np.empty((h, w), dtype)
        probs = None
        if probs_path is not None:
            probs = np.lib.format.open_memmap(probs_path, mode="w+", dtype=np.float32,
                                              shape=(self.num_classes, h, w))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            band = [y for y in ys if y < r1 and y + tile[0] > r0]
            ya, yb = band[0], band[-1] + tile[0]
            x, _ = self.preprocess(image[ya:yb], where)
            scores = predict(self.model, x, tile_size=tile, overlap=self.overlap, tta=self.tta, output="probs",
                             batch_size=self.batch_size, pad_value=self.pad_value, autocast_dtype=self.amp,
                             starts=([y - ya for y in band], xs))[:, r0 - ya:r1 - ya].float().cpu()
            labels[r0:r1] = probs_to_labels(scores[None])[0].numpy()
            if probs is not None:
                probs[:, r0:r1] = scores.numpy()
        if probs is not None:
            probs.flush()
        return labels

    def predict(self, image: np.ndarray | str | os.PathLike, output: str = "labels") -> np.ndarray:
        """Class indices ``(H, W)`` (``output="probs"``: float32 ``(C, H, W)``) for an image file or a stored
        ``(H, W[, C])`` array, at its full size: the mask ``unetkit predict`` writes."""
        if output not in ("labels", "probs"):
            raise ValueError(f"output must be 'labels' or 'probs', not {output!r}")
        where = "image"
        if isinstance(image, (str, os.PathLike)):
            from ..data.io import read_image

            where, image = str(image), read_image(image)
        if output == "labels":
            return self.predict_labels(np.asarray(image), where).astype(np.int64)
        x, _ = self.preprocess(np.asarray(image), where)
        return self.predict_tensor(x, output="probs").float().cpu().numpy()

    def predict_volume(self, scan: Volume | str | os.PathLike,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Labels on the voxel grid of ``scan`` (a :class:`Volume`, a NIfTI/NRRD/MetaImage file or a DICOM series
        folder), for a model trained on volumes; ``progress(n)`` after every ``n`` slices."""
        if isinstance(scan, (str, os.PathLike)):
            from ..data.volume_io import read_volume

            scan = read_volume(scan)
        return predict_volume(self.model, scan, self.info, tile_size=self.tile, overlap=self.overlap,
                              tta=self.tta, batch_size=self.batch_size, autocast_dtype=self.amp,
                              progress=progress)

    def predict_folder(self, inputs: str | os.PathLike | list[str | os.PathLike], out: str | os.PathLike, *,
                       probs: bool = False, alpha: float = 0.5, progress: bool = True) -> FolderResult:
        """Predict image files, folders, glob patterns, volume files and DICOM series folders into ``out``
        (see :func:`unetkit.inference.folder.predict_files`): every good input is written, every bad one
        reported in the result."""
        from .folder import predict_files

        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        return predict_files(self, [str(i) for i in items], Path(out), probs=probs, alpha=alpha,
                             progress=progress)
