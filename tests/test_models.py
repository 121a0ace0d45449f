"""The shared model test base: every registered encoder and every head option through UNet.

For each encoder (``encoder_names()``, no pretrained weights) and each option (plain head, deep supervision,
multiscale fusion, self-attention): forward and backward at an odd size, the config and state-dict round
trips; for each encoder: ``torch.export`` and one training step from a local weights file with 1, 3 and 4
input channels. Then the decoder's upsample x skip matrix, the 2015 paper's network and the options' own
behaviour. Encoder-specific checks (torchvision parity, weights files, timm) live in ``test_backbones.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from unetkit import UNet, summary
from unetkit.models.attention import SelfAttention
from unetkit.models.encoders import adapt_input_conv, encoder_names, list_encoders

ENCODERS = encoder_names()
OPTIONS = {
    "plain_head": {},
    "deep_supervision": {"deep_supervision": True},
    "multiscale_fusion": {"multiscale_fusion": True},
    "self_attention": {"attention": "self"},
}
UPSAMPLES = ("transpose", "bilinear", "pixelshuffle")
SKIPS = ("crop", "pool", "interpolate", "pad")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(encoder: str, **options) -> UNet:
    """A fast model: the plain encoder at width 4; any other encoder whole, with an 8-channel decoder."""
    if encoder == "plain":
        return UNet(encoder=encoder, base_channels=4, **options)
    record = list_encoders([encoder])[0]  # stage shapes, built once per process on the meta device
    depth = options.get("depth") or len(record.reductions)
    stages = depth - 1 + int(math.log2(record.reductions[0]))  # skip stages + skip-less upsamplings
    return UNet(encoder=encoder, decoder_channels=(8,) * stages, **options)


def first_conv(model: UNet) -> tuple[str, nn.Parameter]:
    """The encoder's first convolution weight (its stem), by name."""
    return next((n, p) for n, p in model.encoder.named_parameters() if p.dim() == 4)


# ------------------------------------------------------------------------------- every encoder x option


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_and_option_trains_and_round_trips(encoder: str, option: str):
    a = tiny(encoder, num_classes=3, **OPTIONS[option]).train()
    seen: list[list[torch.Tensor]] = []
    hook = a.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
    h, w = 45, 37
    x = torch.randn(2, 3, h, w)
    out = a(x)
    hook.remove()
    outs = out if isinstance(out, list) else [out]
    assert outs[0].shape == (2, 3, h, w)
    if option == "deep_supervision":  # [main, aux_1 (finest), ...]: one per decoder stage
        assert len(outs) == len(a.decoder.out_channels)
        assert all(o.shape[:2] == (2, 3) for o in outs)
    else:
        assert len(outs) == 1
    sum(o.square().mean() for o in outs).backward()

    # Stages honour the declared channels and (up to rounding) reductions.
    feats = seen[0]
    assert [f.shape[1] for f in feats] == list(a.encoder.out_channels)
    for f, r in zip(feats, a.encoder.reductions):
        assert math.floor(h / r) <= f.shape[2] <= math.ceil(h / r)
        assert math.floor(w / r) <= f.shape[3] <= math.ceil(w / r)
    # Gradients reach both ends: the decoder and head, and the encoder's first (stem) weights.
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.decoder.parameters())
    _, stem = first_conv(a)
    assert stem.grad is not None and torch.isfinite(stem.grad).all() and stem.grad.abs().sum() > 0
    assert a.head.weight.grad.abs().sum() > 0
    if option in ("deep_supervision", "multiscale_fusion"):
        assert all(hd.weight.grad is not None for hd in a.stage_heads)
    if option == "multiscale_fusion":
        assert a.fusion.weight.grad.abs().sum() > 0
    if option == "self_attention":  # gamma starts at 0, so only gamma itself gets a gradient at first
        assert a.bottleneck_attention.gamma.grad.abs().sum() > 0

    # Config round trip: the dict rebuilds an equal config and the same parameters.
    b = UNet.from_config(a.config.to_dict())
    assert b.config == a.config
    assert {k: v.shape for k, v in b.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
    # State-dict round trip (BatchNorm statistics moved by the training forward): identical outputs.
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_torch_export(encoder: str):
    model = tiny(encoder, num_classes=2).eval()
    x = torch.randn(1, 3, 45, 37)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), model(x), atol=1e-5)


