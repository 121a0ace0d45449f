"""``unetkit train`` with a pretrained torchvision encoder on single-channel data.

A local torchvision VGG16 state dict (3-channel ImageNet layout) trains on the grey demo data: the first
conv is adapted to one channel and the normalisation stored in the checkpoint is ImageNet's, averaged to
one channel (it once stayed 3-channel and the run stopped before training).
"""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from unetkit.checkpoint import read_checkpoint
from unetkit.cli.main import main
from unetkit.models import UNet, UNetConfig


def test_train_vgg16_local_weights_on_grey_demo_data(tmp_path):
    weights = tmp_path / "vgg16.pth"
    torch.save(models.vgg16(weights=None).state_dict(), weights)  # the whole model, classifier included
    out = tmp_path / "run"
    code = main(["train", "--encoder", "vgg16", "--encoder-weights", str(weights), "--depth", "2",
                 "--epochs", "1", "--batch-size", "4", "--samples", "0", "--no-boundary-f1", "--quiet",
                 "--out", str(out)])
    assert code == 0
    ckpt = read_checkpoint(out)
    assert ckpt["model_config"]["encoder"] == "vgg16" and ckpt["model_config"]["in_channels"] == 1
    mean, std = ckpt["plan"]["norm"]["mean"], ckpt["plan"]["norm"]["std"]
    assert len(mean) == len(std) == 1
    assert mean[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3)  # ImageNet's RGB statistics, averaged
    assert std[0] == pytest.approx((0.229 + 0.224 + 0.225) / 3)
    # The data were normalised as the encoder built from the run's config (weights re-read) expects.
    encoder = UNet(UNetConfig.from_dict(ckpt["model_config"])).encoder
    assert list(encoder.mean) == pytest.approx(mean) and list(encoder.std) == pytest.approx(std)
