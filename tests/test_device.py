"""Precision: the CPU bf16 verdict (override, probe, cache), ``resolve_amp``, and bf16 training and inference
keeping the loss, the optimizer state and the predictions' agreement where they belong.

The session runs with ``UNETKIT_CPU_BF16=0`` (tests/conftest.py); the tests here opt in per test.
No timing is asserted: the probe's numbers depend on the machine and its load.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit import UNet, device
from unetkit.checkpoint import DataInfo, save_checkpoint
from unetkit.cli.main import main
from unetkit.data import generate_shapes
from unetkit.device import CPU_BF16_ENV, cpu_has_native_bf16, describe_amp, probe_cpu_bf16, resolve_amp
from unetkit.inference import predict
from unetkit.losses import build_loss
from unetkit.train import TrainConfig
from unetkit.train.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """No override, a private cache folder, an empty in-process cache; yields the probe's call log."""
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    device._measured_cpu_bf16.cache_clear()
    calls: list[int] = []
    verdict = {"native_bf16": True}

    def fake_probe():
        calls.append(1)
        return {**verdict, "ratio": 0.5, "threshold": device.BF16_MAX_RATIO}

    monkeypatch.setattr(device, "probe_cpu_bf16", fake_probe)
    yield calls, verdict
    device._measured_cpu_bf16.cache_clear()


# ----------------------------------------------------------------------------------------- the verdict
def test_env_override_forces_the_verdict_both_ways(monkeypatch, measured):
    calls, _ = measured
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_native_bf16() is True
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert cpu_has_native_bf16() is False
    assert calls == []  # an override never measures
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="UNETKIT_CPU_BF16='yes': use 1"):
        cpu_has_native_bf16()


def test_verdict_is_cached_on_disk_and_read_back(measured):
    calls, verdict = measured
    assert cpu_has_native_bf16() is True
    assert cpu_has_native_bf16() is True
    assert len(calls) == 1  # measured once per process
    path = device.bf16_cache_path()
    saved = json.loads(path.read_text())
    key = device._cpu_key()
    assert key in saved and saved[key]["native_bf16"] is True
    assert torch.__version__ in key
    # A new process (in-process cache cleared) reads the file instead of measuring: edit it to tell.
    saved[key]["native_bf16"] = False
    path.write_text(json.dumps(saved))
    device._measured_cpu_bf16.cache_clear()
    assert cpu_has_native_bf16() is False
    assert len(calls) == 1
    # Another CPU model / torch version is a different key: measured and added next to the first.
    saved = {"other cpu | x86_64 | torch 0.0": {"native_bf16": True}}
    path.write_text(json.dumps(saved))
    device._measured_cpu_bf16.cache_clear()
    verdict["native_bf16"] = False
    assert cpu_has_native_bf16() is False
    assert len(calls) == 2
    assert set(json.loads(path.read_text())) == {"other cpu | x86_64 | torch 0.0", key}


