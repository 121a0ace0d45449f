"""Joint augmentation: masks stay aligned, integer and within the original labels (+ ignore)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.transforms import v2

from unetkit.data import AugmentConfig, build_transforms, get_datasets

K = 0.2  # image = mask * K encodes the label in the pixel value
IGNORE = 255


def _block_mask(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.int64)
    for c in (1, 2, 3, 4):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        m[y:y + 14, x:x + 18] = c
    return torch.from_numpy(m)


def _encoded(mask: torch.Tensor, channels: int = 3) -> torch.Tensor:
    return (mask.float() * K).unsqueeze(0).repeat(channels, 1, 1)


GEOMETRIC = dict(hflip=0.5, vflip=0.5, rotate=40.0, scale=(0.7, 1.3), translate=0.1, elastic=0.5,
                 elastic_magnitude=0.03, color_jitter=0.0)


def test_geometric_augmentation_keeps_mask_aligned_exactly_with_nearest() -> None:
    mask = _block_mask()
    image = _encoded(mask)
    tf = build_transforms(AugmentConfig(interpolation="nearest", **GEOMETRIC), train=True, ignore_index=IGNORE)
    assert tf is not None
    original = set(mask.unique().tolist())
    changed = ignored = 0
    for seed in range(25):
        torch.manual_seed(seed)
        img, m = tf(image.clone(), mask.clone())
        assert m.dtype == torch.int64 and img.dtype == torch.float32
        assert m.shape == mask.shape and img.shape == image.shape
        assert set(m.unique().tolist()) <= original | {IGNORE}
        valid = m != IGNORE
        decoded = torch.round(img[0] / K).long()
        assert torch.equal(decoded[valid], m[valid])
        assert torch.all(img[:, ~valid] == 0)  # image fill 0 exactly where the mask is padded
        changed += int(not torch.equal(m, mask))
        ignored += int((~valid).any())
    assert changed >= 20 and ignored >= 10  # the transforms really did move things


def test_bilinear_images_stay_aligned_away_from_label_edges() -> None:
    mask = _block_mask(seed=1)
    image = _encoded(mask, channels=1)
    tf = build_transforms(AugmentConfig(**GEOMETRIC), train=True, in_channels=1, ignore_index=IGNORE)
    assert tf is not None
    for seed in range(20):
        torch.manual_seed(seed)
        img, m = tf(image.clone(), mask.clone())
        mn = m.numpy()
        # Interior pixels: the 5x5 neighbourhood (outside the image counts as padding) has one label,
        # so bilinear interpolation of the encoded image is exact there.
        uniform = (ndimage.maximum_filter(mn, 5, mode="constant", cval=IGNORE)
                   == ndimage.minimum_filter(mn, 5, mode="constant", cval=IGNORE))
        interior = torch.from_numpy(uniform) & (m != IGNORE)
        assert int(interior.sum()) > 500
        decoded = torch.round(img[0] / K).long()
        assert torch.equal(decoded[interior], m[interior])
        agree = (decoded == m)[m != IGNORE].float().mean()
        assert float(agree) > 0.9


def test_color_jitter_changes_image_only() -> None:
    mask = _block_mask()
    for channels in (1, 3):
        image = torch.rand(channels, 48, 64)
        cfg = AugmentConfig(hflip=0.0, rotate=0.0, scale=None, color_jitter=0.5, hue=0.1)
        tf = build_transforms(cfg, train=True, in_channels=channels)
        assert tf is not None
        jitter = [t for t in tf.pipeline.transforms if isinstance(t, v2.ColorJitter)]
        assert len(jitter) == 1
        if channels == 1:
            assert jitter[0].saturation is None and jitter[0].hue is None  # brightness/contrast only
        diffs = 0
        for seed in range(5):
            torch.manual_seed(seed)
            img, m = tf(image.clone(), mask.clone())
            assert torch.equal(m, mask)
            assert img.min() >= 0 and img.max() <= 1
            diffs += int(not torch.allclose(img, image))
        assert diffs >= 4


def test_crop_size_pads_with_ignore_and_validation_is_untouched() -> None:
    mask = _block_mask(20, 24)
    image = _encoded(mask)
    cfg = AugmentConfig(hflip=0.0, rotate=0.0, scale=None, color_jitter=0.0, crop_size=(32, 16))
    tf = build_transforms(cfg, train=True)
    assert tf is not None
    torch.manual_seed(0)
    img, m = tf(image, mask)
    assert img.shape == (3, 32, 16) and m.shape == (32, 16)
    assert (m == IGNORE).sum() == 16 * 12  # 12 padded rows of width 16
    assert build_transforms(cfg, train=False) is None
    assert build_transforms(None, train=True) is None
    assert build_transforms(AugmentConfig.none(), train=True) is None


def test_invalid_augment_config() -> None:
    with pytest.raises(ValueError, match="hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="interpolation"):
        AugmentConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="affine_p"):
        AugmentConfig(affine_p=1.2)


def test_affine_p_is_the_share_of_samples_rotated_and_zoomed() -> None:
    """``affine_p=0.25``: about a quarter of the samples are zoomed (a 0.5 zoom always changes the image);
    ``affine_p=0`` leaves the affine out. 400 draws: the share's standard deviation is 0.022."""
    mask = _block_mask()
    image = _encoded(mask)
    base = dict(hflip=0.0, rotate=10.0, scale=(0.5, 0.5), color_jitter=0.0)
    tf = build_transforms(AugmentConfig(affine_p=0.25, **base), train=True)
    assert tf is not None
    torch.manual_seed(0)
    changed = sum(not torch.equal(tf(image, mask)[1], mask) for _ in range(400))
    assert 0.17 <= changed / 400 <= 0.33
    assert build_transforms(AugmentConfig(affine_p=0.0, **base), train=True) is None  # nothing else is on


def test_dataset_augmentation_train_only_and_fill_is_black_after_normalisation() -> None:
    cfg = AugmentConfig(rotate=45.0, scale=(0.6, 0.7), hflip=0.5, color_jitter=0.0, interpolation="nearest")
    train, val = get_datasets("shapes", num_samples=4, val_samples=2, size=32, augment=cfg)
    assert val is not None and train.transform is not None and val.transform is None
    torch.manual_seed(0)
    img, m = train[0]
    assert m.dtype == torch.int64 and img.shape == (3, 32, 32)
    pad = m == IGNORE
    assert pad.any()  # zooming out by 0.6-0.7 always pads
    black = (0.0 - torch.tensor(train.mean)) / torch.tensor(train.std)
    for c in range(3):
        assert torch.allclose(img[c][pad], black[c].expand(int(pad.sum())))
    # Validation samples are deterministic (no augmentation).
    a, b = val[1], val[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
