"""NRRD volumes (``.nrrd``, ``.seg.nrrd``) through pynrrd.

pynrrd's ``'F'`` index order is already ``(I, J, K)``; the header's ``space`` (left-posterior-superior
unless it says otherwise) tells the signs that turn its ``space directions``/``space origin`` into RAS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import Volume, VolumeError, VolumeFormat, as_3d_shape, native_byte_order

# NRRD spaces we understand -> the signs that turn their coordinates into RAS.
SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
}
DEFAULT_SPACE = "left-posterior-superior"  # what ITK assumes for a NRRD without a named space
_SPATIAL_KINDS = ("domain", "space")


def _layout(header: dict) -> tuple[list[int], list[bool]]:
    """Sizes of all axes and which of them are spatial (a 'space directions' row, or a spatial kind)."""
    sizes = [int(s) for s in np.atleast_1d(header["sizes"])]
    directions = header.get("space directions")
    if directions is not None:
        spatial = []
        for row in directions:
            values = None if row is None else np.asarray(row, dtype=np.float64)
            spatial.append(values is not None and values.size > 0 and bool(np.all(np.isfinite(values))))
    elif header.get("kinds") is not None:
        spatial = [str(k).lower() in _SPATIAL_KINDS for k in header["kinds"]]
    else:
        spatial = [True] * len(sizes)
    if len(spatial) != len(sizes):
        raise VolumeError(f"NRRD header describes {len(spatial)} axes for {len(sizes)} sizes")
    return sizes, spatial


def _space_signs(header: dict) -> tuple[float, float, float]:
    space = header.get("space")
    if space is None:
        return SPACE_SIGNS[DEFAULT_SPACE]
    signs = SPACE_SIGNS.get(str(space).lower())
    if signs is None:
        raise VolumeError(f"NRRD space {space!r} is not supported; expected left-posterior-superior, "
                          "right-anterior-superior or left-anterior-superior")
    return signs


def geometry_of_header(header: dict) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape (I, J, K), RAS affine) of a NRRD header."""
    sizes, spatial = _layout(header)
    keep = [a for a in range(len(sizes)) if spatial[a] or sizes[a] != 1]  # drop singleton non-spatial axes
    if any(not spatial[a] for a in keep) or len(keep) not in (2, 3):
        raise VolumeError(f"volume has shape {tuple(sizes)}; only 3D volumes are supported")
    shape = as_3d_shape(tuple(sizes[a] for a in keep))
    native = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        cols = [np.asarray(directions[a], dtype=np.float64) for a in keep]
        if any(c.shape != (3,) for c in cols):
            raise VolumeError("only NRRD volumes in a 3D space are supported")
    else:
        spacings = header.get("spacings")
        cols = []
        for n, a in enumerate(keep):
            step = float(spacings[a]) if spacings is not None and np.isfinite(float(spacings[a])) else 1.0
            cols.append(np.eye(3)[n] * step)
    if len(cols) == 2:  # a 2D image: one slice along the normal of its plane
        normal = np.cross(cols[0], cols[1])
        cols.append(normal / np.linalg.norm(normal) if np.linalg.norm(normal) > 0 else np.eye(3)[2])
    native[:3, :3] = np.stack(cols, axis=1)
    origin = header.get("space origin")
    if origin is not None:
        native[:3, 3] = np.asarray(origin, dtype=np.float64)
    return shape, np.diag([*_space_signs(header), 1.0]) @ native


def geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape ``(I, J, K)`` and RAS affine from the header."""
    import nrrd

    return geometry_of_header(nrrd.read_header(str(path)))


def read(path: Path) -> Volume:
    """The voxels in ``(I, J, K)`` order with the header's geometry in RAS."""
    import nrrd

    data, header = nrrd.read(str(path), index_order="F")  # 'F': axes in the header's order, i.e. (I, J, K)
    shape, affine = geometry_of_header(header)
    array = native_byte_order(np.asarray(data)).reshape(shape, order="A")
    return Volume(array, affine, path, "nrrd", header)


def write(reference: Volume, labels: np.ndarray, target: Path) -> None:
    """Labels as gzip NRRD in the reference's space (LPS for a reference of another format)."""
    import nrrd

    ref_header = reference.header if reference.format == "nrrd" and isinstance(reference.header, dict) else {}
    space = ref_header.get("space")
    if space is None or str(space).lower() not in SPACE_SIGNS:
        space = DEFAULT_SPACE
    native = np.diag([*SPACE_SIGNS[str(space).lower()], 1.0]) @ np.asarray(reference.affine, np.float64)
    header: dict[str, Any] = {
        "dimension": 3,
        "space": space,
        "space directions": native[:3, :3].T,  # one row per index axis
        "space origin": native[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    if ref_header.get("space units") is not None:
        header["space units"] = list(ref_header["space units"])
    nrrd.write(str(target), labels, header, index_order="F")


FORMAT = VolumeFormat("nrrd", "NRRD", (".seg.nrrd", ".nrrd"), read, geometry, write, lambda reference: ".nrrd")
