"""Encoder-specific checks: torchvision parity, weights files and layouts, depth, the hub cache, the catalog, timm.

What every encoder shares (forward and backward through UNet, round trips, export, a training step from a
local weights file) is in ``test_models.py``. Nothing is downloaded: the tests build the state dicts they
need (random weights, randomised BatchNorm statistics) and save them under ``tmp_path``; the torch hub path
is exercised through a temporary hub dir with downloading patched to fail.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from unetkit.models import UNet
from unetkit.models.encoders import encoder_names, format_encoders, get_encoder, list_encoders
from unetkit.models.encoders.base import IMAGENET_MEAN, IMAGENET_STD, adapt_input_conv
from unetkit.models.encoders.torchvision_backbones import IMAGENET_WEIGHTS, hub_checkpoint_path
from unetkit.models.encoders.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKBONES = ["vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v3_large",
             "mobilenet_v3_small", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
             "efficientnet_b4", "swin_t", "convnext_tiny"]

# Where each family's stages come from in torchvision's own model (create_feature_extractor node names).
REFERENCE_NODES = {
    "vgg16": ["features.3", "features.8", "features.15", "features.22", "features.29"],  # ReLU before a pool
    "vgg16_bn": ["features.5", "features.12", "features.22", "features.32", "features.42"],
    "resnet18": ["relu", "layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v3_small": ["features.0", "features.1", "features.3", "features.8", "features.12"],
    "efficientnet_b0": ["features.1", "features.2", "features.3", "features.5", "features.7"],
    "convnext_tiny": ["features.1", "features.3", "features.5", "features.7"],
    "swin_t": ["features.1", "features.3", "features.5", "norm"],  # NHWC
}


def random_torchvision(arch: str, seed: int = 0) -> nn.Module:
    """torchvision's ``arch`` with random weights *and* random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_model() -> Callable[..., nn.Module]:
    """:func:`random_torchvision`, each ``(arch, seed)`` built once per module (tests only read them)."""
    built: dict[tuple[str, int], nn.Module] = {}

    def get(arch: str, seed: int = 0) -> nn.Module:
        if (arch, seed) not in built:
            built[arch, seed] = random_torchvision(arch, seed)
        return built[arch, seed]

    return get


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as a file would hold it; VGG's classifier (120M parameters, ignored on
    loading) is left out to keep the file small."""
    return {k: v for k, v in model.state_dict().items()
            if not (isinstance(model, torchvision.models.VGG) and k.startswith("classifier."))}


def reference_features(model: nn.Module, arch: str, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's intermediate outputs for ``arch``'s stages, as NCHW tensors."""
    nodes = REFERENCE_NODES[arch]
    extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes}).eval()
    with torch.no_grad():
        out = extractor(x)
    feats = [out[n] for n in nodes]
    return [f.permute(0, 3, 1, 2) for f in feats] if arch.startswith("swin") else feats


# ------------------------------------------------------------------------------------- registry, depth


def test_required_backbones_are_registered():
    assert set(BACKBONES) <= set(encoder_names())


@pytest.mark.parametrize("name,depth,channels", [
    ("vgg16", 2, (64, 128)),
    ("resnet18", 3, (64, 64, 128)),
    ("efficientnet_b0", 2, (16, 24)),
    ("swin_t", 2, (96, 192)),
])
def test_depth_keeps_first_stages(name: str, depth: int, channels: tuple[int, ...]):
    enc = get_encoder(name, depth=depth).eval()
    assert enc.out_channels == channels
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(channels)
    with pytest.raises(ValueError, match="depth must be"):
        get_encoder(name, depth=9)


def test_resnet_depth_through_unet_and_truncated_weights(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(random_torchvision("resnet18").state_dict(), path)
    model = UNet(num_classes=2, encoder="resnet18", encoder_weights=path, depth=3)
    assert model.encoder.reductions == (2, 4, 8)
    assert not hasattr(model.encoder, "layer3")
    assert model(torch.randn(1, 3, 40, 44)).shape == (1, 2, 40, 44)


def test_vgg16_stage_table():
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = UNet(encoder="vgg16")
        feats = model.encoder(torch.empty(1, 3, 256, 256))
    assert model.encoder.out_channels == (64, 128, 256, 512, 512)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 256, 256), (128, 128, 128), (256, 64, 64), (512, 32, 32), (512, 16, 16)]


