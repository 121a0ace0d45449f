"""Predicting files and folders into an output folder: what ``unetkit predict`` does with its inputs.

For each image ``<stem>.<ext>`` it writes ``<stem>_mask.png`` (palette PNG, pixel value = class index,
palette = class colours, at the image's size), ``<stem>_overlay.png`` (the image with the classes blended in
and a class legend underneath; small images enlarged by a whole factor, up to 512 pixels) and, with
``probs``, ``<stem>_probs.npy`` (float32 ``(C, H, W)``). A volume (NIfTI, NRRD, MetaImage file, DICOM series
folder) given to a model trained on volumes gives one label volume, ``<case>.nii.gz`` / ``.nrrd`` / ``.mha``
as the input (NIfTI for DICOM), with the scan's geometry. Every file is written atomically; an input that
cannot be used (unreadable, wrong channel count) is reported and skipped, and every other output is
still written.
"""

from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_write

if TYPE_CHECKING:
    from .predictor import Predictor

GLOB_CHARS = set("*?[")
#: Overlays are enlarged by the largest whole factor that keeps their longer side within this many pixels.
OVERLAY_MIN_SIZE = 512
#: Overlays of larger images are drawn at a whole fraction of the image's size, at most this many pixels a side
#: (the mask itself is always full size).
OVERLAY_MAX_SIDE = 2048


@dataclass
class FolderResult:
    """What :func:`predict_files` did: outputs written per input, inputs skipped with the reason, seconds."""

    written: dict[Path, list[Path]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    volumes: int = 0
    images: int = 0

    @property
    def done(self) -> int:
        return len(self.written)


def is_volume(path: Path) -> bool:
    """A volume input: a NIfTI/NRRD/MetaImage file or a folder holding a DICOM series."""
    from ..data.volume_io import is_dicom_folder, volume_stem

    return is_dicom_folder(path) if path.is_dir() else volume_stem(path) is not None


def output_stem(path: Path) -> str:
    """The name outputs of ``path`` are written under (``case`` for ``case.nii.gz``, a DICOM folder's name)."""
    from ..data.volume_io import volume_stem

    return (volume_stem(path) if is_volume(path) else None) or path.stem


def expand_inputs(items: list[str]) -> list[Path]:
    """Files named, images and volumes inside folders named (sorted, not recursive; a DICOM series folder is
    one volume), and glob matches; de-duplicated. A name that matches nothing is a ``ValueError``."""
    from ..data.io import IMAGE_EXTENSIONS

    def folder_images(d: Path) -> list[Path]:
        if is_volume(d):
            return [d]
        return sorted(p for p in d.iterdir() if (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
                      or is_volume(p))

    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            images = folder_images(p)
            if not images:
                raise ValueError(f"{item}: folder has no images ({', '.join(IMAGE_EXTENSIONS)}) or volumes "
                                 "(.nii.gz, .nrrd, .mha, DICOM series)")
            found += images
        elif p.is_file():
            found.append(p)
        elif p.is_symlink() and not p.exists():
            raise ValueError(f"{item}: a symbolic link to a missing file; pass the image itself")
        elif p.exists():
            raise ValueError(f"{item}: not a regular file (a pipe or a device); pass image files or folders")
        elif GLOB_CHARS & set(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file()]
            files += [f for m in matches if m.is_dir() for f in folder_images(m)]
            if not files:
                raise ValueError(f"{item}: the pattern matches no files")
            found += files
        else:
            raise ValueError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def check_outputs(inputs: list[Path], out: Path) -> None:
    """Refuse an ``out`` that holds inputs (outputs would mix with or overwrite them) and clashing stems."""
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {out}: {parent} is a file, not a folder; choose a folder")
    out_r = out.resolve()
    for f in inputs:
        if f.resolve().parent == out_r:
            raise ValueError(f"--out {out} is the folder of input {f}: outputs would be written next to (and could "
                             "overwrite) the inputs; choose another folder")
    stems: dict[str, Path] = {}
    for f in inputs:
        stem = output_stem(f)
        if stem in stems:
            raise ValueError(f"inputs {stems[stem]} and {f} share the name '{stem}', so their outputs would "
                             "overwrite each other; predict them into separate --out folders")
        stems[stem] = f


def check_kinds(predictor: Predictor, volumes: list[Path], images: list[Path], model: str = "the model") -> None:
    """Volumes need a model trained on volumes, and 2D images one trained on images."""
    if volumes and predictor.info.volume is None:
        raise ValueError(f"{volumes[0]}: a volume, but {model} was trained on 2D images; predict volumes with a "
                         "model trained on a volume folder (see docs/volumes.md)")
    if images and predictor.info.volume is not None:
        raise ValueError(f"{images[0]}: a 2D image, but {model} was trained on volumes; pass .nii.gz / .nrrd / "
                         ".mha files or DICOM series folders")


def _why(e: Exception) -> str:
    return f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})"


