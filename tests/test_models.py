"""The shared model test base: every UNet variant forward and backward at odd sizes, plus the paper's net."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torchvision import models

from unetkit import UNet, summary
from unetkit.models.attention import SelfAttention
from unetkit.models.encoders import adapt_input_conv, encoder_names

UPSAMPLES = ("transpose", "bilinear", "pixelshuffle")
SKIPS = ("crop", "pool", "interpolate", "pad")


def small(encoder: str, **kw) -> UNet:
    """A fast model: the plain encoder at width 4; VGG at its own widths with 3 stages."""
    if encoder == "plain":
        return UNet(encoder=encoder, base_channels=4, **kw)
    return UNet(encoder=encoder, depth=3, **kw)


@pytest.mark.parametrize(("encoder", "upsample", "skip"),
                         list(itertools.product(("plain", "vgg16", "vgg16_bn"), UPSAMPLES, SKIPS)))
@pytest.mark.parametrize(("in_channels", "size"), [(1, (37, 41)), (3, (45, 39))])
def test_every_variant_keeps_size_and_trains(encoder, upsample, skip, in_channels, size):
    model = small(encoder, num_classes=3, in_channels=in_channels, upsample=upsample, skip=skip)
    x = torch.randn(1, in_channels, *size)
    y = model(x)
    assert y.shape == (1, 3, *size)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(250, 317), (33, 65), (16, 16)])
def test_plain_default_depth_odd_sizes(size):
    model = UNet(num_classes=2, in_channels=1, base_channels=2)
    assert model(torch.randn(2, 1, *size)).shape == (2, 2, *size)


def paper_param_count() -> int:
    """The 2015 network's parameters, counted by hand: 3x3 convs, 2x2 up-convs, the 1x1 head."""
    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    widths = [64, 128, 256, 512, 1024]
    total, prev = 0, 1
    for w in widths:  # contracting path: two 3x3 convs per level
        total += conv(prev, w, 3) + conv(w, w, 3)
        prev = w
    for w in reversed(widths[:-1]):  # expanding path: up-conv halves channels, concat, two 3x3 convs
        total += conv(prev, w, 2) + conv(2 * w, w, 3) + conv(w, w, 3)
        prev = w
    return total + conv(64, 2, 1)


def test_paper_network_572_to_388():
    with torch.device("meta"):
        model = UNet(num_classes=2, in_channels=1, padding="valid", skip="crop", norm="none")
        y = model(torch.empty(1, 1, 572, 572))
    assert tuple(y.shape) == (1, 2, 388, 388)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 23
    assert sum(p.numel() for p in model.parameters()) == paper_param_count() == 31_030_658
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_valid_padding_real_forward_small():
    model = UNet(num_classes=2, in_channels=1, base_channels=2, depth=3, padding="valid", skip="crop", norm="none")
    # 3 levels: 68 -> 64 -> 32 -> 28 -> 14 -> 10 ; up 20 -> 16 ; up 32 -> 28
    assert model(torch.randn(1, 1, 68, 68)).shape == (1, 2, 28, 28)


def test_plain_encoder_widths_and_reductions():
    model = UNet()
    assert model.encoder.out_channels == (64, 128, 256, 512, 1024)
    assert model.encoder.reductions == (1, 2, 4, 8, 16)
    assert model.decoder.out_channels == (512, 256, 128, 64)


def test_vgg16_stage_table():
    model = UNet(encoder="vgg16")
    assert model.encoder.out_channels == (64, 128, 256, 512, 512)
    feats = model.encoder(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 256, 256), (128, 128, 128), (256, 64, 64), (512, 32, 32), (512, 16, 16)]


@pytest.mark.parametrize(("arch", "builder"), [("vgg16", models.vgg16), ("vgg16_bn", models.vgg16_bn)])
@pytest.mark.parametrize("layout", ["whole", "features"])
def test_vgg_weights_load_and_match_torchvision(tmp_path, arch, builder, layout):
    ref = builder(weights=None).features.eval()
    sd = ref.state_dict()
    if layout == "whole":
        sd = {f"features.{k}": v for k, v in sd.items()} | {"classifier.0.weight": torch.randn(4, 4)}
    path = tmp_path / f"{arch}.pth"
    torch.save(sd, path)
    model = UNet(num_classes=2, encoder=arch, encoder_weights=path).eval()
    # Kaiming init of decoder and heads must not touch the loaded encoder.
    for k, v in ref.state_dict().items():
        assert torch.equal(model.encoder.features.state_dict()[k], v), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
        assert torch.allclose(nn.functional.max_pool2d(deepest, 2), ref(x), atol=1e-5)
    assert model.encoder.mean == (0.485, 0.456, 0.406)


