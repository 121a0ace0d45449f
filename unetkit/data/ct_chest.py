"""The embedded ``ct-chest`` dataset: 3D Slicer's chest CT sample shipped inside ``slicerio`` (MIT).

Source files (in the installed ``slicerio`` package, ``slicerio/data``): ``CTChest4.nrrd`` (a 128x128x34
CT volume in Hounsfield units, 3.05 x 3.05 mm pixels, 10 mm slices) and ``Segmentation.seg.nrrd`` (a
3D Slicer segmentation with 7 segments). Nothing is downloaded.

Processing:

* The CT is read with :func:`unetkit.data.volume_io.read_volume` (voxels ``(I, J, K)``, affine to RAS); the
  label map is brought into the CT voxel grid through both files' physical geometry (IJK -> LPS): identical grids are copied, an integer
  voxel offset (a segmentation that covers a sub-region, cf. ``Segmentation_ReferenceImageExtentOffset``)
  is pasted in place, anything else is resampled with nearest neighbour.
* Segments are collapsed to one label per voxel in the order below; where segments overlap the more
  specific structure wins (bone > lung > soft tissue). In the shipped file they do not overlap.
* Slices are taken along the axial (superior) axis, ordered inferior -> superior, and shown in the
  radiological convention: anterior at the top, patient's right on the image's left.
* HU are windowed linearly from [-1000, 1000] to [0, 1] (one channel): air and lung (-1000..-500),
  fat/soft tissue (-100..100) and bone (+200..+1000) all keep contrast in one window; the scanner's
  -3024 padding outside the field of view clips to 0 like air.
* Split: validation = slices with index % 4 == 2 (8 slices), training = the other 26.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage
import slicerio

from .base import ArrayDataset, JointTransformFn
from .classes import Color
from .errors import DatasetError
from .formats.itk import LPS_TO_RAS
from .volume_io import VolumeError, read_volume

if TYPE_CHECKING:
    from importlib.abc import Traversable

CT_CHEST_CLASSES: tuple[str, ...] = (
    "background", "ribs", "cervical vertebrae", "thoracic vertebrae", "lumbar vertebrae",
    "right lung", "left lung", "soft tissue",
)
#: Distinct display colours (Slicer's own colours make the four bone classes near-identical beiges).
CT_CHEST_COLORS: tuple[Color, ...] = (
    (0, 0, 0), (250, 220, 40), (245, 130, 40), (230, 40, 40), (160, 50, 200),
    (30, 110, 230), (40, 200, 210), (120, 200, 90),
)
#: Segment names in ``Segmentation.seg.nrrd`` -> our class index.
SEGMENT_TO_CLASS: dict[str, int] = {
    "ribs": 1, "cervical vertebral column": 2, "thoracic vertebral column": 3, "lumbar vertebral column": 4,
    "right lung": 5, "left lung": 6, "tissue": 7,
}
#: Collapse order, lowest priority first (later segments overwrite earlier ones where they overlap).
SEGMENT_PRIORITY: tuple[str, ...] = (
    "tissue", "right lung", "left lung", "lumbar vertebral column", "thoracic vertebral column",
    "cervical vertebral column", "ribs",
)
#: HU window mapped to [0, 1].
CT_CHEST_WINDOW: tuple[float, float] = (-1000.0, 1000.0)


@dataclass(frozen=True)
class CTChestVolume:
    """The decoded sample: ``hu`` (int16) and ``labels`` (uint8), both ``(slices, rows, cols)``.

    Slices run inferior -> superior; rows anterior -> posterior; columns patient right -> left.
    ``ct_ijk_to_lps``/``seg_ijk_to_lps`` are the 4x4 voxel-to-LPS (mm) matrices of the source files,
    ``slice_z`` the superior coordinate (mm) of each slice, ``segment_names`` the names found in the file.
    ``hu_ijk``/``labels_ijk`` are the same voxels on the CT file's own grid (index order of ``ct_ijk_to_lps``).
    """

    hu: np.ndarray
    labels: np.ndarray
    ct_ijk_to_lps: np.ndarray
    seg_ijk_to_lps: np.ndarray
    slice_z: np.ndarray
    segment_names: tuple[str, ...]
    hu_ijk: np.ndarray
    labels_ijk: np.ndarray


def data_file(name: str) -> Traversable:
    """A file of slicerio's bundled sample data (``slicerio/data/<name>``)."""
    return importlib.resources.files(slicerio).joinpath("data", name)


