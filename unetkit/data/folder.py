"""Folder datasets: ``images/`` + ``masks/`` matched by file stem (:mod:`unetkit.data.pairing`), validated
up front.

Layouts (``DIR`` is the dataset folder)::

    DIR/images, DIR/masks                  training pool (split by val_fraction/seed unless DIR/val exists)
    DIR/train/images, DIR/train/masks      same, alternative name
    DIR/val/images, DIR/val/masks          explicit validation set (optional)
    DIR/classes.yaml or DIR/classes.txt    class names (and colours) (optional)

The whole dataset is checked before anything is returned (see :func:`scan_folder`): pairing, readable
files, sizes, channel counts and label values. Problems raise :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .base import SegmentationDataset
from .classes import Color, default_colors, default_names, read_class_file
from .errors import DatasetError
from .pairing import Pairing, describe_rules, index_by_name, pair_by_name, rel
from .splits import split_indices, split_items

__all__ = ["FolderDataset", "FolderScan", "load_folder", "scan_folder", "split_indices", "split_items"]
from .io import (
    IMAGE_EXTENSIONS,
    ImageInfo,
    channels_convertible,
    convert_channels,
    is_tiff,
    read_image,
    read_image_info,
    read_mask,
)

logger = logging.getLogger("unetkit.data")

#: Datasets whose decoded images + masks fit in this many bytes are cached in memory (``cache=None``).
AUTO_CACHE_BYTES = 1 << 30


@dataclass
class _Pair:
    stem: str
    image: Path
    mask: Path
    rel_image: str  # path relative to the dataset folder, for messages
    rel_mask: str
    info: ImageInfo | None = None
    values: np.ndarray | None = None  # label values present in the (raw) mask
    mask_data: np.ndarray | None = None
    image_data: np.ndarray | None = None  # (C, H, W) when cached


@dataclass
class FolderScan:
    """Everything learned by validating a dataset folder; both splits are built from one scan."""

    root: Path
    train: list[_Pair]
    val: list[_Pair]
    num_classes: int
    in_channels: int
    class_names: list[str]
    class_colors: list[Color]
    ignore_index: int
    binary: bool
    cached: bool
    val_source: str  # "folder", "fraction" or "none"
    color_lut: dict[int, int] | None = field(default=None, repr=False)
    pairing_rule: str = ""  # how masks were paired with images, e.g. "masks paired by the suffix _mask"


def _list_images(root: Path, folder: Path) -> dict[str, Path]:
    """Supported image files directly inside ``folder`` by (normalised) stem; hidden files skipped."""
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.is_file()
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    return index_by_name(root, files, lambda p: p.stem, "share the stem",
                         "rename or remove one so each image has exactly one mask")


def _pair_folder(root: Path, img_dir: Path, mask_dir: Path) -> tuple[list[_Pair], Pairing]:
    if not mask_dir.is_dir():
        raise DatasetError(f"{rel(root, mask_dir)}/ not found next to {rel(root, img_dir)}/; put one mask per "
                           "image there with the same file stem (see docs/data.md)")
    images = _list_images(root, img_dir)
    if not images:
        raise DatasetError(f"{rel(root, img_dir)}/ contains no images (supported: {' '.join(IMAGE_EXTENSIONS)}); "
                           "add images or point to the right folder")
    pairing = pair_by_name(root, img_dir, mask_dir, images, _list_images(root, mask_dir))
    return [_Pair(m.stem, m.image, m.mask, rel(root, m.image), rel(root, m.mask)) for m in pairing.matches], pairing


def _layout(root: Path) -> tuple[list[_Pair], list[_Pair] | None, str]:
    """``(train pairs, val pairs or None, pairing rule)`` of a dataset folder."""
    if not root.exists():
        raise DatasetError(f"{root} does not exist; pass a dataset folder (with images/ and masks/) "
                           "or a built-in dataset name")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; pass a folder with images/ and masks/")
    if (root / "images").is_dir():
        train_dirs = (root / "images", root / "masks")
    elif (root / "train" / "images").is_dir():
        train_dirs = (root / "train" / "images", root / "train" / "masks")
    else:
        raise DatasetError(f"{root} has no images/ folder; expected {root}/images + {root}/masks "
                           "(or train/images + train/masks, optional val/images + val/masks)")
    train, pairing = _pair_folder(root, *train_dirs)
    pairings = [pairing]
    val = None
    if (root / "val" / "images").is_dir():
        val, val_pairing = _pair_folder(root, root / "val" / "images", root / "val" / "masks")
        pairings.append(val_pairing)
    elif (root / "val" / "masks").is_dir():
        raise DatasetError(f"{root}/val/masks exists but {root}/val/images does not; add val/images or remove val/")
    return train, val, describe_rules(pairings)


def _read_pair(pair: _Pair) -> None:
    """Header of the image, full mask; errors name the file and the fix."""
    try:
        pair.info = read_image_info(pair.image)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise DatasetError(f"{pair.rel_image} cannot be read ({_why(e)}); re-save it as PNG/TIFF or remove it") from e
    try:
        mask = read_mask(pair.mask)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{pair.rel_mask} cannot be read as a mask ({_why(e)}); re-save it as a "
                           "single-channel PNG of class indices or remove it") from e
    if mask.shape[:2] != (pair.info.height, pair.info.width):
        mh, mw = mask.shape[:2]
        raise DatasetError(f"{pair.rel_mask} is {mw}x{mh} but its image {pair.rel_image} is "
                           f"{pair.info.width}x{pair.info.height} (WxH); resize or re-export the mask to match")
    pair.mask_data = mask


def _needed(pairs: list[_Pair], ignore_index: int) -> int:
    """Number of classes the masks' label values call for (largest label + 1, ``ignore_index`` aside)."""
    values = np.concatenate([p.values for p in pairs if p.values is not None])
    values = values[values != ignore_index]
    return int(values.max()) + 1 if values.size else 1


