"""Predicting whole CT/MRI volumes with a model trained on a volume folder.

A scan goes through the training path (:func:`unetkit.data.volumes.volume_slices`): slices along the
model's slice axis, resampled in-plane to its spacing, neighbours stacked as channels (2.5D), normalised
as in training. Slices are predicted in batches (with the model's sliding window where a slice is larger
than the training patch); class probabilities are resized back to the scan's own in-plane grid before the
argmax, and the labels are reassembled on the scan's voxel grid, so the written label volume has the scan's
geometry exactly (:func:`unetkit.data.volume_io.write_label_volume`). A 3D model sees the slice stack as one
volume through 3D sliding windows (Gaussian-blended, with the flips ``tta`` names); its probabilities
go back to the scan's grid a few slices at a time, so memory is the probabilities of the scan plus a chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import DataInfo
from ..data.volumes import VolumeSettings, stack_context, volume_slices
from ..models.outputs import probs_to_labels
from .sliding import TTA, Model, model_spatial_dims, predict

if TYPE_CHECKING:
    from ..data.volume_io import Volume


def check_volume_model(info: DataInfo, where: str = "model") -> VolumeSettings:
    """The model's volume settings; ``ValueError`` for a model trained on 2D images."""
    if info.volume is None:
        raise ValueError(f"{where} was trained on 2D images, whose intensities are scaled differently; "
                         "predict volumes with a model trained on a volume folder (see docs/volumes.md)")
    return info.volume


@torch.inference_mode()
def predict_volume(model: Model, volume: Volume, info: DataInfo, *, tile_size: tuple[int, int] | None = None,
                   overlap: float = 0.5, tta: TTA = False, batch_size: int = 8,
                   autocast_dtype: torch.dtype | None = None,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Labels ``(I, J, K)`` for ``volume`` (same shape as ``volume.array``), uint8 (uint16 past 255 classes).

    ``tile_size`` defaults to the training patch size; ``progress(n)`` is called after every ``n`` slices.
    """
    settings = check_volume_model(info)
    shw, axis, _ = volume_slices(volume, settings)
    native = tuple(np.moveaxis(volume.array, axis, 0).shape[1:])
    out = np.empty((shw.shape[0], *native), dtype=np.uint8 if max(info.num_classes, 2) <= 256 else np.uint16)
    norm = info.normalization
    tile = tile_size if tile_size is not None else info.patch_size
    pad = norm.pad_value() if tile is not None else None
    if model_spatial_dims(model) == 3:  # the whole scan through 3D sliding windows
        x = norm.apply(torch.from_numpy(np.ascontiguousarray(shw))[None, None])
        probs = predict(model, x, tile_size=tile, overlap=overlap, tta=tta, output="probs", batch_size=batch_size,
                        pad_value=pad, autocast_dtype=autocast_dtype, spatial_dims=3)[0]
        del x
        for start in range(0, shw.shape[0], batch_size):  # back to the scan's in-plane grid, a few slices at a time
            chunk = probs[:, start:start + batch_size].transpose(0, 1)
            if tuple(chunk.shape[-2:]) != native:
                chunk = F.interpolate(chunk, size=native, mode="bilinear", align_corners=False)
            out[start:start + chunk.shape[0]] = probs_to_labels(chunk).cpu().numpy()
            if progress is not None:
                progress(chunk.shape[0])
        return np.ascontiguousarray(np.moveaxis(out, 0, axis))
    for start in range(0, shw.shape[0], batch_size):
        stop = min(shw.shape[0], start + batch_size)
        x = torch.from_numpy(np.stack([stack_context(shw, i, settings.context) for i in range(start, stop)]))
        x = norm.apply(x)
        probs = predict(model, x, tile_size=tile, overlap=overlap, tta=tta, output="probs",
                        batch_size=batch_size, pad_value=pad, autocast_dtype=autocast_dtype)
        if tuple(probs.shape[-2:]) != native:
            probs = F.interpolate(probs, size=native, mode="bilinear", align_corners=False)
        out[start:stop] = probs_to_labels(probs).cpu().numpy()
        if progress is not None:
            progress(stop - start)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def num_slices(volume: Volume, info: DataInfo) -> int:
    """How many slices :func:`predict_volume` cuts ``volume`` into (for a progress bar)."""
    from ..data.volumes import slice_axis_for

    settings = info.volume or VolumeSettings()
    return int(volume.array.shape[slice_axis_for(volume.spacing, settings.slice_axis)])

