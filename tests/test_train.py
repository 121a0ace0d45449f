"""The training loop, the run directory it writes, resume, and the train/evaluate/info/data commands."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from unetkit.checkpoint import load_model, read_checkpoint
from unetkit.cli.main import main
from unetkit.train import TrainConfig, TrainingError, fit
from unetkit.train.trainer import build_scheduler, resolve_amp

TINY = dict(data="shapes", base_channels=4, depth=3, batch_size=4, samples=2,
            data_options={"size": 48, "num_samples": 16, "val_samples": 4})


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "out": str(out), "epochs": 2, **kw})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    fit(tiny_cfg(out), progress=False, log=lambda s: None)
    return out


def test_run_directory_contents(trained):
    for name in ("config.yaml", "metrics.csv", "curves.png", "last.pt", "best.pt", "report.html", "metrics.json",
                 "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (trained / name).is_file(), name
    rows = read_csv(trained / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_loss", "val_miou", "val_dice", "val_pixel_accuracy", "lr"} <= set(rows[0])
    # Every checkpoint loads without unpickling code.
    ckpt = torch.load(trained / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["data"]["source"] == "shapes"
    assert {"optimizer", "scheduler", "scaler", "rng", "history", "model_config", "plan", "classes"} <= set(ckpt)
    # The sample panel: 2 rows of image | truth | prediction, 48x48 enlarged 5x, with 4 px gaps, under a
    # 24 px band of column titles and above a one-line 30 px class legend.
    panel = Image.open(trained / "samples" / "epoch_002.png")
    assert panel.size == (3 * 240 + 2 * 4, 26 + 24 + 2 * 240 + 4 + 30)  # title, column titles, rows, legend
    Image.open(trained / "curves.png").verify()


def test_best_checkpoint_is_the_best_epoch(trained):
    rows = read_csv(trained / "metrics.csv")
    best = max(rows, key=lambda r: float(r["val_miou"]))
    ckpt = read_checkpoint(trained / "best.pt")
    assert ckpt["epoch"] == int(best["epoch"])
    assert ckpt["best_miou"] == pytest.approx(float(best["val_miou"]), abs=1e-6)


def test_report_is_a_complete_page(trained):
    page = (trained / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    text = " ".join(parser.text)
    # Curves, confusion matrix and samples are inlined images; the per-class table names every class.
    assert parser.tags.count("img") == 3 and page.count("data:image/png;base64,") == 3
    for name in ("background", "circle", "square", "triangle"):
        assert name in text
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"background", "circle", "square", "triangle"}
    assert 0.0 <= metrics["boundary_f1"] <= 1.0


def test_evaluate_cli_matches_training_validation(trained, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(trained), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    best = read_checkpoint(trained / "best.pt")["best_miou"]
    assert got["miou"] == pytest.approx(best, abs=1e-5)
    assert set(got) >= {"miou", "dice", "pixel_accuracy", "boundary_f1", "per_class"}
    assert "mean" in capsys.readouterr().out


def test_evaluate_cli_tta_scores_the_flip_averaged_model(trained, tmp_path, capsys):
    from unetkit.checkpoint import checkpoint_datasets
    from unetkit.evaluate import evaluate
    from unetkit.inference import Predictor

    out = tmp_path / "tta.json"
    assert main(["evaluate", str(trained), "--tta", "--no-boundary-f1", "--amp", "off", "--json", str(out)]) == 0
    assert "flip TTA (every axis)" in capsys.readouterr().out  # trained without flips: --tta flips every axis
    model, info, ckpt = load_model(trained / "best.pt", "cpu")
    val = checkpoint_datasets(ckpt, None)[1]
    expected = evaluate(Predictor(model, info, device="cpu", amp="off", tta=True, batch_size=8), val, boundary=False)
    assert json.loads(out.read_text())["miou"] == pytest.approx(expected.miou, abs=5e-7)  # JSON keeps 6 decimals


def test_a_flip_trained_model_is_scored_and_applied_with_its_flips(tmp_path, capsys):
    """Trained with ``--hflip`` only: the checkpoint records the flip, the report scores ``best.pt`` with TTA over
    it, and ``unetkit evaluate`` does so by default (``--no-tta``: the plain model, the validation's score)."""
    from unetkit.checkpoint import DataInfo, checkpoint_datasets
    from unetkit.evaluate import evaluate
    from unetkit.inference import Predictor

    run = tmp_path / "run"
    fit(tiny_cfg(run, hflip=0.5, amp="off", samples=0, boundary_f1=False), progress=False, log=lambda s: None)
    ckpt = read_checkpoint(run / "best.pt")
    assert DataInfo.from_checkpoint(ckpt).flip_axes == (-1,)
    model, info, ckpt = load_model(run / "best.pt", "cpu")
    val = checkpoint_datasets(ckpt, None)[1]
    flipped = evaluate(Predictor(model, info, device="cpu", amp="off", tta=[-1], batch_size=4), val,
                       boundary=False)
    assert json.loads((run / "metrics.json").read_text())["miou"] == pytest.approx(flipped.miou, abs=1e-6)
    assert "flip TTA (W)" in (run / "report.html").read_text()
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--no-boundary-f1", "--amp", "off", "--json", str(out)]) == 0
    assert "flip TTA (W)" in capsys.readouterr().out
    assert json.loads(out.read_text())["miou"] == pytest.approx(flipped.miou, abs=1e-6)
    assert main(["evaluate", str(run), "--no-tta", "--no-boundary-f1", "--amp", "off", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == pytest.approx(ckpt["best_miou"], abs=1e-6)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from unetkit.train import trainer as trainer_mod

    straight = tmp_path / "straight"
    fit(tiny_cfg(straight, epochs=3), progress=False, log=lambda s: None)
    broken = tmp_path / "broken"
    real = trainer_mod.Trainer.train_epoch

    def killed(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of epoch 2
        return real(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg(broken, epochs=3), progress=False, log=lambda s: None)
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", real)
    assert read_checkpoint(broken / "last.pt")["epoch"] == 1
    result = fit(resume=broken, progress=False, log=lambda s: None)
    assert result.epochs_run == 3
    a, b = read_csv(straight / "metrics.csv"), read_csv(broken / "metrics.csv")
    assert [r["epoch"] for r in b] == ["1", "2", "3"]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "val_miou", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-6), (ra["epoch"], key)
    # The optimizer state continued (Adam's step count covers all three epochs).
    opt_a = read_checkpoint(straight / "last.pt")["optimizer"]["state"][0]
    opt_b = read_checkpoint(broken / "last.pt")["optimizer"]["state"][0]
    assert float(opt_a["step"]) == float(opt_b["step"]) == 3 * 4
    torch.testing.assert_close(opt_a["exp_avg"], opt_b["exp_avg"], rtol=1e-3, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from unetkit.train import trainer as trainer_mod

    out = tmp_path / "nan"
    real = trainer_mod.Trainer.train_epoch

    def poisoned(self, epoch):
        if epoch == 1:
            self.loss = lambda out, target: out.sum() * float("nan")
        return real(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", poisoned)
    with pytest.raises(TrainingError, match="became nan at epoch 2"):
        fit(tiny_cfg(out, epochs=3), progress=False, log=lambda s: None)
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_amp_policy():
    assert resolve_amp("auto", torch.device("cpu")) is None  # the session says no native bf16 (conftest.py)
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))


def test_cosine_schedule_warms_up_and_decays():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(TrainConfig(scheduler="cosine"), opt, total_steps=40, warmup_steps=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.new("L", (16, 16)).save(data / "images" / "a.png")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a.png" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_errors_and_config_file(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nbogus_option: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "bogus_option" in capsys.readouterr().err


def test_cli_train_with_config_and_flags(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: shapes\nbase_channels: 4\ndepth: 3\nepochs: 5\nsamples: 0\n"
                   "data_options: {size: 32, num_samples: 8, val_samples: 4}\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--quiet",
                 "--no-boundary-f1"]) == 0
    ckpt = read_checkpoint(out / "last.pt")
    saved = ckpt["config"]
    assert saved["epochs"] == 1 and ckpt["model_config"]["base_channels"] == 4  # the flag won over the file
    assert "model" not in saved  # the model's options are stored once, as model_config
    written = yaml.safe_load((out / "config.yaml").read_text())  # written without sample pictures too
    assert written["epochs"] == 1 and written["samples"] == 0 and not (out / "samples").exists()
    assert "report: " in capsys.readouterr().out
    model, info, _ = load_model(out)
    assert info.num_classes == 4 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_info_and_data_export(tmp_path, capsys):
    assert main(["info", "--encoder", "plain", "--base-channels", "4", "--depth", "3", "--size", "32"]) == 0
    assert "output" in capsys.readouterr().out
    assert main(["info", "--encoders"]) == 0
    listing = capsys.readouterr().out
    assert "vgg16" in listing and "64,128,256,512,512" in listing
    out = tmp_path / "shapes"
    assert main(["data", "export", "shapes", str(out)]) == 0
    assert len(list((out / "images").glob("*.png"))) == 64 and (out / "classes.yaml").is_file()


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "unetkit", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("unetkit ")


def test_end_to_end_predict_after_train(trained, tmp_path):
    """train -> evaluate (above) -> predict: the CLI's masks equal the model's argmax on the same image."""
    from unetkit.checkpoint import checkpoint_datasets
    from unetkit.viz import to_rgb8

    model, info, ckpt = load_model(trained)
    _, val = checkpoint_datasets(ckpt)
    raw, _ = val.load_raw(0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(to_rgb8(raw)).save(src / "img.png")
    out = tmp_path / "pred"
    assert main(["predict", str(trained), str(src), "--out", str(out)]) == 0
    mask = np.array(Image.open(out / "img_mask.png"))
    x = (torch.from_numpy(np.array(Image.open(src / "img.png"))).permute(2, 0, 1).float() / 255
         - torch.tensor(info.mean).view(-1, 1, 1)) / torch.tensor(info.std).view(-1, 1, 1)
    with torch.inference_mode():
        expected = model(x[None]).argmax(1)[0].numpy()
    assert mask.shape == (48, 48) and (mask == expected).mean() > 0.999
    assert (out / "img_overlay.png").is_file()


def test_tensorboard_scalars_match_metrics_csv(trained):
    """With tensorboard installed (the dev extra), every epoch's metrics are TensorBoard scalars by step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    rows = read_csv(trained / "metrics.csv")
    loss = events.Scalars("loss/train_loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    assert [e.value for e in loss] == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("val/val_miou")] == pytest.approx(
        [float(r["val_miou"]) for r in rows if r["val_miou"]], rel=1e-6)


def test_adam_optimizers_are_fused_and_update_like_the_plain_loop():
    from unetkit.train.optim import build_optimizer

    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-2)
    opt = build_optimizer(cfg, ours)
    plain = torch.optim.AdamW(ref, lr=1e-2, weight_decay=1e-2, foreach=False)
    assert opt.defaults["fused"] is True
    for step in range(3):
        g = [torch.randn_like(p) for p in ref]
        for p, q, gi in zip(ref, ours, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        plain.step()
        opt.step()
        for p, q in zip(ref, ours):
            assert torch.allclose(p, q, atol=1e-6), step
    assert build_optimizer(TrainConfig(optimizer="adam"), [torch.nn.Parameter(torch.ones(2))]).defaults["fused"]


def test_checkpoints_are_written_together_not_at_every_improvement(tmp_path, monkeypatch):
    """Improvements are kept in memory and written with last.pt after the first epoch, every 30 s and at the
    end; best.pt and last.pt agree on the best score, and an interrupt writes the kept best state."""
    from unetkit.train import outputs as outputs_mod
    from unetkit.train import trainer as trainer_mod

    writes: list[tuple[str, int]] = []
    real_save = outputs_mod.save_checkpoint

    def counting_save(state, path):
        writes.append((Path(path).name, state["epoch"]))
        return real_save(state, path)

    scores = [0.1, 0.2, 0.3, 0.25, 0.4, 0.35]
    real_validate = trainer_mod.Trainer.validate

    def scripted(self, boundary=False, tta=False):
        result = real_validate(self, boundary, tta)
        result.miou = scores[min(len(self.history), len(scores) - 1)]
        return result

    def interrupted(self, epoch):
        if epoch == 5:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    real_epoch = trainer_mod.Trainer.train_epoch
    monkeypatch.setattr(outputs_mod, "save_checkpoint", counting_save)
    monkeypatch.setattr(trainer_mod, "CHECKPOINT_EVERY_S", 1e9)  # however slow the machine
    monkeypatch.setattr(trainer_mod.Trainer, "validate", scripted)
    out = tmp_path / "run"
    fit(tiny_cfg(out, epochs=6, val_every=1), progress=False, log=lambda s: None)
    # Epoch 1 writes both; improvements at 2, 3 and 5 wait for the end.
    assert writes == [("best.pt", 1), ("last.pt", 1), ("best.pt", 5), ("last.pt", 6)]
    assert read_checkpoint(out / "best.pt")["best_miou"] == read_checkpoint(out / "last.pt")["best_miou"] == 0.4
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_005.png"]

    writes.clear()
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", interrupted)
    out2 = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg(out2, epochs=6, val_every=1), progress=False, log=lambda s: None)
    # Interrupted in epoch 6 (index 5): the best state of epoch 5 is written, and last.pt rolls back to it.
    assert writes == [("best.pt", 1), ("last.pt", 1), ("best.pt", 5), ("last.pt", 5)]
    assert read_checkpoint(out2 / "last.pt")["epoch"] == 5
