"""Build the development suite: real labelled data sets from different domains and image sizes.

``python benchmarks/devsuite.py OUT_DIR`` writes, in unetkit's folder layout (``images/``, ``masks/``,
``val/images``, ``val/masks``, ``classes.yaml``):

``ct-coronal`` and ``ct-sagittal``
    The embedded chest CT (3D Slicer's ``CTChest4.nrrd`` and its segmentation, shipped in the ``slicerio``
    package, MIT licence) resliced along the other two axes: 128 coronal and 128 sagittal slices of
    34 x 128 pixels (10 mm x 3.05 mm pixels: non-square images of another size than the axial demo),
    stored as 16-bit PNGs of Hounsfield units + 1024, so the 16-bit normalisation path is exercised on
    real scanner values. Validation: every fourth slice (index % 4 == 2), as the axial demo does.
``digits``
    Mosaics of the handwritten digits shipped in scikit-learn (``sklearn.datasets.load_digits``: 1,797
    8x8 images from the UCI "Optical Recognition of Handwritten Digits" set by E. Alpaydin and C. Kaynak,
    CC BY 4.0; scikit-learn is BSD-3). Each mosaic (sizes 40..200 px, mixed aspect ratios, 8-bit grey)
    holds 1-6 digits upscaled 3-5x at random places on a noisy background; a pixel's class is its digit's
    human-given label + 1 where the upscaled stroke is brighter than 40 % of full scale, else background
    (class 0). The first 1,400 digit images feed the 160 training mosaics and the other 397 the 40
    validation mosaics, so no digit image is on both sides. The class ``7`` is made rare (one in ten of
    its samples is used) to exercise rare-class handling.

The axial ``ct-chest`` set itself is built in (``--data ct-chest``). Data sets reserved for independent
evaluation of the defaults are deliberately not used here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def _save(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    base = root if split == "train" else root / "val"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(base / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8)).save(base / "masks" / f"{name}.png")


def build_ct_reslices(out: Path) -> list[Path]:
    """``ct-coronal`` and ``ct-sagittal`` (16-bit HU + 1024)."""
    from unetkit.data.ct_chest import CT_CHEST_CLASSES, CT_CHEST_COLORS, load_ct_chest

    vol = load_ct_chest()  # (slices, rows, cols): inferior->superior, anterior->posterior, right->left
    hu = np.clip(vol.hu.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
    made = []
    for name, axis in (("ct-coronal", 1), ("ct-sagittal", 2)):
        root = out / name
        for k in range(hu.shape[axis]):
            img = np.take(hu, k, axis=axis)[::-1]  # superior at the top
            lab = np.take(vol.labels, k, axis=axis)[::-1]
            _save(root, "val" if k % 4 == 2 else "train", f"slice_{k:03d}", np.ascontiguousarray(img),
                  np.ascontiguousarray(lab))
        (root / "classes.yaml").write_text(yaml.safe_dump(
            {"names": list(CT_CHEST_CLASSES), "colors": [list(c) for c in CT_CHEST_COLORS]}))
        made.append(root)
    return made


def build_digits(out: Path, n_train: int = 160, n_val: int = 40, seed: int = 0) -> Path:
    """``digits``: mosaics of scikit-learn's handwritten digits, 11 classes, mixed sizes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target
    rng = np.random.default_rng(seed)
    keep = np.array([lab != 7 or i % 10 == 0 for i, lab in enumerate(labels)])  # a rare class
    pools = {"train": np.flatnonzero(keep[:1400]), "val": 1400 + np.flatnonzero(keep[1400:])}
    root = out / "digits"
    for split, count in (("train", n_train), ("val", n_val)):
        for m in range(count):
            h, w = int(rng.integers(40, 201)), int(rng.integers(40, 201))
            img = rng.normal(0.12, 0.05, (h, w))
            mask = np.zeros((h, w), np.uint8)
            for _ in range(int(rng.integers(1, 7))):
                i = int(rng.choice(pools[split]))
                s = int(rng.integers(3, 6)) * 8
                if s >= min(h, w):
                    continue
                glyph = np.asarray(Image.fromarray((images[i] * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                                   dtype=np.float64) / 255
                y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
                region = mask[y:y + s, x:x + s]
                stroke = glyph > 0.4
                if (region[stroke] > 0).any():  # no overlaps: labels stay unambiguous
                    continue
                img[y:y + s, x:x + s] = np.maximum(img[y:y + s, x:x + s], glyph)
                region[stroke] = labels[i] + 1
            _save(root, split, f"mosaic_{m:03d}", (np.clip(img, 0, 1) * 255).astype(np.uint8), mask)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["background"] + [f"digit {d}" for d in range(10)]}))
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write the data sets into")
    args = p.parse_args()
    for root in [*build_ct_reslices(args.out), build_digits(args.out)]:
        n = len(list((root / "images").glob("*.png")))
        v = len(list((root / "val" / "images").glob("*.png")))
        print(f"wrote {root}: {n} train / {v} val images")


if __name__ == "__main__":
    main()
