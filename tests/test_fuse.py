"""Conv+BN folding: same outputs (to float32 rounding), no BatchNorm left where it can be folded, and only
where it can."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unetkit import UNet
from unetkit.models.fuse import find_conv_bn_pairs, fold_conv_bn, fuse_conv_bn


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the output's magnitude."""
    tol = 1e-5 * max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol


@pytest.mark.parametrize(("name", "build"), [
    ("plain", lambda: UNet(num_classes=3, base_channels=8)),
    ("vgg16_bn", lambda: UNet(num_classes=2, encoder="vgg16_bn", depth=3)),
    ("resnet18", lambda: UNet(num_classes=2, encoder="resnet18")),
    ("mobilenet_v3_small", lambda: UNet(num_classes=2, encoder="mobilenet_v3_small")),
    ("pixelshuffle", lambda: UNet(num_classes=2, base_channels=4, upsample="pixelshuffle", depth=3)),
])
def test_fused_output_matches(name, build):
    model = randomise_bn(build()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    before = n_bn(model)
    fused = fuse_conv_bn(copy.deepcopy(model), size=64)
    assert before > 0 and n_bn(fused) == 0
    assert not fused.training
    with torch.no_grad():
        assert_close(fused(x), ref)
        y = torch.randn(1, 3, 48, 80)
        assert_close(fused(y), model(y))  # another size than the one used to find the pairs


def test_fused_channels_last_and_params_count():
    model = randomise_bn(UNet(num_classes=2, base_channels=4)).eval()
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    convs_without_bias = sum(m.out_channels for m in model.modules()
                             if isinstance(m, nn.Conv2d) and m.bias is None)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
    fused = fuse_conv_bn(copy.deepcopy(model).to(memory_format=torch.channels_last), size=40)
    # Each folded BN's two vectors go; each conv that had no bias gains one.
    assert sum(p.numel() for p in fused.parameters()) == params - bn_params + convs_without_bias
    assert fused.encoder.stages[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close(fused(x.contiguous(memory_format=torch.channels_last)), ref)


def test_smp_unet_is_fused():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = randomise_bn(smp.Unet("resnet18", encoder_weights=None, classes=2)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    fused = fuse_conv_bn(copy.deepcopy(model), x)
    assert n_bn(fused) == 0
    with torch.no_grad():
        assert_close(fused(x), ref)


class TwoReaders(nn.Module):
    """conv -> bn, but the conv output is also added back: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y
        return self.bn2(torch.relu(self.conv2(z)))  # relu between conv2 and bn2: not foldable either


class ReluBeforeBn(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))


def test_only_sole_reader_batchnorm_is_folded():
    model = randomise_bn(TwoReaders()).eval()
    assert find_conv_bn_pairs(model, torch.randn(1, 3, 8, 8)) == []
    seq = randomise_bn(ReluBeforeBn()).eval()
    pairs = find_conv_bn_pairs(seq, torch.randn(1, 3, 8, 8))
    assert pairs == [(seq[3], seq[4])]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = seq(x)
        fuse_conv_bn(seq, x)
        assert isinstance(seq[2], nn.BatchNorm2d) and isinstance(seq[4], nn.Identity)
        assert_close(seq(x), ref)


def test_fold_transposed_conv_and_no_affine():
    up = nn.ConvTranspose2d(4, 6, 2, stride=2)
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(6, affine=False))).eval()[0]
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        ref = bn(up(x))
        fold_conv_bn(up, bn)
        assert_close(up(x), ref)


def test_training_mode_batchnorm_is_not_folded_by_finder():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert find_conv_bn_pairs(seq, torch.randn(2, 3, 8, 8)) == []
    fuse_conv_bn(seq, torch.randn(2, 3, 8, 8))  # switches to eval first, then folds
    assert isinstance(seq[1], nn.Identity)
