"""Volume folders: CT and MRI volumes with label volumes, trained as 2D slices (optionally 2.5D).

The public names of the volume data layer, from the modules that do each job:

* :mod:`unetkit.data.volume_geometry`: :class:`VolumeSettings`, the planning rule
  (:func:`plan_volume_settings`), the slice grid and its bounds, slicing and 2.5D context;
* :mod:`unetkit.data.volume_scan`: the folder layout, case pairing and checks (:func:`scan_volumes`);
* :mod:`unetkit.data.volume_dataset`: :class:`VolumeSliceDataset` and :func:`load_volumes`.

Reading and writing the files themselves is :mod:`unetkit.data.volume_io`.
"""

from __future__ import annotations

from .volume_dataset import RECENT_CASES, VolumeSliceDataset, load_volumes
from .volume_geometry import (
    MAX_SLICE_PIXELS,
    RESAMPLE_TOLERANCE,
    VolumeSettings,
    check_slice_grid,
    context_indices,
    inplane_size,
    max_volume_bytes,
    plan_spacing,
    plan_volume_settings,
    resize_slices,
    slice_axis_for,
    slice_grid,
    stack_context,
    volume_slices,
)
from .volume_scan import (
    CACHE_BYTES,
    CT_MIN_HU,
    VolumeCase,
    VolumeScan,
    check_geometry,
    is_volume_folder,
    load_case,
    scan_volumes,
)

__all__ = [
    "CACHE_BYTES",
    "CT_MIN_HU",
    "MAX_SLICE_PIXELS",
    "RECENT_CASES",
    "RESAMPLE_TOLERANCE",
    "VolumeCase",
    "VolumeScan",
    "VolumeSettings",
    "VolumeSliceDataset",
    "check_geometry",
    "check_slice_grid",
    "context_indices",
    "inplane_size",
    "is_volume_folder",
    "load_case",
    "load_volumes",
    "max_volume_bytes",
    "plan_spacing",
    "plan_volume_settings",
    "resize_slices",
    "scan_volumes",
    "slice_axis_for",
    "slice_grid",
    "stack_context",
    "volume_slices",
]