def _why(e: Exception) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:200]


def _read_checked(pair: _Pair) -> np.ndarray:
    """Decode ``(H, W, C)``, refusing corrupt files and non-finite float pixels; errors name the file."""
    try:
        arr = read_image(pair.image)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{pair.rel_image} cannot be decoded ({_why(e)}); the file is corrupt or truncated, "
                           "re-export it or remove it") from e
    _check_finite(pair, arr)
    return arr


def _decode_image(pair: _Pair, in_channels: int) -> np.ndarray:
    """Full decode as ``(C, H, W)`` with ``in_channels`` channels; errors name the file."""
    arr = _read_checked(pair)
    if arr.shape[-1] != in_channels:
        arr = convert_channels(arr, in_channels)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _check_finite(pair: _Pair, arr: np.ndarray) -> None:
    """Refuse float pixels that are NaN or infinite: they would turn the loss into NaN mid-epoch."""
    if arr.dtype.kind != "f" or np.isfinite(arr).all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    raise DatasetError(f"{pair.rel_image} has {n_nan} NaN and {n_inf} infinite pixel(s); replace them with finite "
                       "values (e.g. numpy.nan_to_num) and re-save it, or remove the image")


def _verify_image(pair: _Pair) -> None:
    """Integrity check for uncached datasets: PNG chunk CRCs etc. without decoding; float images decoded.

    Float images are decoded in full because only their pixels can tell NaN or infinite values.
    """
    if pair.info is not None and pair.info.dtype == "float32":
        _read_checked(pair)
        return
    if is_tiff(pair.image):
        return
    try:
        with Image.open(pair.image) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{pair.rel_image} is corrupt ({_why(e)}); re-export it or remove it") from e


def _map_rgb_mask(pair: _Pair, colors: list[Color] | None, where: str | None,
                  lut: dict[int, int]) -> np.ndarray:
    """Turn an ``(H, W, 3)`` mask into labels: gray (r=g=b) gives the gray value, else class colours."""
    m = pair.mask_data
    assert m is not None
    if np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 0], m[..., 2]):
        return np.ascontiguousarray(m[..., 0])
    if colors is None:
        raise DatasetError(f"{pair.rel_mask} is a colour (RGB) mask; save class-index or palette PNGs, or list "
                           "the class colours in classes.yaml (colors:) so they can be mapped")
    codes = (m[..., 0].astype(np.int32) << 16) | (m[..., 1].astype(np.int32) << 8) | m[..., 2].astype(np.int32)
    uniq, inv = np.unique(codes, return_inverse=True)
    out_vals = np.empty(len(uniq), dtype=np.uint16)
    for i, code in enumerate(uniq.tolist()):
        if code not in lut:
            rgb = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            raise DatasetError(f"{pair.rel_mask}: colour {rgb} is not a class colour in {where}; fix the mask "
                               "or add the colour")
        out_vals[i] = lut[code]
    out = out_vals[inv.reshape(codes.shape)]
    return out.astype(np.uint8) if out.size == 0 or out.max() < 256 else out


