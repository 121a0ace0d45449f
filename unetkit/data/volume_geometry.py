"""How volumes become 2D slices: the settings, the planning rule, the slice grid and its bounds.

Each volume is cut into 2D slices along its **slice axis**: the axis with the coarsest spacing (nnU-Net's
2D configuration), or ``slice_axis`` when given. With ``context=k`` (2.5D) a sample is its slice and the k
slices on each side stacked as ``2k + 1`` input channels, edges replicated. When the cases' in-plane
spacings differ by more than :data:`RESAMPLE_TOLERANCE`, every case is resampled in-plane to the median
spacing (images linearly, labels by nearest neighbour), and prediction maps back to each scan's grid.
:func:`plan_volume_settings` is that rule as a pure function of the cases' voxel spacings.

The resampled grid of a scan is computed from its shape and spacing before any voxel is resampled and
refused (:func:`check_slice_grid`) when a slice would exceed :data:`MAX_SLICE_PIXELS` pixels or the
volume, as float32, half the machine's physical memory: a header with a 0.001 mm spacing, or a mistyped
``--spacing``, would otherwise ask for terabytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DatasetError
from .volume_io import VolumeCheckError

if TYPE_CHECKING:
    from .volume_io import Volume

#: In-plane spacings that differ from the median by more than this fraction make the cases resampled.
RESAMPLE_TOLERANCE = 0.1
#: A resampled slice may have at most this many pixels (8192 x 8192; a CT slice is 512 x 512).
MAX_SLICE_PIXELS = 8192 * 8192
#: Bytes per voxel of a resampled volume when bounding it by memory (float32 slices).
VOXEL_BYTES = 4


@dataclass(frozen=True)
class VolumeSettings:
    """How volumes become network inputs; stored with the model so prediction slices scans the same way.

    ``slice_axis``: the voxel index axis (0, 1, 2) to slice along, ``None`` for each scan's coarsest axis;
    ``context``: neighbouring slices on each side (2.5D); ``spacing``: the in-plane spacing (mm) slices are
    resampled to, ``None`` to keep each scan's own.
    """

    slice_axis: int | None = None
    context: int = 0
    spacing: tuple[float, float] | None = None

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict[str, Any]:
        return {"slice_axis": self.slice_axis, "context": self.context,
                "spacing": None if self.spacing is None else list(self.spacing)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeSettings:
        sp = d.get("spacing")
        axis = d.get("slice_axis")
        return cls(None if axis is None else int(axis), int(d.get("context", 0)),
                   None if sp is None else (float(sp[0]), float(sp[1])))

    def describe(self) -> str:
        """E.g. ``coarsest axis, context 1 (3 channels), 0.8 x 0.8 mm``."""
        axis = "coarsest axis" if self.slice_axis is None else f"axis {self.slice_axis}"
        ctx = f", context {self.context} ({self.channels} channels)" if self.context else ""
        sp = f", {self.spacing[0]:.3g} x {self.spacing[1]:.3g} mm" if self.spacing else ", native spacing"
        return f"{axis}{ctx}{sp}"


def slice_axis_for(spacing: Sequence[float], given: int | None = None) -> int:
    """The axis to slice along: ``given``, else the one with the coarsest spacing (the last of equals)."""
    if given is not None:
        return int(given)
    sp = np.asarray(spacing, dtype=float)
    return int(np.flatnonzero(sp >= sp.max() * (1 - 1e-3))[-1])


def context_indices(num_slices: int, index: int, context: int) -> list[int]:
    """Slice indices ``index - context .. index + context``, clamped to the volume (edges replicated)."""
    return [min(max(index + d, 0), num_slices - 1) for d in range(-context, context + 1)]


def inplane_size(shape: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float] | None
                 ) -> tuple[int, int]:
    """In-plane size of a slice of ``shape`` at ``spacing`` once resampled to ``target`` (unchanged if None)."""
    if target is None:
        return shape
    return (max(1, round(shape[0] * spacing[0] / target[0])), max(1, round(shape[1] * spacing[1] / target[1])))


def resize_slices(shw: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    """``(S, H, W)`` slices resized in-plane to ``size``: linear for images, nearest for labels."""
    if tuple(shw.shape[1:]) == tuple(size):
        return shw
    out = []
    for start in range(0, shw.shape[0], 16):  # in chunks: one float copy of a whole CT is large
        t = torch.from_numpy(np.ascontiguousarray(shw[start:start + 16])).float()[:, None]
        if labels:
            r = F.interpolate(t, size=size, mode="nearest-exact")
        else:
            r = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        out.append(r[:, 0].numpy())
    res = np.concatenate(out)
    if shw.dtype.kind in "iu":
        info = np.iinfo(shw.dtype)
        res = np.clip(np.rint(res), info.min, info.max)
    return res.astype(shw.dtype)


def volume_slices(volume: Volume, settings: VolumeSettings) -> tuple[np.ndarray, int, tuple[float, float, float]]:
    """``(slices (S, H, W), slice axis, spacing of the slice grid (S, H, W) in mm)`` of a scan, resampled
    in-plane as ``settings`` say. The one path from a volume to slices, for training and prediction.

    The resampled grid is checked (:func:`check_slice_grid`) before anything is allocated."""
    axis, size = check_slice_grid(volume.path, volume.array.shape, volume.spacing, settings)
    shw = np.moveaxis(volume.array, axis, 0)
    sp = volume.spacing
    inplane = tuple(float(sp[a]) for a in range(3) if a != axis)
    shw = resize_slices(shw, size[1:], labels=False)
    grid = (float(sp[axis]), *(settings.spacing or inplane))
    return shw, axis, grid  # type: ignore[return-value]


def stack_context(shw: np.ndarray, index: int, context: int) -> np.ndarray:
    """The ``(2 * context + 1, H, W)`` float32 input of slice ``index`` (neighbours as channels)."""
    return shw[context_indices(shw.shape[0], index, context)].astype(np.float32)


def plan_spacing(spacings: Sequence[tuple[float, float]]) -> tuple[tuple[float, float] | None, str]:
    """The in-plane spacing to resample to (``None``: keep each scan's) and why."""
    arr = np.asarray(spacings, dtype=float)
    median = np.median(arr, axis=0)
    spread = np.abs(arr / median - 1).max()
    if spread <= RESAMPLE_TOLERANCE:
        return None, (f"in-plane spacings within {100 * RESAMPLE_TOLERANCE:.0f} % of each other: not resampled; "
                      "slices along the coarsest axis (nnU-Net's 2D)")
    return (round(float(median[0]), 4), round(float(median[1]), 4)), (
        f"in-plane spacings differ by up to {100 * spread:.0f} %: resampled to their median")


def plan_volume_settings(spacings: Sequence[Sequence[float]], *, slice_axis: int | None = None, context: int = 0,
                         spacing: Sequence[float] | str | None = None) -> tuple[VolumeSettings, str]:
    """The planning rule: ``(settings, reason)`` for training cases whose voxel spacings (mm along I, J, K,
    from their headers) are ``spacings``. Pure: no file is read.

    The slice axis stays ``slice_axis`` (``None``: each scan's coarsest axis). The in-plane spacing is
    ``spacing`` when given (two numbers, mm), each scan's own for ``"native"``, else :func:`plan_spacing`
    of the cases' in-plane spacings along their slice axes. Bad options raise :class:`DatasetError`.
    """
    if context < 0:
        raise DatasetError(f"--context must be >= 0, not {context}")
    if slice_axis is not None and slice_axis not in (0, 1, 2):
        raise DatasetError(f"--slice-axis must be 0, 1 or 2 (a voxel index axis), not {slice_axis}")
    target: tuple[float, float] | None
    if isinstance(spacing, str):
        if spacing != "native":
            raise DatasetError(f"spacing must be two numbers (mm) or 'native', not {spacing!r}")
        target, reason = None, "each scan's own in-plane spacing"
    elif spacing is not None:
        target, reason = (float(spacing[0]), float(spacing[1])), "given"
        if not all(math.isfinite(v) and v > 0 for v in target):
            raise DatasetError(f"--spacing must be two positive numbers (mm), not {spacing[0]} {spacing[1]}")
    elif not spacings:
        target, reason = None, "no cases to plan from: each scan's own in-plane spacing"
    else:
        inplane = []
        for sp in spacings:
            axis = slice_axis_for(sp, slice_axis)
            inplane.append(tuple(float(sp[a]) for a in range(3) if a != axis))
        target, reason = plan_spacing(inplane)
    return VolumeSettings(slice_axis, int(context), target), reason


def max_volume_bytes() -> int:
    """The memory bound of one resampled volume: half the machine's physical memory (64 GiB if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def slice_grid(shape: Sequence[int], spacing: Sequence[float], settings: VolumeSettings
               ) -> tuple[int, tuple[int, int, int]]:
    """``(slice axis, (S, H, W))``: the grid a volume of ``shape`` at ``spacing`` (mm, I J K) is cut and
    resampled to under ``settings``, computed without touching any voxel."""
    axis = slice_axis_for(spacing, settings.slice_axis)
    inplane = tuple(float(spacing[a]) for a in range(3) if a != axis)
    hw = tuple(int(shape[a]) for a in range(3) if a != axis)
    h, w = inplane_size(hw, inplane, settings.spacing)  # type: ignore[arg-type]
    return axis, (int(shape[axis]), h, w)


def check_slice_grid(path: Path | str, shape: Sequence[int], spacing: Sequence[float], settings: VolumeSettings,
                     max_bytes: int | None = None) -> tuple[int, tuple[int, int, int]]:
    """:func:`slice_grid`, refused with a one-line :class:`VolumeCheckError` naming ``path`` when a slice has
    more than :data:`MAX_SLICE_PIXELS` pixels or the volume more than ``max_bytes`` (default
    :func:`max_volume_bytes`) at :data:`VOXEL_BYTES` per voxel."""
    axis, (s, h, w) = slice_grid(shape, spacing, settings)
    limit = max_volume_bytes() if max_bytes is None else max_bytes
    nbytes = s * h * w * VOXEL_BYTES
    if h * w <= MAX_SLICE_PIXELS and nbytes <= limit:
        return axis, (s, h, w)
    side = math.isqrt(MAX_SLICE_PIXELS)
    factor = max(math.sqrt(h * w / MAX_SLICE_PIXELS), math.sqrt(nbytes / max(limit, 1)))
    target = settings.spacing or tuple(float(spacing[a]) for a in range(3) if a != axis)
    coarser = " ".join(f"{v * factor:.3g}" for v in target)
    raise VolumeCheckError(path, (
        f"spacing {' x '.join(f'{float(v):.4g}' for v in spacing)} mm resampled to "
        f"{' x '.join(f'{v:.4g}' for v in target)} mm in-plane gives {s} slices of {h} x {w} pixels "
        f"({nbytes / 2**30:.3g} GiB as float32), over the limit of {side} x {side} pixels per slice and "
        f"{limit / 2**30:.3g} GiB per volume; pass --spacing with a coarser in-plane spacing (e.g. --spacing "
        f"{coarser}) or fix the voxel spacing in the file's header"))
