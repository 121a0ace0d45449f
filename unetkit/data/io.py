"""Reading images and masks from disk (PNG, JPEG, TIFF, BMP; 8/16-bit; grayscale, RGB, palette).

Images come back as ``(H, W, C)`` numpy arrays in their stored integer type (``uint8``/``uint16``; a
float TIFF stays ``float32``); masks as ``(H, W)`` integer arrays, or ``(H, W, 3)`` for colour-coded
RGB masks (the folder dataset maps those through the class colours). Readers raise plain exceptions;
the folder dataset turns them into :class:`~unetkit.data.errors.DatasetError` with the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

#: File extensions recognised as images/masks (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg")

# PIL modes that carry 16-bit samples.
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# PIL modes that are converted to RGB on reading (alpha dropped, other colour spaces converted).
#: The most pixels an image file may have (Pillow's own bound, 179 M, would refuse a 20000 x 20000 slide):
#: a 1 G-pixel grey image is 1 GB decoded, which prediction streams through (unetkit.inference).
MAX_IMAGE_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_PIL_TO_RGB = ("RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa")


@dataclass(frozen=True)
class ImageInfo:
    """What can be learned about an image from its header: size, channels (after dropping alpha), dtype."""

    width: int
    height: int
    channels: int
    dtype: str  # "uint8", "uint16" or "float32"


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_EXTENSIONS


def _tiff_layout(shape: tuple[int, ...], axes: str) -> tuple[int, int, int, str]:
    """(height, width, channels, channel position 'last'/'first'/'none') of a single-series TIFF."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1, "none"
    if len(shape) == 3:
        # tifffile's axes: Y/X are the image plane; the remaining axis is channels (S = samples, else planes).
        if axes.endswith("YX"):
            return shape[1], shape[2], shape[0], "first"
        return shape[0], shape[1], shape[2], "last"
    raise ValueError(f"TIFF has shape {shape} (axes {axes}); only single 2D images with channels are supported")


def read_image_info(path: str | Path) -> ImageInfo:
    """Header-only look at an image (no pixel decoding for PNG/JPEG/BMP/TIFF)."""
    path = Path(path)
    if is_tiff(path):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            h, w, c, _ = _tiff_layout(series.shape, series.axes)
            dtype = np.dtype(series.dtype)
        if c == 4 and dtype == np.uint8:
            c = 3  # RGBA: alpha is dropped
        return ImageInfo(w, h, c, _dtype_name(dtype))
    with Image.open(path) as im:
        w, h = im.size
        mode = im.mode
    if mode in _PIL_16BIT or mode == "I":
        return ImageInfo(w, h, 1, "uint16")
    if mode == "F":
        return ImageInfo(w, h, 1, "float32")
    if mode in ("1", "L", "LA"):
        return ImageInfo(w, h, 1, "uint8")
    return ImageInfo(w, h, 3, "uint8")