def scan_folder(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    in_channels: int | None = None,
    ignore_index: int = 255,
    binary: bool | None = None,
    cache: bool | None = None,
    num_threads: int | None = None,
) -> FolderScan:
    """Validate a dataset folder completely and work out its metadata.

    Reads every image header and every mask once (masks must be read to check labels), in a few
    threads. Decides binary 0/255 masks (``binary=None``: when all mask values across the dataset are
    exactly {0, 255}), ``num_classes`` (given > classes file > max label + 1), ``in_channels`` (given, or
    the images' common channel count) and whether to cache decoded data in memory (``cache=None``: when
    it fits :data:`AUTO_CACHE_BYTES`). Raises :class:`DatasetError` on the first problem, in file order.
    """
    root = Path(root)
    train_all, val_all, pairing_rule = _layout(root)
    train_pairs, val_pairs, val_source = split_items(train_all, val_all, val_fraction, seed)
    pairs = train_pairs + val_pairs
    names_file, colors_file, class_file = read_class_file(root)
    threads = num_threads or min(8, (os.cpu_count() or 1) + 2)

    # Pass 1: image headers + all masks (in file order for deterministic first-error reporting).
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(_read_pair, pairs):
            pass

    # Channels.
    first = pairs[0]
    assert first.info is not None
    if in_channels is None:
        for p in pairs:
            assert p.info is not None
            if p.info.channels != first.info.channels:
                raise DatasetError(f"{p.rel_image} has {p.info.channels} channels but {first.rel_image} has "
                                   f"{first.info.channels}; convert all images to the same mode (all grayscale "
                                   "or all RGB), or set --in-channels to convert them on load")
        in_channels = first.info.channels
    else:
        for p in pairs:
            assert p.info is not None
            c = p.info.channels
            if not channels_convertible(c, in_channels):
                raise DatasetError(f"{p.rel_image} has {c} channels but the model takes {in_channels} (--in-channels); "
                                   "only grey -> any and RGB -> grey are converted: convert the image or change "
                                   "--in-channels")

    # RGB (colour-coded) masks -> labels.
    lut: dict[int, int] = {}
    if colors_file is not None:
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colors_file)}
    for p in pairs:
        if p.mask_data is not None and p.mask_data.ndim == 3:
            p.mask_data = _map_rgb_mask(p, colors_file, class_file, lut)

    # Label values present per mask, and over the dataset.
    union = np.zeros(65536, dtype=bool)
    for p in pairs:
        assert p.mask_data is not None
        counts = np.bincount(p.mask_data.ravel(), minlength=1)
        p.values = np.flatnonzero(counts)
        union[p.values] = True
    present = np.flatnonzero(union)
    if binary is None:
        binary = bool(present.size) and set(present.tolist()) == {0, 255}
    if binary:
        bad = present[(present != 0) & (present != 255)]
        if bad.size:
            p = next(p for p in pairs if np.isin(p.values, bad).any())
            raise DatasetError(f"{p.rel_mask}: value {int(np.intersect1d(p.values, bad)[0])} in a binary 0/255 "
                               "mask set; use only 0 and 255, or read the masks as class indices "
                               "(binary=False in Python)")
        logger.warning("%s: masks contain only the values 0 and 255; treating them as binary (255 -> class 1, "
                       "no ignore pixels). To keep 255 as ignore_index, store the classes as indices 0, 1, ... "
                       "in the masks.", root)
        for p in pairs:
            assert p.mask_data is not None and p.values is not None
            p.mask_data = (p.mask_data == 255).astype(np.uint8)
            p.values = np.unique(np.where(p.values == 255, 1, p.values))

    # Number of classes.
    where = "num_classes"
    if names_file is not None:
        if num_classes is not None and num_classes != len(names_file):
            raise DatasetError(f"{class_file} lists {len(names_file)} classes but num_classes is {num_classes} "
                               f"(--num-classes or the model's); make them agree (edit {class_file}, or drop "
                               "--num-classes to use its count)")
        num_classes = len(names_file)
        where = f"num_classes from {class_file}"
    elif num_classes is None:
        if binary:
            num_classes = 2
        else:
            labels = present[present != ignore_index]
            num_classes = max(2, int(labels.max()) + 1 if labels.size else 2)
    if num_classes < 1:
        raise DatasetError(f"--num-classes must be >= 1, not {num_classes}")
    if 0 <= ignore_index < num_classes:
        raise DatasetError(f"ignore_index {ignore_index} is also a class index (num_classes {num_classes}); "
                           "choose an --ignore-index >= num_classes (or a negative one)")
    for p in pairs:
        assert p.values is not None
        bad = p.values[(p.values >= num_classes) & (p.values != ignore_index)]
        if bad.size:
            fix = (f"add the class to {class_file} or fix the mask" if names_file is not None
                   else f"fix the mask, or train with --num-classes {_needed(pairs, ignore_index)} (or leave "
                        "it out)")
            raise DatasetError(f"{p.rel_mask}: label value {int(bad.max())} >= {where} {num_classes}; {fix}")

    class_names = names_file or default_names(num_classes, binary=binary)
    class_colors = colors_file or default_colors(num_classes)

    # Cache decision and image decode/verify (corrupt pixel data is found here, before training).
    assert all(p.info is not None for p in pairs)
    nbytes = sum(p.info.width * p.info.height * (in_channels * (1 if p.info.dtype == "uint8" else 2 if
                 p.info.dtype == "uint16" else 4) + 1) for p in pairs if p.info is not None)
    cached = nbytes <= AUTO_CACHE_BYTES if cache is None else bool(cache)
    with ThreadPoolExecutor(threads) as pool:
        if cached:
            for p, arr in zip(pairs, pool.map(lambda q: _decode_image(q, in_channels), pairs), strict=True):
                p.image_data = arr
        else:
            for _ in pool.map(_verify_image, pairs):
                pass
            for p in pairs:
                p.mask_data = None  # re-read on demand
    return FolderScan(root=root, train=train_pairs, val=val_pairs, num_classes=num_classes,
                      in_channels=in_channels, class_names=list(class_names), class_colors=list(class_colors),
                      ignore_index=ignore_index, binary=binary, cached=cached, val_source=val_source,
                      color_lut=lut or None, pairing_rule=pairing_rule)