def _ct_ijk_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """The voxel-to-LPS matrix of a voxel-to-RAS affine (x and y flipped; Slicer's and slicerio's space)."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def resample_labels(labels: np.ndarray, src_ijk_to_lps: np.ndarray, ref_ijk_to_lps: np.ndarray,
                    ref_shape: Sequence[int]) -> np.ndarray:
    """Bring a label volume onto a reference voxel grid (nearest neighbour; outside = 0).

    The map from reference voxel indices to source voxel indices is ``inv(src) @ ref``. When it is the
    identity plus an integer offset (same spacing and axes; the segmentation covers a sub-region or
    extends past the reference) the labels are pasted directly; otherwise they are resampled.
    """
    ref_to_src = np.linalg.inv(src_ijk_to_lps) @ ref_ijk_to_lps
    lin, off = ref_to_src[:3, :3], ref_to_src[:3, 3]
    out = np.zeros(tuple(ref_shape), dtype=labels.dtype)
    if np.allclose(lin, np.eye(3), atol=1e-4) and np.allclose(off, np.round(off), atol=1e-3):
        o = np.round(off).astype(int)  # reference index i <-> source index i + o
        src_sl, dst_sl = [], []
        for ax in range(3):
            lo = max(0, -o[ax])
            hi = min(ref_shape[ax], labels.shape[ax] - o[ax])
            if hi <= lo:
                return out
            dst_sl.append(slice(lo, hi))
            src_sl.append(slice(lo + o[ax], hi + o[ax]))
        out[tuple(dst_sl)] = labels[tuple(src_sl)]
        return out
    return scipy.ndimage.affine_transform(labels, lin, offset=off, output_shape=tuple(ref_shape),
                                          order=0, mode="constant", cval=0)


def _to_display(volume: np.ndarray, ijk_to_lps: np.ndarray) -> np.ndarray:
    """Reorder a volume to (inferior->superior slices, anterior->posterior rows, right->left columns)."""
    dirs = ijk_to_lps[:3, :3]
    comp = [int(np.argmax(np.abs(dirs[:, a]))) for a in range(3)]  # LPS axis each index axis follows
    if sorted(comp) != [0, 1, 2]:
        raise DatasetError("CTChest4.nrrd: oblique volume axes; cannot find the axial slices")
    for a in range(3):
        if dirs[comp[a], a] < 0:
            volume = np.flip(volume, axis=a)
    order = [comp.index(2), comp.index(1), comp.index(0)]  # S (slices), P (rows), L (columns)
    return np.ascontiguousarray(volume.transpose(order))


@functools.lru_cache(maxsize=1)
def load_ct_chest() -> CTChestVolume:
    """Read and align the CT and its segmentation (cached: about 50 ms the first time)."""
    with importlib.resources.as_file(data_file("CTChest4.nrrd")) as ct_path, \
            importlib.resources.as_file(data_file("Segmentation.seg.nrrd")) as seg_path:
        if not ct_path.is_file() or not seg_path.is_file():
            raise DatasetError("slicerio/data/CTChest4.nrrd or Segmentation.seg.nrrd is missing; reinstall "
                               "slicerio (pip install --force-reinstall slicerio)")
        try:
            ct_volume = read_volume(ct_path)
        except VolumeError as e:
            raise DatasetError(f"slicerio/data/CTChest4.nrrd cannot be read ({e}); reinstall slicerio "
                               "(pip install --force-reinstall slicerio)") from e
        seg = slicerio.read_segmentation(str(seg_path))
    ct = ct_volume.array
    ct_m = _ct_ijk_to_lps(ct_volume.affine)
    seg_m = np.asarray(seg["ijkToLPS"], dtype=float)
    names = tuple(s.get("name", "") for s in seg["segments"])
    missing = [n for n in SEGMENT_TO_CLASS if n not in names]
    if missing:
        raise DatasetError(f"slicerio/data/Segmentation.seg.nrrd lacks segment(s) {missing} (found {list(names)}); "
                           "this slicerio version ships different sample data; pin slicerio==1.4")
    collapsed = slicerio.extract_segments(seg, [(n, SEGMENT_TO_CLASS[n]) for n in SEGMENT_PRIORITY])
    labels_ijk = resample_labels(np.asarray(collapsed["voxels"]).astype(np.uint8), seg_m, ct_m, ct.shape)
    hu_ijk = np.asarray(ct).astype(np.int16)
    hu = _to_display(hu_ijk, ct_m)
    labels = _to_display(labels_ijk, ct_m)
    slice_axis = int(np.argmax(np.abs(ct_m[2, :3])))
    z = ct_m[2, 3] + ct_m[2, slice_axis] * np.arange(ct.shape[slice_axis])
    return CTChestVolume(hu=hu, labels=labels, ct_ijk_to_lps=ct_m, seg_ijk_to_lps=seg_m,
                         slice_z=np.sort(z), segment_names=names, hu_ijk=hu_ijk, labels_ijk=labels_ijk)


def window_hu(hu: np.ndarray, window: tuple[float, float] = CT_CHEST_WINDOW) -> np.ndarray:
    """Linear HU window ``[low, high]`` -> float32 [0, 1] (clipped)."""
    lo, hi = window
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def ct_chest_split(num_slices: int) -> dict[str, list[int]]:
    """Slice indices per split: validation = index % 4 == 2, training = the rest."""
    val = [i for i in range(num_slices) if i % 4 == 2]
    return {"train": [i for i in range(num_slices) if i % 4 != 2], "val": val, "all": list(range(num_slices))}


class CTChestDataset(ArrayDataset):
    """One split of ``ct-chest``: 1-channel 128x128 windowed CT slices with 8-class masks.

    ``split`` is ``"train"`` (26 slices), ``"val"`` (8) or ``"all"`` (34). ``in_channels=3`` replicates
    the channel (for RGB-pretrained encoders). Samples are named ``slice_000`` .. ``slice_033``
    (index along the inferior -> superior axis).
    """

    def __init__(
        self,
        split: str = "train",
        *,
        window: tuple[float, float] = CT_CHEST_WINDOW,
        in_channels: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: JointTransformFn | None = None,
    ) -> None:
        vol = load_ct_chest()
        splits = ct_chest_split(vol.hu.shape[0])
        if split not in splits:
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if window[1] <= window[0]:
            raise ValueError(f"window must be (low, high) with low < high, got {window}")
        idx = splits[split]
        images = [window_hu(vol.hu[i], window)[None] for i in idx]
        masks = [vol.labels[i] for i in idx]
        names = [f"slice_{i:03d}" for i in idx]
        self.window = (float(window[0]), float(window[1]))
        self.slice_indices = idx
        super().__init__(
            images, masks, name="ct-chest", split=split, num_classes=len(CT_CHEST_CLASSES),
            in_channels=in_channels, class_names=CT_CHEST_CLASSES, class_colors=CT_CHEST_COLORS,
            ignore_index=255, names=names, image_paths=[f"<ct-chest>/images/{n}" for n in names],
            mask_paths=[f"<ct-chest>/masks/{n}" for n in names], mean=mean, std=std, transform=transform,
        )
