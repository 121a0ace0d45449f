"""Folder datasets: reading formats, conventions, splits, validation errors, statistics, loader."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetkit.data import (
    DatasetError,
    FolderDataset,
    compute_stats,
    get_datasets,
    imagenet_stats,
    load_folder,
    make_loader,
    read_mask,
    split_indices,
)


def _masks(n: int, h: int, w: int, num_classes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.zeros((h, w), np.uint8)
        for c in range(1, num_classes):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            m[y:y + 6, x:x + 8] = c
        out.append(m)
    return out


def make_folder(root: Path, n: int = 6, h: int = 16, w: int = 20, channels: int = 3, num_classes: int = 3,
                sub: str = "", seed: int = 0, prefix: str = "img_") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Write ``n`` 8-bit images + class-index masks to ``root/sub/images`` and ``root/sub/masks``."""
    img_dir, mask_dir = root / sub / "images", root / sub / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 100)
    images, masks = [], _masks(n, h, w, num_classes, seed)
    for i in range(n):
        shape = (h, w) if channels == 1 else (h, w, channels)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(img).save(img_dir / f"{prefix}{i:03d}.png")
        Image.fromarray(masks[i]).save(mask_dir / f"{prefix}{i:03d}.png")
        images.append(img)
    return images, masks


def raises(root: Path | str, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        get_datasets(root, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- reading and conventions
def test_rgb_8bit_folder_reads_exact_values_and_metadata(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, n=5, channels=3, num_classes=3)
    train, val = get_datasets(tmp_path, val_fraction=0.4, seed=1, mean=(0.0,), std=(1.0,))
    assert val is not None
    assert (len(train), len(val)) == (3, 2)
    assert (train.num_classes, train.in_channels, train.ignore_index) == (3, 3, 255)
    assert train.class_names == ["class_0", "class_1", "class_2"]
    assert train.class_colors[0] == (0, 0, 0) and len(set(train.class_colors)) == 3
    for ds in (train, val):
        for i, stem in enumerate(ds.names):
            k = int(stem.split("_")[1])
            img, mask = ds[i]
            assert img.dtype == torch.float32 and img.shape == (3, 16, 20)
            assert mask.dtype == torch.int64 and mask.shape == (16, 20)
            np.testing.assert_allclose(img.numpy(), images[k].transpose(2, 0, 1) / 255.0, atol=1e-6)
            np.testing.assert_array_equal(mask.numpy(), masks[k])
            assert ds.image_paths[i].endswith(f"images/{stem}.png")
            assert ds.mask_paths[i].endswith(f"masks/{stem}.png")


def test_16bit_grayscale_png_scaled_by_65535(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.ones((12, 10), np.uint8)).save(tmp_path / "masks" / "a.png")
    ds = FolderDataset(tmp_path, split="all")
    assert ds.in_channels == 1
    raw, mask = ds.load_raw(0)
    np.testing.assert_allclose(raw[0].numpy(), img / 65535.0, atol=1e-6)
    assert float(raw.max()) == pytest.approx(119 * 500 / 65535.0)
    assert mask.unique().tolist() == [1]


def test_16bit_rgb_tiff_and_tiff_mask(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.random.default_rng(0).integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "images" / "t.tif", img, photometric="rgb")
    mask = np.zeros((8, 9), np.uint16)
    mask[2:5, 3:7] = 2
    tifffile.imwrite(tmp_path / "masks" / "t.tiff", mask)
    ds = FolderDataset(tmp_path, split="all")
    raw, m = ds.load_raw(0)
    assert ds.in_channels == 3 and ds.num_classes == 3
    np.testing.assert_allclose(raw.numpy(), img.transpose(2, 0, 1) / 65535.0, atol=1e-6)
    np.testing.assert_array_equal(m.numpy(), mask)


def test_palette_mask_reads_indices_not_colours(tmp_path: Path) -> None:
    make_folder(tmp_path, n=2, channels=1, num_classes=2)
    labels = np.zeros((16, 20), np.uint8)
    labels[3:9, 4:12] = 2
    labels[0, :] = 255  # VOC-style void border stays ignore_index
    pal = Image.fromarray(labels)
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]
    palette[6:9] = [0, 128, 0]
    palette[765:768] = [224, 224, 192]
    pal.putpalette(palette)
    assert pal.mode == "P"
    pal.save(tmp_path / "masks" / "img_001.png")
    assert read_mask(tmp_path / "masks" / "img_001.png").max() == 255
    ds = FolderDataset(tmp_path, split="all")
    _, m = ds.load_raw(1)
    np.testing.assert_array_equal(m.numpy(), labels)
    assert ds.num_classes == 3 and not ds.binary


def test_binary_0_255_masks_map_to_0_1_with_one_warning(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    _, masks = make_folder(tmp_path, n=4, channels=1, num_classes=2)
    for i, m in enumerate(masks):
        Image.fromarray(m * 255).save(tmp_path / "masks" / f"img_{i:03d}.png")
    with caplog.at_level(logging.WARNING, logger="unetkit.data"):
        ds = FolderDataset(tmp_path, split="all")
    msgs = [r.getMessage() for r in caplog.records if "binary" in r.getMessage()]
    assert len(msgs) == 1 and "0 and 255" in msgs[0]
    assert ds.binary and ds.num_classes == 2
    assert ds.class_names == ["background", "foreground"]
    for i in range(4):
        np.testing.assert_array_equal(ds.load_raw(i)[1].numpy(), masks[i])


def test_ignore_index_255_passes_through_and_binary_false_override(tmp_path: Path) -> None:
    _, masks = make_folder(tmp_path, n=3, channels=1, num_classes=3)
    masks[0][0, :] = 255
    Image.fromarray(masks[0]).save(tmp_path / "masks" / "img_000.png")
    ds = FolderDataset(tmp_path, split="all")
    assert ds.num_classes == 3 and not ds.binary
    m = ds.load_raw(0)[1]
    assert (m[0] == 255).all() and set(m.unique().tolist()) <= {0, 1, 2, 255}

    other = tmp_path / "b"
    make_folder(other, n=2, channels=1, num_classes=2)
    Image.fromarray(np.full((16, 20), 255, np.uint8)).save(other / "masks" / "img_000.png")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(other / "masks" / "img_001.png")
    ds2 = FolderDataset(other, split="all", binary=False, num_classes=2)
    assert not ds2.binary and int(ds2.load_raw(0)[1].max()) == 255  # kept as ignore


def test_in_channels_given_converts_gray_to_rgb(tmp_path: Path) -> None:
    images, _ = make_folder(tmp_path, n=2, channels=1)
    ds = FolderDataset(tmp_path, split="all", in_channels=3)
    raw = ds.load_raw(0)[0]
    assert raw.shape == (3, 16, 20)
    for c in range(3):
        np.testing.assert_allclose(raw[c].numpy(), images[0] / 255.0, atol=1e-6)


def test_classes_yaml_and_txt(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3, num_classes=3)
    (tmp_path / "classes.yaml").write_text("names: [sky, road, car, person]\ncolors: ['#000000', [1, 2, 3], "
                                           "[4, 5, 6], '#ff0080']\n")
    ds = FolderDataset(tmp_path, split="all")
    assert ds.num_classes == 4
    assert ds.class_names == ["sky", "road", "car", "person"]
    assert ds.class_colors == [(0, 0, 0), (1, 2, 3), (4, 5, 6), (255, 0, 128)]
    (tmp_path / "classes.yaml").unlink()
    (tmp_path / "classes.txt").write_text("bg\nthing\n\nstuff\n")
    ds = FolderDataset(tmp_path, split="all")
    assert ds.class_names == ["bg", "thing", "stuff"] and ds.num_classes == 3


def test_rgb_colour_masks_mapped_through_class_colours(tmp_path: Path) -> None:
    _, masks = make_folder(tmp_path, n=2, num_classes=3)
    colors = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\ncolors: [[0, 0, 0], [200, 10, 10], [10, 200, 10]]\n")
    for i, m in enumerate(masks):
        Image.fromarray(np.asarray(colors, np.uint8)[m]).save(tmp_path / "masks" / f"img_{i:03d}.png")
    for cache in (True, False):
        ds = FolderDataset(tmp_path, split="all", cache=cache)
        np.testing.assert_array_equal(ds.load_raw(1)[1].numpy(), masks[1])


def test_train_val_folder_layouts(tmp_path: Path) -> None:
    make_folder(tmp_path, n=4, sub="train", prefix="t")
    make_folder(tmp_path, n=2, sub="val", prefix="v", seed=5)
    train, val = get_datasets(tmp_path, val_fraction=0.5)
    assert val is not None
    assert train.names == ["t000", "t001", "t002", "t003"] and val.names == ["v000", "v001"]
    other = tmp_path / "flat"
    make_folder(other, n=3)
    make_folder(other, n=2, sub="val", prefix="v")
    tr2, va2 = get_datasets(other)
    assert va2 is not None and (len(tr2), len(va2)) == (3, 2)


def test_seeded_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    make_folder(tmp_path, n=10, h=8, w=8)
    a_tr, a_va = load_folder(tmp_path, val_fraction=0.3, seed=7)
    b_tr, b_va = load_folder(tmp_path, val_fraction=0.3, seed=7)
    c_tr, c_va = load_folder(tmp_path, val_fraction=0.3, seed=8)
    assert a_va is not None and b_va is not None and c_va is not None
    assert a_tr.names == b_tr.names and a_va.names == b_va.names
    assert len(a_va) == 3 and len(a_tr) == 7
    assert not set(a_tr.names) & set(a_va.names)
    assert sorted(a_tr.names + a_va.names) == [f"img_{i:03d}" for i in range(10)]
    assert a_va.names != c_va.names
    assert split_indices(10, 0.3, 7) == split_indices(10, 0.3, 7)
    tr, va = split_indices(5, 0.0, 0)
    assert (tr, va) == ([0, 1, 2, 3, 4], [])
    _, none_val = load_folder(tmp_path, val_fraction=0.0)
    assert none_val is None


def test_cached_and_uncached_give_identical_samples(tmp_path: Path) -> None:
    make_folder(tmp_path, n=4)
    a = FolderDataset(tmp_path, split="all", cache=True)
    b = FolderDataset(tmp_path, split="all", cache=False)
    assert a.cached and not b.cached
    for i in range(4):
        for x, y in zip(a.load_raw(i), b.load_raw(i), strict=True):
            assert torch.equal(x, y)
    # Loading must not alias the cache: modifying a sample leaves the next load unchanged.
    img, mask = a.load_raw(0)
    img.fill_(7.0)
    mask.fill_(7)
    assert float(a.load_raw(0)[0].max()) <= 1.0 and int(a.load_raw(0)[1].max()) < 3


def test_normalisation_and_compute_stats(tmp_path: Path) -> None:
    images, _ = make_folder(tmp_path, n=4, channels=3)
    train, val = get_datasets(tmp_path, val_fraction=0.25, seed=0)
    assert val is not None
    stack = np.stack([images[int(s.split("_")[1])] for s in train.names]).astype(np.float64) / 255.0
    np.testing.assert_allclose(train.mean, stack.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(train.std, stack.std(axis=(0, 1, 2)), rtol=1e-5)
    assert val.mean == train.mean and val.std == train.std  # validation uses training statistics
    x, _ = train[0]
    raw, _ = train.load_raw(0)
    expected = (raw - torch.tensor(train.mean).view(3, 1, 1)) / torch.tensor(train.std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.allclose(train.denormalize(x), raw, atol=1e-6)
    assert compute_stats(train) == (train.mean, train.std)
    m, s = imagenet_stats(3)
    tr2, _ = get_datasets(tmp_path, mean=m, std=s)
    assert tr2.mean == (0.485, 0.456, 0.406)
    assert imagenet_stats(1)[0] == (pytest.approx(0.449),)


def test_make_loader_batches(tmp_path: Path) -> None:
    make_folder(tmp_path, n=6)
    ds = FolderDataset(tmp_path, split="all")
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=0, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 16, 20) and y.shape == (4, 16, 20) and y.dtype == torch.int64
    order1 = [b[1].sum().item() for b in make_loader(ds, 2, True, seed=3)]
    order2 = [b[1].sum().item() for b in make_loader(ds, 2, True, seed=3)]
    assert order1 == order2
    lw = make_loader(ds, batch_size=3, shuffle=False, num_workers=1)
    assert lw.persistent_workers is True
    assert sum(b[0].shape[0] for b in lw) == 6


def test_class_pixel_counts(tmp_path: Path) -> None:
    _, masks = make_folder(tmp_path, n=3, num_classes=3)
    ds = FolderDataset(tmp_path, split="all")
    expected = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    np.testing.assert_array_equal(ds.class_pixel_counts(), expected)


# ---------------------------------------------------------------- validation errors
def test_error_image_without_mask(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3)
    (tmp_path / "masks" / "img_001.png").unlink()
    msg = raises(tmp_path)
    assert msg == ("images/img_001.png has no mask in masks/ (expected masks/img_001.png); "
                   "add it or remove the image")


def test_error_mask_without_image(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3)
    (tmp_path / "images" / "img_002.png").unlink()
    msg = raises(tmp_path)
    assert msg.startswith("masks/img_002.png has no image in images/") and "add it or remove the mask" in msg


def test_error_mask_size_differs(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3)
    Image.fromarray(np.zeros((16, 19), np.uint8)).save(tmp_path / "masks" / "img_001.png")
    msg = raises(tmp_path)
    assert "masks/img_001.png is 19x16" in msg and "images/img_001.png is 20x16" in msg
    assert "resize or re-export the mask" in msg


def test_error_corrupt_image_and_mask(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3)
    (tmp_path / "images" / "img_002.png").write_bytes(b"this is not a png")
    msg = raises(tmp_path)
    assert msg.startswith("images/img_002.png cannot be read") and "remove it" in msg

    other = tmp_path / "o"
    make_folder(other, n=3)
    (other / "masks" / "img_000.png").write_bytes(b"\x89PNG garbage")
    msg = raises(other)
    assert msg.startswith("masks/img_000.png cannot be read as a mask") and "re-save it" in msg


@pytest.mark.parametrize("cache", [True, False])
def test_error_truncated_image_found_up_front(tmp_path: Path, cache: bool) -> None:
    make_folder(tmp_path, n=3, h=40, w=40)
    p = tmp_path / "images" / "img_001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # valid header, missing pixel data
    msg = raises(tmp_path, cache=cache)
    assert "images/img_001.png" in msg and ("corrupt" in msg or "truncated" in msg)


def test_error_label_value_too_large_exact_message(tmp_path: Path) -> None:
    _, masks = make_folder(tmp_path, n=8, num_classes=3)
    masks[7][0, 0] = 9
    Image.fromarray(masks[7]).save(tmp_path / "masks" / "img_007.png")
    msg = raises(tmp_path, num_classes=3)
    assert msg == ("masks/img_007.png: label value 9 >= num_classes 3; fix the mask, or train with "
                   "--num-classes 10 (or leave it out)")
    # Inferred num_classes accepts it (max label + 1).
    train, _ = get_datasets(tmp_path)
    assert train.num_classes == 10


def test_error_label_exceeds_classes_yaml(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3, num_classes=3)
    (tmp_path / "classes.yaml").write_text("- bg\n- fg\n")
    msg = raises(tmp_path)
    assert "label value 2 >= num_classes from classes.yaml 2" in msg and "add the class to classes.yaml" in msg
    assert msg.split(":")[0].startswith("masks/img_")
    msg = raises(tmp_path, num_classes=5)
    assert "classes.yaml lists 2 classes but num_classes is 5" in msg


def test_error_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    msg = raises(tmp_path)
    assert msg.startswith("images/ contains no images") and "add images" in msg
    msg = raises(tmp_path / "nope")
    assert "neither a built-in dataset" in msg and "nope" in msg
    (tmp_path / "x").mkdir()
    msg = raises(tmp_path / "x")
    assert "has no images/ folder" in msg
    (tmp_path / "y" / "images").mkdir(parents=True)
    msg = raises(tmp_path / "y")
    assert msg.startswith("masks/ not found") and "same file stem" in msg


def test_error_mixed_channel_counts(tmp_path: Path) -> None:
    make_folder(tmp_path, n=3, channels=3)
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "images" / "img_002.png")
    msg = raises(tmp_path)
    assert msg.startswith("images/img_002.png has 1 channels but images/img_000.png has 3")
    assert "same mode" in msg
    train, _ = get_datasets(tmp_path, in_channels=3)  # explicit in_channels converts instead
    assert train.in_channels == 3


def test_error_duplicate_stem_jpeg_mask_and_colour_mask(tmp_path: Path) -> None:
    make_folder(tmp_path, n=2)
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(tmp_path / "images" / "img_000.jpg")
    msg = raises(tmp_path)
    assert "images/img_000.jpg" in msg and "share the stem" in msg

    j = tmp_path / "j"
    make_folder(j, n=2)
    (j / "masks" / "img_001.png").unlink()
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(j / "masks" / "img_001.jpg")
    msg = raises(j)
    assert msg.startswith("masks/img_001.jpg cannot be read as a mask") and "save masks as PNG" in msg

    c = tmp_path / "c"
    make_folder(c, n=2)
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[2:4, 2:4] = (255, 0, 0)
    Image.fromarray(rgb).save(c / "masks" / "img_001.png")
    msg = raises(c)
    assert msg.startswith("masks/img_001.png is a colour (RGB) mask") and "classes.yaml" in msg


def test_validation_runs_before_anything_is_produced(tmp_path: Path) -> None:
    """A bad mask in the *last* validation file still stops dataset construction."""
    make_folder(tmp_path, n=5, sub="train")
    _, masks = make_folder(tmp_path, n=3, sub="val", prefix="zz")
    masks[2][5, 5] = 77
    Image.fromarray(masks[2]).save(tmp_path / "val" / "masks" / "zz002.png")
    msg = raises(tmp_path, num_classes=3)
    assert msg.startswith("val/masks/zz002.png: label value 77 >= num_classes 3")


def test_error_bad_classes_yaml(tmp_path: Path) -> None:
    make_folder(tmp_path, n=2)
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\ncolors: [[0, 0, 0]]\n")
    msg = raises(tmp_path)
    assert msg.startswith("classes.yaml: 1 colors for 3 names")
    (tmp_path / "classes.yaml").write_text("names: [a, a, c]\n")
    assert "appears twice" in raises(tmp_path)