def predict_files(predictor: Predictor, items: list[str], out: Path, *, probs: bool = False, alpha: float = 0.5,
                  progress: bool = True) -> FolderResult:
    """Predict every input ``items`` names into ``out`` (see the module's docstring); bad inputs are skipped and
    listed in :attr:`FolderResult.failed`."""
    from tqdm import tqdm

    from ..data.io import read_image
    from ..viz import overlay_view, palette, save_mask_png, save_rgb_png

    inputs = expand_inputs(items)
    check_outputs(inputs, out)
    volumes = [f for f in inputs if is_volume(f)]
    images = [f for f in inputs if f not in volumes]
    check_kinds(predictor, volumes, images)
    colors = palette(predictor.info)
    out.mkdir(parents=True, exist_ok=True)
    result = FolderResult(volumes=len(volumes), images=len(images))
    t0 = time.perf_counter()
    _predict_volumes(predictor, volumes, out, result, progress)
    bar = tqdm(images, desc="predict", unit="img", disable=not progress or not images, file=sys.stderr)
    for f in bar:
        try:
            arr = read_image(f)
            predictor.preprocess(arr[:1, :1], str(f))  # the channel check, before any work
        except ValueError as e:  # e.g. a 5-channel TIFF for a grey model: say so, and go on
            result.failed.append((f, " ".join(str(e).split())))
            bar.write(f"skipped {f}: {result.failed[-1][1]}", file=sys.stderr)
            continue
        except Exception as e:  # noqa: BLE001 - any decoder failure: report the file and go on
            result.failed.append((f, _why(e)))
            bar.write(f"skipped {f}: {result.failed[-1][1]}", file=sys.stderr)
            continue
        stem = f.stem
        written = []
        found: dict[str, np.ndarray] = {}

        def with_probs(tmp: Path, a: np.ndarray = arr, where: str = str(f), found: dict = found) -> None:
            found["labels"] = predictor.predict_labels(a, where, probs_path=tmp)

        if probs:  # the probabilities written as they are computed (band by band for large images)
            written.append(atomic_write(out / f"{stem}_probs.npy", with_probs))
            labels = found["labels"]
        else:
            labels = predictor.predict_labels(arr, str(f))
        written.insert(0, atomic_write(out / f"{stem}_mask.png",
                                       lambda tmp, lab=labels: save_mask_png(lab, colors, tmp)))
        k = -(-max(labels.shape) // OVERLAY_MAX_SIDE)  # huge images: the overlay at a whole fraction of the size
        _, raw = predictor.preprocess(arr[::k, ::k], str(f))
        ov = overlay_view(raw, labels[::k, ::k], colors, predictor.info.class_names, alpha, min_size=OVERLAY_MIN_SIZE)
        written.insert(1, atomic_write(out / f"{stem}_overlay.png", lambda tmp, o=ov: save_rgb_png(o, tmp)))
        result.written[f] = written
    bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _predict_volumes(predictor: Predictor, volumes: list[Path], out: Path, result: FolderResult,
                     progress: bool) -> None:
    """Predict each volume slice by slice and write its label volume with the scan's geometry."""
    from tqdm import tqdm

    from ..data.volume_io import read_volume, write_label_volume
    from .volume import num_slices

    for f in volumes:
        try:
            vol = read_volume(f)
            if vol.array.dtype.kind == "f" and np.isnan(vol.array).any():
                raise ValueError("NaN voxels, which training refuses too; fill or crop them")
        except ValueError as e:  # a check that failed (geometry, slices, NaN): its whole message
            result.failed.append((f, " ".join(str(e).split())))
            print(f"skipped {f}: {result.failed[-1][1]}", file=sys.stderr)
            continue
        except Exception as e:  # noqa: BLE001 - any reader failure: report the file and go on
            result.failed.append((f, _why(e)))
            print(f"skipped {f}: {result.failed[-1][1]}", file=sys.stderr)
            continue
        with tqdm(total=num_slices(vol, predictor.info), desc=output_stem(f), unit="slice", disable=not progress,
                  file=sys.stderr) as bar:
            labels = predictor.predict_volume(vol, progress=bar.update)
        path = write_label_volume(vol, labels, out, stem=output_stem(f))
        print(f"{f} -> {path}")
        result.written[f] = [path]