def _dtype_name(dtype: np.dtype) -> str:
    if dtype == np.uint8 or dtype == np.bool_:
        return "uint8"
    if dtype == np.uint16:
        return "uint16"
    if dtype.kind == "f":
        return "float32"
    raise ValueError(f"pixel type {dtype} is not supported; save 8-bit or 16-bit unsigned (or float) images")


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to ``(H, W, C)`` ``uint8``/``uint16``/``float32`` (alpha dropped, palette -> RGB)."""
    path = Path(path)
    if is_tiff(path):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _, _, c, where = _tiff_layout(series.shape, series.axes)
            arr = series.asarray()
        if where == "none":
            arr = arr[:, :, None]
        elif where == "first":
            arr = np.moveaxis(arr, 0, -1)
        if c == 4 and arr.dtype == np.uint8:
            arr = arr[:, :, :3]
        name = _dtype_name(arr.dtype)
        return np.ascontiguousarray(arr.astype(name, copy=False))
    with Image.open(path) as im:
        mode = im.mode
        if mode in _PIL_16BIT:
            arr = np.array(im).astype(np.uint16, copy=False)
        elif mode == "I":
            arr = np.array(im)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError("32-bit integer image with values outside 0..65535; save it as 8- or 16-bit")
            arr = arr.astype(np.uint16)
        elif mode == "F":
            arr = np.array(im, dtype=np.float32)
        elif mode == "1":
            arr = np.array(im.convert("L"))
        elif mode == "L":
            arr = np.array(im)
        elif mode == "LA":
            arr = np.array(im.getchannel(0))
        elif mode == "RGB":
            arr = np.array(im)
        else:
            arr = np.array(im.convert("RGB"))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a mask to an ``(H, W)`` integer label array (or ``(H, W, 3)`` for an RGB mask).

    Palette ("P") PNGs give their palette indices (PASCAL VOC style: index = class), never colours;
    bilevel images give 0/1; 16-bit masks give ``uint16``. JPEG masks are refused because lossy
    compression changes label values at every edge.
    """
    path = Path(path)
    if path.suffix.lower() in JPEG_EXTENSIONS:
        raise ValueError("JPEG masks are lossy (compression alters label values); save masks as PNG")
    if is_tiff(path):
        arr = tifffile.imread(path)
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[:, :, :3]
    else:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L", "I") or mode in _PIL_16BIT:
                arr = np.array(im)
            elif mode == "1":
                arr = np.array(im).astype(np.uint8)
            elif mode in ("LA", "PA"):
                arr = np.array(im.getchannel(0))
            elif mode == "F":
                arr = np.array(im, dtype=np.float32)
            else:
                arr = np.array(im.convert("RGB"))
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"mask has shape {arr.shape}; expected a single-channel (H, W) label image")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("mask has non-integer values; save class indices as an 8/16-bit integer PNG")
        arr = arr.astype(np.int64)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise ValueError(f"mask has negative value {int(arr.min())}; class indices must be >= 0")
        if arr.size and arr.max() > 65535:
            raise ValueError(f"mask has value {int(arr.max())} > 65535; class indices must fit 16 bits")
        arr = arr.astype(np.uint16 if arr.size and arr.max() > 255 else np.uint8)
    return np.ascontiguousarray(arr)


def channels_convertible(have: int, want: int) -> bool:
    """Whether :func:`convert_channels` turns ``have`` channels into ``want``: grey -> any, RGB -> grey.

    The one rule for training data and for images given to a trained model; other conversions (e.g. 2 -> 3)
    would invent or drop information, so they are refused.
    """
    return have == want or have == 1 or (have, want) == (3, 1)


def convert_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert an ``(H, W, C)`` image to ``channels`` (1 -> 3 replicates; 3 -> 1 uses ITU-R 601 luma)."""
    c = arr.shape[-1]
    if c == channels:
        return arr
    if c == 1:
        return np.repeat(arr, channels, axis=-1)
    if c == 3 and channels == 1:
        luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if arr.dtype.kind in "ui":
            luma = np.clip(np.rint(luma), 0, np.iinfo(arr.dtype).max)
        return luma.astype(arr.dtype)[:, :, None]
    raise ValueError(f"cannot convert a {c}-channel image to {channels} channels")


def scale_of(dtype: np.dtype) -> float:
    """The divisor that maps a stored pixel type onto [0, 1]: 255 (8-bit), 65535 (16-bit), 1 (float)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


def to_image_tensor(chw: np.ndarray) -> torch.Tensor:
    """A fresh float32 ``(C, H, W)`` tensor in [0, 1] from a stored ``(C, H, W)`` array (never aliases it)."""
    t = torch.from_numpy(chw).to(torch.float32, copy=True)
    s = scale_of(chw.dtype)
    if s != 1.0:
        t.mul_(1.0 / s)
    return t


def to_mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """A fresh int64 ``(H, W)`` tensor from a stored mask array."""
    return torch.from_numpy(mask).to(torch.int64, copy=True)
