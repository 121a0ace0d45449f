"""Writing a dataset as a folder (``images/``, ``masks/``, ``val/...``, ``classes.yaml``)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image

from ..atomic import atomic_write
from .base import SegmentationDataset
from .classes import IGNORE_COLOR
from .errors import DatasetError
from .registry import get_datasets


def _palette(ds: SegmentationDataset) -> list[int]:
    pal = [0] * (256 * 3)
    for i, c in enumerate(ds.class_colors[:256]):
        pal[3 * i: 3 * i + 3] = list(c)
    if 0 <= ds.ignore_index < 256 and ds.ignore_index >= ds.num_classes:
        pal[3 * ds.ignore_index: 3 * ds.ignore_index + 3] = list(IGNORE_COLOR)
    return pal


def save_image(image01: np.ndarray, path_stem: Path, bit_depth: int = 8) -> Path:
    """Save a ``(C, H, W)`` [0, 1] image as PNG (1 or 3 channels; 16-bit RGB and other counts as TIFF)."""
    c = image01.shape[0]
    maxv = 255 if bit_depth == 8 else 65535
    arr = np.clip(np.rint(image01 * maxv), 0, maxv).astype(np.uint8 if bit_depth == 8 else np.uint16)
    hwc = np.ascontiguousarray(arr.transpose(1, 2, 0))
    if c == 1:
        path = path_stem.with_suffix(".png")
        Image.fromarray(hwc[:, :, 0]).save(path)
    elif c == 3 and bit_depth == 8:
        path = path_stem.with_suffix(".png")
        Image.fromarray(hwc).save(path)
    else:
        path = path_stem.with_suffix(".tif")
        tifffile.imwrite(path, hwc, photometric="rgb" if c == 3 else "minisblack")
    return path


def save_mask(mask: np.ndarray, path: Path, palette: list[int] | None) -> None:
    """Save an ``(H, W)`` label mask: palette PNG (index = class) when labels fit 8 bits, else 16-bit PNG."""
    if mask.size == 0 or int(mask.max()) < 256:
        im = Image.fromarray(mask.astype(np.uint8))
        if palette is not None:
            im.putpalette(palette)  # turns the "L" image into a "P" image with the same indices
        im.save(path)
    else:
        Image.fromarray(mask.astype(np.uint16)).save(path)


def _write_split(ds: SegmentationDataset, img_dir: Path, mask_dir: Path, bit_depth: int) -> None:
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    pal = _palette(ds) if ds.num_classes <= 256 else None
    for i, name in enumerate(ds.names):
        image, mask = ds.load_raw(i)
        save_image(image.numpy(), img_dir / name, bit_depth)
        save_mask(mask.numpy(), mask_dir / f"{name}.png", pal)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Create ``out``; a non-empty one only with ``overwrite``, which removes only what an export writes."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file; pass a folder path to export into")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out} is not empty; choose an empty/new folder or pass overwrite=True")
        for sub in ("images", "masks", "val"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
            elif (out / sub).exists():
                (out / sub).unlink()
        for f in ("classes.yaml", "classes.yml", "classes.txt"):
            if (out / f).exists():
                (out / f).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_dataset(
    source: str | os.PathLike | tuple[SegmentationDataset, SegmentationDataset | None],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    bit_depth: int = 8,
    **options: object,
) -> Path:
    """Write a dataset (a built-in name, a folder, or a ``(train, val)`` pair) as a folder dataset.

    Layout: ``out_dir/images`` + ``out_dir/masks`` (training), ``out_dir/val/images`` +
    ``out_dir/val/masks`` (validation), ``out_dir/classes.yaml`` (``names`` and ``colors``). Images are
    un-augmented, scaled [0, 1] -> 8-bit (``bit_depth=16``: 16-bit) PNGs; masks are palette PNGs whose
    palette index is the class (viewers show class colours). Refuses a non-empty ``out_dir`` unless
    ``overwrite=True``, which replaces only ``images/``, ``masks/``, ``val/`` and ``classes.yaml``.
    ``options`` go to :func:`get_datasets` for a name or folder.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if isinstance(source, tuple):
        train, val = source
    else:
        train, val = get_datasets(source, mean=(0.0,), std=(1.0,), **options)  # type: ignore[arg-type]
    out = _prepare_out(Path(out_dir), overwrite)
    _write_split(train, out / "images", out / "masks", bit_depth)
    if val is not None:
        _write_split(val, out / "val" / "images", out / "val" / "masks", bit_depth)
    meta = {"names": list(train.class_names), "colors": [list(c) for c in train.class_colors]}
    (out / "classes.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None), encoding="utf-8")
    return out


def export_ct_chest_volumes(out_dir: str | os.PathLike, *, cases: int = 4, overwrite: bool = False) -> Path:
    """Write the embedded chest CT as a volume folder: ``images/`` and ``masks/`` of NIfTI cases.

    The 34-slice scan becomes ``cases`` interleaved volumes (case ``c`` holds axial slices ``c, c + cases,
    ...``, so every case spans the whole chest at ``cases`` times the slice spacing), each with its true
    position in scanner space (RAS affine), HU as int16 and labels as uint8. With four cases the default
    20 % validation split holds one case, and no slice of it is in training: a split by volume exists with
    nothing downloaded. ``classes.yaml`` names the eight classes.
    """
    import nibabel as nib

    from .ct_chest import CT_CHEST_CLASSES, CT_CHEST_COLORS, load_ct_chest

    if cases < 2:
        raise ValueError(f"cases must be >= 2 so that a split by volume exists, got {cases}")
    out = _prepare_out(Path(out_dir), overwrite)
    vol = load_ct_chest()
    m = vol.ct_ijk_to_lps
    axis = int(np.argmax(np.abs(m[2, :3])))  # the index axis that runs along superior
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir(parents=True)
    for c in range(cases):
        take = [slice(None)] * 3
        take[axis] = slice(c, None, cases)
        affine = m.copy()
        affine[:3, 3] += c * m[:3, axis]  # the first slice of this case
        affine[:3, axis] *= cases
        affine = lps_to_ras @ affine
        for folder, data in (("images", vol.hu_ijk), ("masks", vol.labels_ijk)):
            img = nib.Nifti1Image(np.ascontiguousarray(data[tuple(take)]), affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            path = out / folder / f"ct_chest_{c}.nii.gz"
            data_bytes = gzip.compress(img.to_bytes(), compresslevel=6)
            atomic_write(path, lambda tmp, b=data_bytes: tmp.write_bytes(b))
    meta = {"names": list(CT_CHEST_CLASSES), "colors": [list(col) for col in CT_CHEST_COLORS]}
    (out / "classes.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None),
                                      encoding="utf-8")
    return out