def test_vgg_safetensors_and_grey_input_adaptation(tmp_path):
    from safetensors.torch import save_file

    ref = models.vgg16(weights=None).features.eval()
    path = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = UNet(num_classes=2, in_channels=1, encoder="vgg16", encoder_weights=path).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ours = model.encoder(x)[-1]
        theirs = ref[:30](x.repeat(1, 3, 1, 1))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_imagenet_weights_through_torch_hub_cache(tmp_path, monkeypatch):
    """encoder_weights='imagenet' goes through torchvision's enum and torch hub's cache, not the network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ref = models.vgg16(weights=None)
    (tmp_path / "checkpoints").mkdir()
    url = models.VGG16_Weights.IMAGENET1K_V1.url
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()},
               tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    model = UNet(encoder="vgg16", encoder_weights="imagenet")
    assert torch.equal(model.encoder.features[0].weight, ref.features[0].weight)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match="nope.pth"):
        UNet(encoder="vgg16", encoder_weights=bad)
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        UNet(encoder="vgg16", encoder_weights=bad)


def test_adapt_input_conv():
    w = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    w5 = adapt_input_conv(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    assert torch.allclose(w5[:, 3], w[:, 0] * 3 / 5)
    # A 5-channel image repeating RGB-like values keeps the response's scale: sum over channels.
    assert torch.allclose(w5.sum(1), (w[:, [0, 1, 2, 0, 1]]).sum(1) * 3 / 5)


def test_freeze_encoder_keeps_bn_in_eval():
    model = UNet(num_classes=2, encoder="vgg16_bn", depth=3, freeze_encoder=True).train()
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.decoder.training
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert torch.equal(bns[0].running_mean, before)


def test_plain_weights_roundtrip(tmp_path):
    a = UNet(num_classes=2, base_channels=4)
    torch.save(a.encoder.state_dict(), tmp_path / "enc.pt")
    b = UNet(num_classes=2, base_channels=4, encoder_weights=tmp_path / "enc.pt")
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(b.encoder.state_dict()[k], v)


def test_deep_supervision_train_and_eval():
    model = UNet(num_classes=3, base_channels=4, deep_supervision=True)
    outs = model.train()(torch.randn(2, 3, 48, 40))
    assert isinstance(outs, list) and len(outs) == 4
    assert [tuple(o.shape) for o in outs] == [(2, 3, 48, 40), (2, 3, 24, 20), (2, 3, 12, 10), (2, 3, 6, 5)]
    sum(o.mean() for o in outs).backward()
    assert all(h.weight.grad is not None for h in model.stage_heads)
    assert model.eval()(torch.randn(1, 3, 48, 40)).shape == (1, 3, 48, 40)


def test_multiscale_fusion_uses_every_stage():
    model = UNet(num_classes=2, base_channels=4, multiscale_fusion=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.fusion.weight[:, 0] += 1.0  # channel 0 holds the coarsest stage's class-0 logits
        after = model(x)
    assert before.shape == (1, 2, 32, 32)
    coarse = nn.functional.interpolate(model.stage_heads[0](model.decoder(model.encoder(x))[0]), size=(32, 32),
                                       mode="bilinear", align_corners=False)
    assert torch.allclose(after - before, coarse[:, :1].expand(-1, 2, -1, -1), atol=1e-5)


def test_self_attention_matches_formula_and_starts_as_identity():
    att = SelfAttention(16)
    assert att.query.out_channels == att.key.out_channels == 2
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(att(x), x)  # gamma = 0 at init
    with torch.no_grad():
        att.gamma.fill_(0.7)
    q, k, v = att.query(x).flatten(2), att.key(x).flatten(2), att.value(x).flatten(2)
    attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (N, HW, HW): row i attends over positions j
    expected = x + 0.7 * (v @ attn.transpose(1, 2)).reshape(2, 16, 5, 7)
    assert torch.allclose(att(x), expected, atol=1e-5)
    model = UNet(num_classes=2, base_channels=4, attention="self")
    assert model(torch.randn(1, 3, 37, 41)).shape == (1, 2, 37, 41)


def test_summary_rows(capsys):
    model = UNet(num_classes=2, base_channels=4, depth=3)
    rows = summary(model, (1, 3, 32, 32))
    printed = capsys.readouterr().out
    assert "decoder.blocks.1" in printed
    by = {r.name: r for r in rows}
    assert by["encoder.stage2 (/4)"].shape == (1, 16, 8, 8)
    assert by["head"].flops == 2 * 4 * 2 * 32 * 32  # 1x1 conv: 2 * Cin * Cout * H * W
    assert by["output"].params == sum(p.numel() for p in model.parameters())
    assert by["output"].flops == sum(r.flops for r in rows[1:-1] if r.flops)


def test_unknown_options_are_clear_errors():
    with pytest.raises(ValueError, match="upsample must be one of"):
        UNet(upsample="nearest")
    with pytest.raises(ValueError, match="skip must be one of"):
        UNet(skip="sum")
    with pytest.raises(ValueError, match="unknown encoder 'resnet9000'"):
        UNet(encoder="resnet9000")
    with pytest.raises(ValueError, match="decoder_channels needs 4"):
        UNet(decoder_channels=[8, 8])
    assert {"plain", "vgg16", "vgg16_bn"} <= set(encoder_names())


def test_from_config_rebuilds_same_architecture():
    a = UNet(num_classes=4, in_channels=1, base_channels=4, upsample="pixelshuffle", skip="pad")
    b = UNet.from_config(a.config)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 29, 31)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("encoder", ["plain", "vgg16"])
def test_torch_export(encoder):
    model = small(encoder, num_classes=2).eval()
    x = torch.randn(1, 3, 48, 48)
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


def test_onnx_export_dynamic_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = UNet(num_classes=2, base_channels=4).eval()
    path = tmp_path / "unet.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), path, dynamo=True, opset_version=18,
                      dynamic_shapes={"x": {0: "batch", 2: "height", 3: "width"}})
    sess = ort.InferenceSession(str(path))
    for shape in [(1, 3, 64, 64), (2, 3, 37, 41)]:
        x = torch.randn(*shape)
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (shape[0], 2, *shape[2:])
        assert abs(out - model(x).detach().numpy()).max() < 1e-4