class FolderDataset(SegmentationDataset):
    """One split (``"train"``, ``"val"`` or ``"all"``) of a validated folder dataset.

    Build both splits at once (one validation pass) with :func:`load_folder` or
    :func:`unetkit.data.get_datasets`; ``FolderDataset(root, split=...)`` scans on its own.
    Extra attributes: ``root``, ``binary``, ``cached``, ``pairing_rule`` (see :attr:`FolderScan.pairing_rule`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        scan: FolderScan | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: object | None = None,
        **scan_options: object,
    ) -> None:
        if scan is None:
            if root is None:
                raise ValueError("FolderDataset needs a root folder or a scan")
            scan = scan_folder(root, **scan_options)  # type: ignore[arg-type]
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if split == "all":  # file order (for a fraction split: the original sorted order)
            pairs = sorted(scan.train + scan.val, key=lambda p: p.rel_image)
        else:
            pairs = scan.train if split == "train" else scan.val
        self.root = scan.root
        self.binary = scan.binary
        self.cached = scan.cached
        self.pairing_rule = scan.pairing_rule
        self._color_lut = scan.color_lut
        self._pairs = pairs
        super().__init__(
            name=str(scan.root), split=split, num_classes=scan.num_classes, in_channels=scan.in_channels,
            class_names=scan.class_names, class_colors=scan.class_colors, ignore_index=scan.ignore_index,
            names=[p.stem for p in pairs], image_paths=[str(p.image) for p in pairs],
            mask_paths=[str(p.mask) for p in pairs], mean=mean, std=std, transform=transform,  # type: ignore[arg-type]
        )

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self._pairs[index]
        image = p.image_data if p.image_data is not None else _decode_image(p, self.in_channels)
        mask = p.mask_data if p.mask_data is not None else self._read_mask(p)
        return image, mask

    def image_size(self, index: int) -> tuple[int, int]:
        info = self._pairs[index].info
        assert info is not None
        return info.height, info.width

    def dtype(self, index: int) -> str:
        """Stored pixel type of image ``index`` (``uint8``, ``uint16`` or ``float32``), from its header."""
        info = self._pairs[index].info
        assert info is not None
        return info.dtype

    def _read_mask(self, p: _Pair) -> np.ndarray:
        mask = read_mask(p.mask)
        if mask.ndim == 3:
            q = _Pair(p.stem, p.image, p.mask, p.rel_image, p.rel_mask, mask_data=mask)
            colors = self.class_colors if self._color_lut else None
            mask = _map_rgb_mask(q, colors, "classes.yaml", self._color_lut or {})
        if self.binary:
            mask = (mask == 255).astype(np.uint8)
        return mask


def load_folder(
    root: str | os.PathLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **scan_options: object,
) -> tuple[FolderDataset, FolderDataset | None]:
    """Validate ``root`` once and return ``(train, val)``; ``val`` is ``None`` when there is none.

    ``scan_options`` are those of :func:`scan_folder`. Normalisation statistics are not computed here
    (see :func:`unetkit.data.get_datasets`).
    """
    scan = scan_folder(root, **scan_options)  # type: ignore[arg-type]
    train = FolderDataset(scan=scan, split="train", mean=mean, std=std)
    val = FolderDataset(scan=scan, split="val", mean=mean, std=std) if scan.val else None
    return train, val
