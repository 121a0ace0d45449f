"""Nothing lost: a crash between the two checkpoint writes keeps the better best.pt, and SIGTERM stops a run
as Ctrl-C does (checkpoint written, resume line printed, exit 143)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unetkit.checkpoint import read_checkpoint
from unetkit.train import TrainConfig, fit

TINY = {"data": {"source": "shapes", "options": {"num_samples": 8, "val_samples": 2, "size": 32}},
        "base_channels": 4, "depth": 2, "batch_size": 4, "samples": 1, "boundary_f1": False, "val_every": 1}


class Killed(BaseException):
    """Stands in for kill -9: nothing catches it, nothing is cleaned up."""


def test_a_crash_between_best_and_last_keeps_the_better_best(tmp_path, monkeypatch):
    from unetkit.train import outputs, trainer

    scores = itertools.chain([0.1, 0.5, 0.3, 0.2, 0.3, 0.25, 0.4, 0.45], itertools.repeat(0.0))
    real_validate, real_save = trainer.Trainer.validate, outputs.save_checkpoint

    def scripted(self, boundary=False):
        result = real_validate(self, boundary)
        result.miou = next(scores)
        return result

    def crash_on_last(state, path):
        if Path(path).name == "last.pt" and state["epoch"] == 3:
            raise Killed  # best.pt (epoch 2, 0.5) is on disk, last.pt still says epoch 1 with best 0.1
        return real_save(state, path)

    monkeypatch.setattr(trainer.Trainer, "validate", scripted)
    monkeypatch.setattr(trainer, "CHECKPOINT_EVERY_S", 1e9)
    monkeypatch.setattr(outputs, "save_checkpoint", crash_on_last)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        fit(TrainConfig.from_dict({**TINY, "out": str(out), "epochs": 3}), progress=False, log=lambda s: None)
    assert read_checkpoint(out / "best.pt")["best_miou"] == 0.5
    assert read_checkpoint(out / "last.pt")["epoch"] == 1
    monkeypatch.setattr(outputs, "save_checkpoint", real_save)
    lines: list[str] = []
    result = fit(TrainConfig(epochs=6), resume=out, progress=False, log=lines.append)
    best = read_checkpoint(out / "best.pt")
    assert (best["best_miou"], best["best_epoch"]) == (0.5, 2)  # 0.2 .. 0.45 never replaced it
    assert result.best_miou == 0.5 and any("is newer than last.pt" in line for line in lines)


def test_sigterm_writes_the_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from unetkit.cli.main import main; sys.exit(main(sys.argv[1:]))",
           "train", "--data", "shapes", "--epochs", "5000", "--base-channels", "4", "--depth", "2",
           "--samples", "0", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "last.pt").is_file(), proc.communicate()[1]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and f"continue with: unetkit train --resume {out}" in stdout
    assert "Traceback" not in stderr
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1