# --------------------------------------------------------------- one training step from a local weights file


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory) -> Callable[[str, int], Path]:
    """``(encoder, in_channels) -> path`` of a weights file saved here, each built once per module.

    torchvision's model of the encoder's architecture (``weights=None``, 3 channels; VGG's classifier,
    ignored on loading and 90% of the model, is left out), or for the plain encoder, which has no
    torchvision layout, a plain encoder's state dict with ``in_channels`` channels.
    """
    root = tmp_path_factory.mktemp("weights")
    paths: dict[tuple[str, int], Path] = {}

    def path_for(encoder: str, in_channels: int) -> Path:
        key = (encoder, in_channels if encoder == "plain" else 3)
        if key not in paths:
            if encoder == "plain":
                sd = tiny("plain", in_channels=in_channels).encoder.state_dict()
            else:
                sd = getattr(torchvision.models, encoder)(weights=None).state_dict()
                if encoder.startswith("vgg"):
                    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
            paths[key] = root / f"{encoder}_{key[1]}.pth"
            torch.save(sd, paths[key])
        return paths[key]

    return path_for


@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_one_training_step_from_local_weights(encoder: str, in_channels: int, local_weights):
    path = local_weights(encoder, in_channels)
    model = tiny(encoder, num_classes=2, in_channels=in_channels, encoder_weights=path).train()

    # The file is loaded: the stem adapted to ``in_channels``, every other tensor as saved.
    saved = torch.load(path, weights_only=True)
    stem_name, _ = first_conv(model)
    for k, v in model.encoder.state_dict().items():
        expected = adapt_input_conv(saved[k], in_channels) if k == stem_name else saved[k]
        assert torch.allclose(v, expected), k
    if encoder == "plain":  # a plain encoder's own weights: no pretrained normalisation to follow
        assert model.encoder.mean is None and model.encoder.std is None
    else:
        assert len(model.encoder.mean) == len(model.encoder.std) == in_channels

    x = torch.rand(2, in_channels, 32, 32)
    target = torch.randint(0, 2, (2, 32, 32))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {f"encoder.{stem_name}", "head.weight"} <= graded
    assert graded <= changed


# --------------------------------------------------------------------------------- the decoder matrix


@pytest.mark.parametrize(("encoder", "upsample", "skip"),
                         list(itertools.product(("plain", "vgg16", "vgg16_bn"), UPSAMPLES, SKIPS)))
@pytest.mark.parametrize(("in_channels", "size"), [(1, (37, 41)), (3, (45, 39))])
def test_every_variant_keeps_size_and_trains(encoder, upsample, skip, in_channels, size):
    model = tiny(encoder, num_classes=3, in_channels=in_channels, upsample=upsample, skip=skip)
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


# ------------------------------------------------------------------------------------ the 2015 network


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


# -------------------------------------------------------------------------------------- the options


def test_freeze_encoder_keeps_batchnorm_in_eval():
    model = tiny("resnet18", num_classes=2, freeze_encoder=True).train()
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    bns = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.decoder.training
    stats = model.encoder.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert torch.equal(model.encoder.bn1.running_mean, stats)
    assert model.encoder.conv1.weight.grad is None
    assert model.head.weight.grad is not None


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


def test_from_config_object_rebuilds_same_architecture():
    a = UNet(num_classes=4, in_channels=1, base_channels=4, upsample="pixelshuffle", skip="pad")
    b = UNet.from_config(a.config)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 29, 31)
    assert torch.equal(a.eval()(x), b.eval()(x))


# ------------------------------------------------------------------------------------------ decoder widths


@pytest.mark.parametrize("encoder, auto, mirror, light", [
    ("plain", "mirror", (512, 256, 128, 64), (128, 64, 32, 16)),          # the paper's widths by default
    ("vgg16", "light", (512, 256, 128, 64), (128, 64, 32, 16)),           # 16 x reduction 8, 4, 2, 1
    ("vgg16_bn", "light", (512, 256, 128, 64), (128, 64, 32, 16)),
    ("resnet34", "mirror", (256, 128, 64, 64, 32), (256, 128, 64, 32, 16)),  # light: smp's Unet widths
    ("resnet50", "mirror", (1024, 512, 256, 64, 32), (256, 128, 64, 32, 16)),
    ("mobilenet_v3_large", "mirror", (112, 40, 24, 16, 16), (112, 40, 24, 16, 16)),  # never wider than mirror
    ("swin_t", "mirror", (384, 192, 96, 48, 24), (256, 128, 64, 32, 16)),
])
def test_decoder_widths_are_resolved_in_the_config(encoder: str, auto: str, mirror: tuple, light: tuple):
    from unetkit import UNetConfig

    assert UNetConfig().decoder_channels == "auto"
    widths = {"mirror": mirror, "light": light}
    model = UNet(encoder=encoder)
    assert model.encoder.decoder == auto
    assert model.config.decoder_channels == model.decoder.out_channels == widths[auto]
    assert model.head.in_channels == widths[auto][-1]
    for spec in ("mirror", "MIRROR", None, "none", ["mirror"]):  # None: what configs before "auto" hold
        assert UNet(encoder=encoder, decoder_channels=spec).config.decoder_channels == mirror
    assert UNet(encoder=encoder, decoder_channels="light").decoder.out_channels == light
    assert UNet.from_config(model.config.to_dict()).decoder.out_channels == widths[auto]
    explicit = UNet(encoder=encoder, decoder_channels=[16] * len(mirror))
    assert explicit.config.decoder_channels == (16,) * len(mirror)


