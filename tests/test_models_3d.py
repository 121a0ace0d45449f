"""The UNet in 3D (``spatial_dims=3``) and the options that came with it: instance norm, per-stage strides and
kernel sizes, :func:`plan_stages`, the voxel shuffle, 3D fusion/attention/deep supervision, conv+BN folding
and ONNX export of 5-D inputs. Tiny widths (base 4, depth 3, batch 1) keep the file fast.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from unetkit import UNet, UNetConfig
from unetkit.bench.flops import count_forward_flops
from unetkit.cli.options import add_model_options, model_config_from_args
from unetkit.models.blocks import InstanceNorm2d, InstanceNorm3d, MaxPool
from unetkit.models.decoder import VoxelShuffle, make_upsample
from unetkit.models.fuse import fuse_conv_bn
from unetkit.models.stages import plan_stages
from unetkit.models.summary import summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UPSAMPLES = ("transpose", "bilinear", "pixelshuffle")
SKIPS = ("crop", "pool", "interpolate", "pad")
ANISO_STRIDES = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
ANISO_KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]


def tiny3d(**options) -> UNet:
    return UNet(**{"spatial_dims": 3, "in_channels": 1, "base_channels": 4, "depth": 3, **options})


@pytest.mark.parametrize(("upsample", "skip"), list(itertools.product(UPSAMPLES, SKIPS)))
def test_every_upsample_and_skip_keeps_odd_sizes_and_trains(upsample: str, skip: str):
    torch.manual_seed(0)
    model = tiny3d(upsample=upsample, skip=skip)
    x = torch.randn(1, 1, 13, 18, 11)
    y = model(x)
    assert y.shape == (1, 2, 13, 18, 11)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0 and model.encoder.stages[0][0].weight.grad.abs().sum() > 0
    assert isinstance(model.head, nn.Conv3d) and model.head.weight.shape == (2, 4, 1, 1, 1)


def test_the_odd_volume_37x50x45():
    model = tiny3d(base_channels=2, upsample="pixelshuffle", skip="pad", norm="instance")
    y = model(torch.randn(1, 1, 37, 50, 45))
    assert y.shape == (1, 2, 37, 50, 45)
    y.mean().backward()
    # 37 -> 18 -> 9 by the pools: the encoder's stages are floor-halved on every axis
    feats = model.encoder(torch.randn(1, 1, 37, 50, 45))
    assert [tuple(f.shape[2:]) for f in feats] == [(37, 50, 45), (18, 25, 22), (9, 12, 11)]


def test_layers_are_3d_and_the_input_must_be_5d():
    model = tiny3d(upsample="transpose")
    kinds = {type(m) for m in model.modules()}
    assert {nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, MaxPool} <= kinds
    assert not kinds & {nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d}
    assert {m.spatial_dims for m in model.modules() if isinstance(m, MaxPool)} == {3}
    with pytest.raises(ValueError, match=r"spatial_dims=3 takes 5-D input"):
        model(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize(("shape", "stride"), [((2, 3, 37, 50, 45), 2), ((1, 2, 9, 12, 11), (1, 2, 2)),
                                              ((2, 3, 7, 9), 2), ((1, 2, 13, 10), (2, 1))])
def test_max_pool_gives_the_library_values_with_and_without_autograd(shape, stride):
    nd = len(shape) - 2
    pool = MaxPool(stride, nd)
    lib = torch.nn.functional.max_pool2d if nd == 2 else torch.nn.functional.max_pool3d
    x = torch.randn(shape)
    x[0, 0].flatten()[:6] = float("nan")  # NaN propagates, as in the library kernel
    with torch.no_grad():  # the strided-maximum path
        fast = pool(x)
    ref = lib(x, stride, stride)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=0, atol=0, equal_nan=True)
    # with autograd (training) the library kernel runs: the gradient goes to one maximum per window
    xg = torch.randn(shape).requires_grad_()
    pool(xg).sum().backward()
    assert xg.grad.sum().item() == ref.numel()
    assert set(xg.grad.unique().tolist()) == {0.0, 1.0}
    # an input smaller than the window gets the library's error, not an empty tensor
    with torch.no_grad(), pytest.raises(RuntimeError, match="too small"):
        pool(torch.randn(shape[:2] + (1,) * nd))


def test_voxel_shuffle_matches_pixel_shuffle_in_2d_and_moves_each_voxel_where_expected():
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(VoxelShuffle(2, spatial_dims=2)(x), nn.PixelShuffle(2)(x), rtol=0, atol=0)
    r = (1, 2, 3)
    x = torch.randn(1, 2 * 6, 3, 4, 2)
    y = VoxelShuffle(r, spatial_dims=3)(x)
    assert y.shape == (1, 2, 3, 8, 6)
    expected = torch.empty_like(y)
    for c, a, b, e in itertools.product(range(2), range(1), range(2), range(3)):
        ch = c * 6 + (a * 2 + b) * 3 + e
        expected[0, c, a::1, b::2, e::3] = x[0, ch]
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_pixelshuffle_upsampling_starts_with_equal_subvoxels():
    up = make_upsample(8, 4, 2, "pixelshuffle", spatial_dims=3)
    y = up(torch.randn(1, 8, 3, 4, 5))
    assert y.shape == (1, 4, 6, 8, 10)
    blocks = y.reshape(1, 4, 3, 2, 4, 2, 5, 2)
    torch.testing.assert_close(blocks, blocks[:, :, :, :1, :, :1, :, :1].expand_as(blocks))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_normalises_each_sample_and_channel(spatial_dims: int):
    model = UNet(spatial_dims=spatial_dims, in_channels=1, base_channels=4, depth=3, norm="instance")
    norm_type = {2: InstanceNorm2d, 3: InstanceNorm3d}[spatial_dims]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    assert len(norms) == 2 * 3 + 2 * 2 and all(type(m) is norm_type and m.affine for m in norms)
    assert not any("running" in k for k in model.state_dict())
    first_conv = model.encoder.stages[0][0]
    assert first_conv.bias is None
    seen = {}
    model.encoder.stages[0][1].register_forward_hook(lambda _m, _i, o: seen.update(out=o.clone()))
    shape = (2, 1, *(9, 10, 11)[-spatial_dims:])
    model.eval()  # instance norm uses each sample's own statistics in eval mode too
    model(torch.randn(shape) * 5 + 3)
    out = seen["out"].flatten(2)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 7), (3, 4, 9, 10)])
def test_instance_norm_kernel_matches_the_library_forward_and_backward(shape):
    norm = (InstanceNorm2d if len(shape) == 4 else InstanceNorm3d)(shape[1], affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = (torch.randn(shape) * 4 + 2).requires_grad_()
    grad_out = torch.randn(shape)
    ours = norm(x)
    ours.backward(grad_out)
    ours_grads = [t.grad.clone() for t in (x, norm.weight, norm.bias)]
    for t in (x, norm.weight, norm.bias):
        t.grad = None
    ref = torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    ref.backward(grad_out)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_grads, (x.grad, norm.weight.grad, norm.bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # a single spatial element is refused in training, as by the library
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        norm(torch.randn(shape[:2] + (1,) * (len(shape) - 2)))


def test_anisotropic_strides_and_kernels_give_the_expected_stages():
    model = UNet(spatial_dims=3, in_channels=1, base_channels=4, strides=ANISO_STRIDES, kernel_sizes=ANISO_KERNELS)
    assert model.config.depth == 4
    assert model.encoder.axis_reductions == ((1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8))
    assert model.encoder.reductions == (1, 2, 4, 8) and model.stride == 8 and model.axis_strides == (2, 8, 8)
    feats = model.encoder(torch.randn(1, 1, 16, 64, 48))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 16, 64, 48), (8, 16, 32, 24), (16, 16, 16, 12),
                                                    (32, 8, 8, 6)]
    assert model.encoder.stages[0][0].weight.shape == (4, 1, 1, 3, 3)
    assert model.encoder.stages[1][0].stride == (1, 2, 2)  # the pool
    assert model.encoder.stages[3][1][0].weight.shape[2:] == (3, 3, 3)
    # decoder: coarse to fine, each stage upsamples by its skip's per-axis ratio and uses its skip's kernel
    ups = [b.up for b in model.decoder.blocks]
    assert [u.stride for u in ups] == [(2, 2, 2), (1, 2, 2), (1, 2, 2)]
    assert [b.conv[0].weight.shape[2:] for b in model.decoder.blocks] == [(3, 3, 3), (1, 3, 3), (1, 3, 3)]
    y = model(torch.randn(1, 1, 15, 37, 41))
    assert y.shape == (1, 2, 15, 37, 41)
    rows = summary(model, (1, 1, 16, 64, 48), print_fn=None)
    assert [r.name for r in rows[1:5]] == ["encoder.stage0 (/1)", "encoder.stage1 (/1x2x2)",
                                           "encoder.stage2 (/1x4x4)", "encoder.stage3 (/2x8x8)"]


def test_strides_and_kernels_in_2d_too():
    model = UNet(in_channels=1, base_channels=4, strides=[[1, 1], [1, 2], [2, 2]], kernel_sizes=[3, 3, [1, 3]])
    assert model.encoder.axis_reductions == ((1, 1), (1, 2), (2, 4))
    assert model(torch.randn(1, 1, 20, 33)).shape == (1, 2, 20, 33)


def test_bad_strides_are_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"strides' first stage must be 1"):
        UNetConfig(spatial_dims=3, strides=[[2, 2, 2], [2, 2, 2]])
    with pytest.raises(ValueError, match=r"strides needs one int per spatial axis \(3"):
        UNetConfig(spatial_dims=3, strides=[[1, 1], [2, 2]])
    with pytest.raises(ValueError, match=r"strides has 3 stages but depth is 4"):
        UNetConfig(spatial_dims=3, depth=4, strides=[1, 2, 2])
    with pytest.raises(ValueError, match=r"kernel_sizes must be odd"):
        UNetConfig(spatial_dims=3, kernel_sizes=[2, 3])
    with pytest.raises(ValueError, match=r"strides needs encoder 'plain'"):
        UNetConfig(encoder="resnet18", strides=[1, 2])


def test_plan_stages_thick_slices_pool_in_plane_first():
    plan = plan_stages((5.0, 0.7, 0.7), (40, 224, 224), max_depth=6)
    assert plan.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert plan.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert plan.depth == 6 and plan.reduction == (8, 32, 32)
    assert plan.feature_sizes[-1] == (5, 7, 7)
    np.testing.assert_allclose(plan.spacings[2], (5.0, 2.8, 2.8))


def test_plan_stages_isotropic_stops_at_the_minimum_feature_size():
    plan = plan_stages((1.0, 1.0, 1.0), (64, 64, 64), max_depth=8, min_feature_size=4)
    assert plan.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4  # 64 -> 32 -> 16 -> 8 -> 4; 2 would be below 4
    assert plan.kernel_sizes == ((3, 3, 3),) * 5 and plan.feature_sizes[-1] == (4, 4, 4)
    assert plan_stages((1.0, 1.0, 1.0), (64, 64, 64), max_depth=3).depth == 3


def test_plan_stages_coarse_axis_joins_once_comparable_and_small_axes_stop():
    plan = plan_stages((3.0, 1.0, 1.0), (64, 128, 128), max_depth=5)
    assert plan.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert plan.kernel_sizes == ((1, 3, 3),) + ((3, 3, 3),) * 4
    # an axis too short to pool further is left alone while the others go on
    plan = plan_stages((1.0, 1.0, 1.0), (8, 64, 64), max_depth=5)
    assert plan.strides == ((1, 1, 1), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))
    assert plan.feature_sizes[-1] == (4, 4, 4)
    with pytest.raises(ValueError, match="one entry per axis"):
        plan_stages((1.0, 1.0), (64, 64, 64))
    # the plan builds a model whose stages have the planned sizes
    plan = plan_stages((5.0, 0.7, 0.7), (8, 32, 32), max_depth=4)
    model = UNet(spatial_dims=3, in_channels=1, base_channels=4, strides=plan.strides,
                 kernel_sizes=plan.kernel_sizes)
    feats = model.encoder(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(f.shape[2:]) for f in feats] == list(plan.feature_sizes)


def test_deep_supervision_attention_and_fusion_in_3d():
    torch.manual_seed(0)
    model = tiny3d(deep_supervision=True, attention="self", multiscale_fusion=True)
    x = torch.randn(1, 1, 12, 17, 10)
    outs = model.train()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 12, 17, 10), (1, 2, 6, 8, 5)]
    sum(o.mean() for o in outs).backward()
    assert model.bottleneck_attention.gamma.grad is not None
    assert isinstance(model.fusion, nn.Conv3d) and isinstance(model.bottleneck_attention.query, nn.Conv3d)
    model.eval()
    with torch.no_grad():
        # fusion starts as the plain head: the output is the finest stage's logits (resized to the input)
        stages = model.decoder(model.encoder(x))
        plain = nn.functional.interpolate(model.head(stages[-1]), size=x.shape[2:], mode="trilinear",
                                          align_corners=False)
        torch.testing.assert_close(model(x), plain)
        # attention starts as the identity and then mixes in every voxel
        feat = model.encoder(x)[-1]
        torch.testing.assert_close(model.bottleneck_attention(feat), feat)
        model.bottleneck_attention.gamma.fill_(1.0)
        assert not torch.allclose(model.bottleneck_attention(feat), feat)


def test_2d_backbones_refuse_3d_in_one_line():
    with pytest.raises(ValueError, match=r"^encoder 'resnet18' is 2D only; spatial_dims=3 needs encoder 'plain'$"):
        UNet(encoder="resnet18", spatial_dims=3)
    with pytest.raises(ValueError, match=r"encoder 'timm:resnet18' is 2D only"):
        UNetConfig(encoder="timm:resnet18", spatial_dims=3)


def test_valid_padding_in_3d_shrinks_like_the_paper():
    model = tiny3d(padding="valid", skip="crop")

    def expected(n: int) -> int:  # two unpadded 3x3x3 convs per stage, 2x pools, 2x up-convs, crops
        s0 = n - 4
        s1 = s0 // 2 - 4
        s2 = s1 // 2 - 4
        u1 = min(s2 * 2, s1) - 4
        return min(u1 * 2, s0) - 4

    y = model(torch.randn(1, 1, 44, 45, 52))
    assert y.shape == (1, 2, expected(44), expected(45), expected(52)) == (1, 2, 4, 4, 12)


def test_conv_bn_folding_in_3d_keeps_the_output():
    torch.manual_seed(0)
    model = tiny3d(upsample="transpose")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 1, 11, 12, 13)
    ref = model.eval()(x)
    fuse_conv_bn(model, example=x)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)


def test_flops_and_summary_count_3d_convs():
    model = UNet(spatial_dims=3, in_channels=1, num_classes=3, base_channels=4, depth=2, norm="none")
    x = torch.zeros(1, 1, 8, 8, 8)
    # by hand: every conv's multiply-adds are out voxels x out channels x in channels x kernel volume
    macs = 0
    sizes = {"enc0": 8**3, "enc1": 4**3, "dec": 8**3}
    macs += sizes["enc0"] * 4 * (1 + 4) * 27  # stage 0: 1->4, 4->4
    macs += sizes["enc1"] * 8 * (4 + 8) * 27  # stage 1: 4->8, 8->8
    macs += sizes["enc1"] * 8 * 4 * 8  # transposed 2x2x2 conv, 8->4: every input voxel x out ch x kernel
    macs += sizes["dec"] * 4 * (8 + 4) * 27  # decoder: 8->4, 4->4
    macs += sizes["dec"] * 3 * 4  # head 1x1x1
    assert count_forward_flops(model, x) == 2 * macs
    rows = summary(model, (1, 1, 8, 8, 8), print_fn=None)
    assert rows[1].shape == (1, 4, 8, 8, 8) and rows[2].shape == (1, 8, 4, 4, 4) and rows[-1].flops == 2 * macs


def test_config_round_trip_with_strides_and_the_flags():
    cfg = UNetConfig(spatial_dims=3, in_channels=1, norm="instance", strides=ANISO_STRIDES,
                     kernel_sizes=ANISO_KERNELS)
    d = cfg.to_dict()
    assert d["strides"] == ANISO_STRIDES and d["kernel_sizes"] == ANISO_KERNELS and d["spatial_dims"] == 3
    back = UNetConfig.from_dict(d)
    assert back == cfg and back.strides == tuple(tuple(s) for s in ANISO_STRIDES)
    model = UNet(back.replace(base_channels=4))
    rebuilt = UNet.from_config(model.config.to_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert UNetConfig.from_dict({**d, "strides": ["1x1x1", "1x2x2", "1,2,2", 2]}).strides == cfg.strides
    parser = argparse.ArgumentParser()
    add_model_options(parser, suppress=True)
    args = parser.parse_args(["--spatial-dims", "3", "--strides", "1x1x1", "1x2x2", "1x2x2", "2x2x2",
                              "--kernel-sizes", "1x3x3", "1x3x3", "3", "3", "--norm", "instance"])
    assert model_config_from_args(args).replace(in_channels=1) == cfg
    args = parser.parse_args(["--spatial-dims", "3", "--strides", "none"])
    assert model_config_from_args(args).strides is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--spatial-dims", "4"])
    # old checkpoints' configs (no spatial_dims/strides keys) still load as 2D
    old = {k: v for k, v in UNetConfig().to_dict().items() if k not in ("spatial_dims", "strides", "kernel_sizes")}
    assert UNetConfig.from_dict(old).spatial_dims == 2


def test_onnx_export_of_a_3d_model_agrees_with_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from unetkit.checkpoint import DataInfo
    from unetkit.export.onnx import export_onnx

    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=1, base_channels=4, depth=3, norm="instance", upsample="pixelshuffle",
                 strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    info = DataInfo(2, 1, ["bg", "fg"], [(0, 0, 0), (255, 0, 0)], (0.0,), (1.0,))
    path = tmp_path / "m3d.onnx"
    diff = export_onnx(model, info, path, dynamo=False, check_shapes=((1, 12, 16, 16),), verbose=False)
    assert diff < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 9, 19, 14)
    out = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert out.shape == (1, 2, 9, 19, 14)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
