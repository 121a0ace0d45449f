"""Image/mask pairing shared by 2D folders and volume folders: Unicode-normalised names, mask-suffix
conventions, exact names winning, ambiguity refused, and the rule reported by the scan."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from unetkit.data import DatasetError, scan_folder
from unetkit.data.pairing import MASK_SUFFIXES, describe_rules, index_by_name, name_key, pair_by_name
from unetkit.data.volumes import scan_volumes

NFD = unicodedata.normalize("NFD", "café")
NFC = unicodedata.normalize("NFC", "café")


def _png(path: Path, value: int, size: tuple[int, int] = (6, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def _pair(root: Path, images: list[str], masks: list[str]):
    for name in images:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / name).touch()
    for name in masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).touch()

    def index(folder: str) -> dict[str, Path]:
        return index_by_name(root, sorted((root / folder).iterdir()), lambda p: p.stem, "share the stem", "fix")

    return pair_by_name(root, root / "images", root / "masks", index("images"), index("masks"))


def test_nfd_image_pairs_with_nfc_mask(tmp_path):
    assert NFD != NFC and name_key(NFD) == NFC
    _png(tmp_path / "images" / f"{NFD}.png", 10)
    _png(tmp_path / "masks" / f"{NFC}.png", 1)
    _png(tmp_path / "images" / "plain.png", 20)
    _png(tmp_path / "masks" / "plain.png", 0)
    scan = scan_folder(tmp_path, val_fraction=0.0, num_classes=2)
    pairs = {p.stem: p for p in scan.train}
    assert set(pairs) == {NFD, "plain"}  # the image's own spelling names the sample
    assert pairs[NFD].mask.name == f"{NFC}.png" and pairs[NFD].values.tolist() == [1]
    assert scan.pairing_rule == "masks paired by the same name, names compared after Unicode normalisation (NFC)"


def test_nfd_and_nfc_twins_in_one_folder_are_refused(tmp_path):
    with pytest.raises(DatasetError) as e:
        _pair(tmp_path, [f"{NFD}.png", f"{NFC}.png"], [f"{NFC}.png"])
    assert "share the stem" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", ["_mask", "-mask", "_label", "_labels", "_seg", "_gt", "_MASK"])
def test_mask_suffix_pairs(tmp_path, suffix):
    pairing = _pair(tmp_path, ["img_000.png", "img_001.png"], [f"img_000{suffix}.png", f"img_001{suffix}.png"])
    assert [(m.image.name, m.mask.name, m.suffix) for m in pairing.matches] == [
        ("img_000.png", f"img_000{suffix}.png", suffix), ("img_001.png", f"img_001{suffix}.png", suffix)]
    assert pairing.rule == f"masks paired by the suffix {suffix}"


def test_documented_suffixes_are_lower_case_and_unique():
    assert len(set(MASK_SUFFIXES)) == len(MASK_SUFFIXES)
    assert all(s == s.lower() and s[0] in "_-" for s in MASK_SUFFIXES)
    assert {"_mask", "-mask", "_label", "_labels", "_seg", "_gt"} <= set(MASK_SUFFIXES)


def test_mixed_rules_are_counted(tmp_path):
    pairing = _pair(tmp_path, ["a.png", "b.png", "c.png"], ["a.png", "b_mask.png", "c_mask.png"])
    assert [m.mask.name for m in pairing.matches] == ["a.png", "b_mask.png", "c_mask.png"]
    assert pairing.rule == "masks paired by the same name (1) and the suffix _mask (2)"
    assert describe_rules([pairing, pairing], "labels") == "labels paired by the same name (2) and the suffix _mask (4)"


def test_exact_name_wins_over_suffix(tmp_path):
    # images/x_mask.png exists, so masks/x_mask.png is its mask, not the suffix mask of images/x.png
    with pytest.raises(DatasetError) as e:
        _pair(tmp_path, ["x.png", "x_mask.png"], ["x_mask.png"])
    assert str(e.value).startswith("images/x.png has no mask in masks/ (expected masks/x.png)")
    pairing = _pair(tmp_path / "ok", ["x.png", "x_mask.png"], ["x_mask.png", "x.png"])
    assert [(m.image.name, m.mask.name) for m in pairing.matches] == [("x.png", "x.png"),
                                                                       ("x_mask.png", "x_mask.png")]


def test_two_candidate_masks_are_one_line_naming_both(tmp_path):
    with pytest.raises(DatasetError) as e:
        _pair(tmp_path, ["img_000.png"], ["img_000_mask.png", "img_000_seg.png"])
    msg = str(e.value)
    assert msg == ("images/img_000.png could pair with two masks, masks/img_000_mask.png and masks/img_000_seg.png; "
                   "rename or remove one so each image has exactly one mask")
    with pytest.raises(DatasetError) as e:
        _pair(tmp_path / "b", ["img_000.png"], ["img_000.png", "img_000_gt.png"])
    assert "masks/img_000.png and masks/img_000_gt.png" in str(e.value) and "\n" not in str(e.value)


def test_orphan_mask_names_the_expected_image(tmp_path):
    with pytest.raises(DatasetError) as e:
        _pair(tmp_path, ["a.png"], ["a.png", "b_mask.png"])
    assert str(e.value) == "masks/b_mask.png has no image in images/ (expected images/b.*); add it or remove the mask"


def _nii(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((6, 5, 3), np.uint8)
    data[1:3, 1:3, :] = value
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_volume_cases_pair_by_suffix_with_multi_dot_names(tmp_path):
    for case in ("case.01", f"{NFD}_2"):
        _nii(tmp_path / "images" / f"{case}.nii.gz", 7)
    _nii(tmp_path / "masks" / "case.01_seg.nii.gz", 1)
    _nii(tmp_path / "masks" / f"{NFC}_2_seg.nii", 1)
    scan = scan_volumes(tmp_path, val_fraction=0.0)
    assert {c.name: c.rel_mask for c in scan.train} == {
        "case.01": "masks/case.01_seg.nii.gz", f"{NFD}_2": f"masks/{NFC}_2_seg.nii"}
    assert scan.pairing_rule == "labels paired by the suffix _seg, names compared after Unicode normalisation (NFC)"
    assert scan.num_classes == 2