def test_decoder_widths_follow_depth_and_bad_values_are_clear():
    from unetkit import UNetConfig

    assert UNet(encoder="vgg16", depth=3).config.decoder_channels == (32, 16)  # reductions 2, 1
    assert UNet(encoder="vgg16", depth=3, decoder_channels="mirror").config.decoder_channels == (128, 64)
    assert UNet(encoder="resnet18", depth=3, decoder_channels="light").config.decoder_channels == (64, 32, 16)
    for bad in ("wide", [256, "mirror"], [8, 0]):
        with pytest.raises(ValueError, match="decoder_channels must be"):
            UNetConfig(decoder_channels=bad)


def test_decoder_channels_flag_takes_a_word_or_widths():
    import argparse

    from unetkit.cli.options import add_model_options, model_config_from_args

    parser = argparse.ArgumentParser()
    add_model_options(parser, suppress=False)
    assert model_config_from_args(parser.parse_args([])).decoder_channels == "auto"
    for word in ("mirror", "light", "auto"):
        assert model_config_from_args(parser.parse_args(["--decoder-channels", word])).decoder_channels == word
    args = parser.parse_args(["--decoder-channels", "64", "32"])
    assert model_config_from_args(args).decoder_channels == (64, 32)
    from unetkit.train import TrainConfig  # the train flags' path: typed values, then the model config

    for flags, expected in (({"decoder_channels": ["mirror"]}, "mirror"), ({"decoder_channels": [64, 32]}, (64, 32)),
                            ({"model": {"decoder_channels": "auto"}}, "auto")):
        assert TrainConfig.from_dict(flags, where="flags").model.decoder_channels == expected
    with pytest.raises(ValueError, match="decoder_channels"):
        TrainConfig.from_dict({"decoder_channels": [64, "wide"]}, where="flags")


def test_checkpoint_written_before_auto_widths_loads_identically(tmp_path):
    """Checkpoints (and resumed runs) of earlier versions store ``decoder_channels: None`` (then: mirror the
    encoder); they must rebuild the mirrored decoder, not today's default, and give the same outputs."""
    from unetkit.checkpoint import load_model, save_checkpoint
    from unetkit.train import TrainConfig

    old_config = {"num_classes": 3, "in_channels": 1, "encoder": "vgg16", "encoder_weights": None,
                  "freeze_encoder": False, "base_channels": None, "depth": 3, "decoder_channels": None,
                  "upsample": "transpose", "skip": "interpolate", "padding": "same", "norm": "batch",
                  "attention": None, "deep_supervision": False, "multiscale_fusion": False}
    torch.manual_seed(0)
    written = UNet(encoder="vgg16", num_classes=3, in_channels=1, depth=3, decoder_channels=(128, 64))
    assert written.decoder.out_channels == (128, 64)  # what the earlier version built from old_config
    data = {"num_classes": 3, "in_channels": 1, "class_names": ["a", "b", "c"],
            "class_colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "mean": [0.0], "std": [1.0]}
    path = save_checkpoint({"model": written.state_dict(), "model_config": old_config, "data": data},
                           tmp_path / "old.pt")
    loaded, _, _ = load_model(path)  # strict load: every shape matches
    assert loaded.config.decoder_channels == (128, 64)
    x = torch.randn(2, 1, 40, 36)
    with torch.no_grad():
        assert torch.equal(loaded(x), written.eval()(x))
    resumed = UNet(TrainConfig.from_dict({"model": old_config}).model)  # the resume path
    resumed.load_state_dict(written.state_dict())
    assert resumed.config == loaded.config


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
