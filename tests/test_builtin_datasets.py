"""The built-in datasets: the embedded ct-chest CT (split, labels, alignment) and generated shapes."""

from __future__ import annotations

import numpy as np
import pytest
import slicerio

from unetkit.cli.main import main
from unetkit.data import CT_CHEST_CLASSES, get_datasets, load_ct_chest
from unetkit.data.ct_chest import SEGMENT_TO_CLASS, data_file


@pytest.fixture(scope="module")
def ct():
    return get_datasets("ct-chest")


def test_ct_chest_split_and_shapes(ct):
    train, val = ct
    assert (len(train), len(val)) == (26, 8)
    assert val.names == [f"slice_{i:03d}" for i in range(2, 34, 4)]
    assert not set(train.names) & set(val.names)
    image, mask = val[0]
    assert image.shape == (1, 128, 128) and mask.shape == (128, 128)
    assert train.num_classes == 8 and list(train.class_names) == list(CT_CHEST_CLASSES)


def test_ct_chest_label_names_come_from_the_segmentation_metadata():
    seg = slicerio.read_segmentation(str(data_file("Segmentation.seg.nrrd")))
    names = {s["name"] for s in seg["segments"]}
    assert set(SEGMENT_TO_CLASS) <= names
    assert load_ct_chest().segment_names == tuple(s["name"] for s in seg["segments"])


def test_ct_chest_labels_are_aligned_with_the_ct():
    vol = load_ct_chest()
    hu, lab = vol.hu.astype(np.float64), vol.labels
    assert hu.shape == lab.shape == (34, 128, 128)
    # Physics checks that fail if the label map were shifted, flipped or transposed against the CT:
    lungs = np.isin(lab, [5, 6])
    bone = np.isin(lab, [1, 2, 3, 4])
    tissue = lab == 7
    assert np.median(hu[lungs]) < -600  # aerated lung
    assert np.median(hu[bone]) > 150  # ribs and vertebrae
    assert -200 < np.median(hu[tissue]) < 150  # fat and muscle
    # Patient right is on the image's left (radiological view): the right lung's centroid is left of the left's.
    cols = np.arange(128)[None, None, :]
    right = (cols * (lab == 5)).sum() / (lab == 5).sum()
    left = (cols * (lab == 6)).sum() / (lab == 6).sum()
    assert right < 64 < left
    # Vertebrae run cervical (top slices) -> lumbar (bottom slices): slices go inferior -> superior.
    z = np.arange(34)[:, None, None]
    assert (z * (lab == 4)).sum() / (lab == 4).sum() < (z * (lab == 2)).sum() / (lab == 2).sum()


def test_ct_chest_every_class_present_in_training(ct):
    train, _ = ct
    counts = train.class_pixel_counts()
    assert (counts > 0).all()


def test_shapes_is_seeded_and_sized():
    a, _ = get_datasets("shapes", num_samples=6, size=40, seed=3)
    b, _ = get_datasets("shapes", num_samples=6, size=40, seed=3)
    c, _ = get_datasets("shapes", num_samples=6, size=40, seed=4)
    assert len(a) == 6 and a[0][0].shape == (3, 40, 40)
    assert all((a[i][1] == b[i][1]).all() for i in range(6))
    assert any((a[i][1] != c[i][1]).any() for i in range(6))


def test_data_export_round_trip(tmp_path):
    out = tmp_path / "ct"
    assert main(["data", "export", "ct-chest", str(out)]) == 0
    train, val = get_datasets(str(out))
    ref_train, ref_val = get_datasets("ct-chest")
    assert (len(train), len(val)) == (26, 8) and train.class_names == list(CT_CHEST_CLASSES)
    for ours, ref in ((train, ref_train), (val, ref_val)):
        for i in (0, len(ref) - 1):
            assert (ours.load_raw(i)[1] == ref.load_raw(i)[1]).all()
            assert (ours.load_raw(i)[0] - ref.load_raw(i)[0]).abs().max() <= 0.5 / 255 + 1e-6
    assert main(["data", "export", "ct-chest", str(out)]) == 2  # refuses a non-empty folder