def test_unwritable_or_corrupt_cache_is_tolerated(monkeypatch, tmp_path, measured):
    calls, _ = measured
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache folder cannot be created
    assert cpu_has_native_bf16() is True
    device._measured_cpu_bf16.cache_clear()
    corrupt = tmp_path / "corrupt"
    (corrupt / "unetkit").mkdir(parents=True)
    (corrupt / "unetkit" / "cpu_bf16.json").write_text("{not json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(corrupt))
    assert cpu_has_native_bf16() is True
    assert len(calls) == 2
    assert device._cpu_key() in json.loads((corrupt / "unetkit" / "cpu_bf16.json").read_text())


def test_the_real_probe_reports_both_times_and_leaves_rng_and_threads_alone():
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    r = probe_cpu_bf16()
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert r["fp32_ms"] > 0 and r["bf16_ms"] > 0
    assert r["native_bf16"] == (r["ratio"] <= device.BF16_MAX_RATIO)
    assert r["ratio"] == pytest.approx(r["bf16_ms"] / r["fp32_ms"], rel=0.01)


# ----------------------------------------------------------------------------------------- resolve_amp
def test_resolve_amp_on_cpu_follows_the_verdict(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_amp("auto", CPU) is torch.bfloat16
    assert resolve_amp("off", CPU) is None
    assert describe_amp("auto", torch.bfloat16, CPU) == "bf16 autocast, --amp auto: UNETKIT_CPU_BF16=1"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_amp("auto", CPU) is None
    assert resolve_amp("auto", "cpu") is None
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # asked for: used whatever the verdict
    assert describe_amp("off", None, CPU) == "fp32, --amp off"
    assert describe_amp("auto", None, CPU) == "fp32, --amp auto: UNETKIT_CPU_BF16=0"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
    with pytest.raises(ValueError, match="amp must be auto, off, fp16 or bf16"):
        resolve_amp("fp8", CPU)


# ----------------------------------------------------------------------------------------- training
TINY = dict(data="shapes", base_channels=4, depth=3, batch_size=4, samples=0, epochs=1,
            data_options={"size": 48, "num_samples": 16, "val_samples": 4})


def test_bf16_training_step_keeps_loss_params_and_optimizer_state_fp32(monkeypatch, tmp_path):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    auto = Trainer(TrainConfig.from_dict({**TINY, "out": str(tmp_path / "auto"), "device": "cpu"}),
                   progress=False, log=lambda s: None)
    # Training follows the CPU's verdict as inference does (bf16 won every paired run at equal wall time).
    assert auto.amp_dtype is torch.bfloat16 and "bf16 autocast, --amp auto: UNETKIT_CPU_BF16=1" in auto.describe()
    t = Trainer(TrainConfig.from_dict({**TINY, "out": str(tmp_path / "run"), "device": "cpu", "amp": "bf16"}),
                progress=False, log=lambda s: None)
    assert t.amp_dtype is torch.bfloat16
    assert "bf16 autocast" in t.describe()
    images, masks = next(iter(t.loader))
    t.model.train()
    with t.autocast():
        out = t.model(images.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16  # the forward pass did run in bf16
    loss = t.loss(out, masks)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    t.optimizer.step()
    for p in t.model.parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
    states = [s for s in t.optimizer.state.values() if s]
    assert states and all(v.dtype == torch.float32 for s in states for k, v in s.items() if k != "step")
    t.optimizer.zero_grad()
    mean_loss, _ = t.train_epoch(0)  # the loop itself, under the same autocast
    assert np.isfinite(mean_loss)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    val = t.validate()
    assert val.loss is not None and np.isfinite(val.loss) and 0.0 <= val.miou <= 1.0


# ----------------------------------------------------------------------------------------- inference
@pytest.fixture(scope="module")
def trained_small():
    """A small UNet trained for 40 steps on shapes (fp32), and 8 held-out normalised images with masks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    imgs, masks = generate_shapes(24, size=48, num_classes=3, in_channels=1, seed=0)
    x = (torch.from_numpy(imgs).float() / 255 - 0.4) / 0.25
    y = torch.from_numpy(masks).long()
    torch.manual_seed(0)
    model = UNet(num_classes=3, in_channels=1, base_channels=8, depth=3)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    loss_fn = build_loss("ce+dice", 3)
    for _ in range(40):
        i = torch.randint(0, 16, (8,))
        loss_fn(model(x[i]), y[i]).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    yield model, x[16:], y[16:]
    torch.set_num_threads(before)


def test_bf16_predictions_agree_with_fp32(trained_small):
    model, x, y = trained_small
    fp32 = predict(model, x, output="logits")
    bf16 = predict(model, x, output="logits", autocast_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32  # blended and returned in fp32
    assert not torch.equal(fp32, bf16)  # the network did run in bf16
    assert (fp32.argmax(1) == y).float().mean() > 0.9  # the model has learned something to agree on
    labels32 = predict(model, x, tile_size=32)
    labels16 = predict(model, x, tile_size=32, autocast_dtype=torch.bfloat16)
    assert labels16.dtype == torch.int64
    assert (labels32 == labels16).float().mean() >= 0.99
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() >= 0.99
    assert model.training is False and all(p.dtype == torch.float32 for p in model.parameters())


def test_predict_cli_amp_option(tmp_path, trained_small, capsys):
    model, x, _ = trained_small
    n = model.config.num_classes
    info = DataInfo(n, 1, [f"c{i}" for i in range(n)], [(0, 0, 0), (230, 40, 40), (40, 180, 70)], (0.4,), (0.25,))
    ckpt = tmp_path / "m.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(), "data": info.to_dict()},
                    ckpt)
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(2):
        Image.fromarray(((x[i, 0] * 0.25 + 0.4).clamp(0, 1) * 255).round().byte().numpy()).save(src / f"s{i}.png")
    masks = {}
    for amp in ("off", "bf16", "auto"):
        out = tmp_path / amp
        assert main(["predict", str(ckpt), str(src), "--out", str(out), "--no-progress", "--amp", amp]) == 0
        masks[amp] = np.stack([np.asarray(Image.open(out / f"s{i}_mask.png")) for i in range(2)])
    assert (masks["off"] == masks["bf16"]).mean() >= 0.99
    assert np.array_equal(masks["auto"], masks["off"])  # the session's verdict is no: auto is fp32
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(src), "--out", str(tmp_path / "x"), "--amp", "fp16"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