# ---------------------------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("arch", list(REFERENCE_NODES))
def test_local_state_dict_reproduces_torchvision_features(arch: str, tmp_path, torchvision_model):
    tv = torchvision_model(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(state_dict_of(tv), path)
    enc = get_encoder(arch, weights=str(path)).eval()
    assert enc.mean == IMAGENET_MEAN and enc.std == IMAGENET_STD
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = enc(x)
    ref = reference_features(tv, arch, x)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
@pytest.mark.parametrize(("layout", "suffix"), [("whole", ".pth"), ("features", ".pth"),
                                                ("features", ".safetensors")])
def test_vgg_weights_load_and_match_torchvision(tmp_path, arch, layout, suffix, torchvision_model):
    """torchvision's whole-model (``features.N.*``) and features-only (``N.*``) state dicts load as they are."""
    from safetensors.torch import save_file

    ref = torchvision_model(arch).features
    sd = ref.state_dict()
    if layout == "whole":
        sd = {f"features.{k}": v for k, v in sd.items()} | {"classifier.0.weight": torch.randn(4, 4)}
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
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


def test_safetensors_and_old_checkpoints_without_num_batches_tracked(tmp_path):
    from safetensors.torch import save_file

    tv = random_torchvision("resnet18", seed=3)
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.safetensors"
    save_file(sd, str(path))
    enc = get_encoder("resnet18", weights=str(path))
    assert torch.equal(enc.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(enc.conv1.weight, tv.conv1.weight)


def test_weights_that_do_not_fit_are_rejected(tmp_path, torchvision_model):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)  # same shapes, extra blocks
    with pytest.raises(WeightsError, match="not in torchvision's resnet18"):
        get_encoder("resnet18", weights=str(path))
    vgg = tmp_path / "vgg16.pth"
    torch.save(state_dict_of(torchvision_model("vgg16")), vgg)  # VGG16's conv indices are VGG16-BN's ReLUs
    with pytest.raises(WeightsError, match="not in torchvision's vgg16_bn"):
        get_encoder("vgg16_bn", weights=str(vgg))
    with pytest.raises(WeightsError, match="not found"):
        get_encoder("resnet18", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match="nope.pth"):
        UNet(encoder="vgg16", encoder_weights=bad)
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights"):
        UNet(encoder="vgg16", encoder_weights=bad)


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "convnext_tiny"])
def test_in_channels_adaptation_matches_rgb(arch: str, tmp_path, torchvision_model):
    tv = torchvision_model(arch, seed=1)
    path = tmp_path / f"{arch}.pth"
    torch.save(state_dict_of(tv), path)
    grey = torch.rand(1, 1, 64, 64)
    rgb = torch.rand(1, 3, 64, 64)
    one = get_encoder(arch, in_channels=1, weights=str(path)).eval()
    six = get_encoder(arch, in_channels=6, weights=str(path)).eval()
    arch_nodes = REFERENCE_NODES[arch]
    with torch.no_grad():
        ours_grey = one(grey)
        ours_six = six(torch.cat([rgb, rgb], dim=1))
    # A grey image through summed kernels == the same grey value in all three RGB channels.
    for a, b in zip(ours_grey, reference_features(tv, arch, grey.repeat(1, 3, 1, 1))):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # Six channels (kernels repeated, scaled by 3/6): an RGB image given twice == the RGB image.
    for a, b in zip(ours_six, reference_features(tv, arch, rgb)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert len(arch_nodes) == len(ours_grey)
    assert one.mean == (pytest.approx(sum(IMAGENET_MEAN) / 3),)
    assert one.std == (pytest.approx(sum(IMAGENET_STD) / 3),)
    assert len(six.mean) == 6 and six.std[3:] == IMAGENET_STD


def test_in_channels_from_scratch_through_unet():
    model = UNet(num_classes=2, in_channels=1, encoder="swin_t")
    assert model.encoder.features[0][0].weight.shape[1] == 1
    assert model.encoder.mean is None
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_adapt_input_conv():
    w = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    w5 = adapt_input_conv(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    assert torch.allclose(w5[:, 3], w[:, 0] * 3 / 5)
    # A 5-channel image repeating RGB-like values keeps the response's scale: sum over channels.
    assert torch.allclose(w5.sum(1), (w[:, [0, 1, 2, 0, 1]]).sum(1) * 3 / 5)


def test_plain_weights_roundtrip(tmp_path):
    a = UNet(num_classes=2, base_channels=4)
    torch.save(a.encoder.state_dict(), tmp_path / "enc.pt")
    b = UNet(num_classes=2, base_channels=4, encoder_weights=tmp_path / "enc.pt")
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(b.encoder.state_dict()[k], v)


# ------------------------------------------------------------------------------------- torch hub cache


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """A temporary torch hub dir; any download attempt fails the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"attempted to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_imagenet_weights_come_from_the_hub_cache(hub_dir, torchvision_model):
    """``encoder_weights="imagenet"`` goes through torchvision's enum and torch hub's cache, not the network."""
    enum = IMAGENET_WEIGHTS["resnet18"]
    assert enum is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert IMAGENET_WEIGHTS["vgg16"] is torchvision.models.VGG16_Weights.IMAGENET1K_V1
    assert IMAGENET_WEIGHTS["vgg16_bn"] is torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1
    tv = random_torchvision("resnet18", seed=7)
    target = hub_dir / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), target)
    assert hub_checkpoint_path(enum) == target
    vgg = torchvision_model("vgg16")
    torch.save(state_dict_of(vgg), hub_checkpoint_path(IMAGENET_WEIGHTS["vgg16"]))

    model = UNet(num_classes=2, encoder="resnet18", encoder_weights="imagenet")
    assert torch.equal(model.encoder.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.encoder.layer3[0].bn1.running_mean, tv.layer3[0].bn1.running_mean)
    assert model.encoder.mean == IMAGENET_MEAN and model.encoder.std == IMAGENET_STD
    assert torch.equal(get_encoder("vgg16", weights="imagenet").features[0].weight, vgg.features[0].weight)
    grey_vgg = UNet(num_classes=2, in_channels=1, encoder="vgg16", encoder_weights="imagenet")
    assert torch.equal(grey_vgg.encoder.features[0].weight, vgg.features[0].weight.sum(1, keepdim=True))
    assert torch.equal(grey_vgg.encoder.features[28].weight, vgg.features[28].weight)
    assert grey_vgg.encoder.mean == (pytest.approx(sum(IMAGENET_MEAN) / 3),)

    records = {r.name: r for r in list_encoders(["resnet18", "resnet34", "vgg16", "vgg16_bn", "plain"])}
    assert records["resnet18"].imagenet_cached is True
    assert records["vgg16"].imagenet_cached is True
    assert records["resnet34"].imagenet_cached is False
    assert records["vgg16_bn"].imagenet_cached is False
    assert records["plain"].imagenet_weights is None

    # A weights file that is not cached fails with a clear message, without touching the network.
    with pytest.raises(WeightsError, match="local state-dict path"):
        get_encoder("resnet34", weights="imagenet")


# --------------------------------------------------------------------------------------------- catalog


def test_list_encoders_records_and_table():
    records = {r.name: r for r in list_encoders()}
    assert set(records) == set(encoder_names())
    r18 = records["resnet18"]
    assert r18.out_channels == (64, 64, 128, 256, 512) and r18.reductions == (2, 4, 8, 16, 32)
    assert r18.params == sum(p.numel() for p in get_encoder("resnet18").parameters())
    assert r18.imagenet_weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert records["vgg16"].imagenet_weights == "VGG16_Weights.IMAGENET1K_V1"
    assert records["vgg16_bn"].imagenet_weights == "VGG16_BN_Weights.IMAGENET1K_V1"
    assert records["vgg16"].params == sum(p.numel() for p in get_encoder("vgg16").parameters()) == 14_714_688
    assert records["swin_t"].reductions == (4, 8, 16, 32)
    assert records["efficientnet_b4"].out_channels == (24, 32, 56, 160, 448)
    table = format_encoders(list(records.values()))
    assert "mobilenet_v3_large" in table and "16,24,40,112,960" in table and "11.2M" in table


# ------------------------------------------------------------------------------------------------ timm


def test_timm_encoder_through_unet():
    torch.manual_seed(0)
    model = UNet(num_classes=3, encoder="timm:resnet18")
    assert model.encoder.out_channels == (64, 64, 128, 256, 512)
    assert model.encoder.reductions == (2, 4, 8, 16, 32)
    assert model.encoder.mean is None
    y = model(torch.randn(1, 3, 67, 75))
    assert y.shape == (1, 3, 67, 75)
    y.mean().backward()
    assert torch.isfinite(model.encoder.model.conv1.weight.grad).all()


def test_timm_channels_last_features_are_permuted():
    enc = get_encoder("timm:test_mambaout", in_channels=2).eval()
    assert enc.channels_last
    with torch.no_grad():
        feats = enc(torch.randn(1, 2, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // r, 64 // r)
                                                  for c, r in zip(enc.out_channels, enc.reductions)]


def test_timm_local_weights_and_depth(tmp_path):
    import timm

    torch.manual_seed(0)
    full = timm.create_model("resnet18").eval()
    path = tmp_path / "timm_resnet18.pth"
    torch.save(full.state_dict(), path)
    enc = get_encoder("timm:resnet18", weights=str(path)).eval()
    assert enc.mean == IMAGENET_MEAN
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x)[-1], full.forward_features(x), atol=1e-5)
    shallow = get_encoder("timm:resnet18", depth=3)
    assert shallow.out_channels == (64, 64, 128)
    assert not hasattr(shallow.model, "layer3")
    with pytest.raises(ValueError, match="no model"):
        get_encoder("timm:not_a_model_xyz")


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'unetkit\[timm\]'"):
        UNet(num_classes=2, encoder="timm:resnet18")
