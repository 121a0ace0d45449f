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

    def scripted(self, boundary=False, tta=False):
        result = real_validate(self, boundary, tta)
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


def _folder(root: Path, masks: list) -> Path:
    import numpy as np
    from PIL import Image

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        Image.fromarray((np.arange(24 * 24).reshape(24, 24) % 200).astype("uint8")).save(root / "images" / f"{i}.png")
        Image.fromarray(np.asarray(m, dtype="uint8")).save(root / "masks" / f"{i}.png")
    return root


def test_plan_warns_of_a_stray_label_and_of_masks_without_foreground(tmp_path, capsys):
    import numpy as np

    from unetkit.cli.main import main

    m = np.zeros((24, 24), np.uint8)
    m[4:9, 4:9] = 1
    stray = m.copy()
    stray[0, 0] = 77
    _folder(tmp_path / "stray", [m, m, stray, m, m])
    assert main(["plan", str(tmp_path / "stray")]) == 0
    assert "76 of 77 foreground classes have no pixels" in capsys.readouterr().out
    _folder(tmp_path / "empty", [np.zeros((24, 24))] * 5)
    assert main(["plan", str(tmp_path / "empty"), "--num-classes", "2"]) == 0
    assert "masks hold only background" in capsys.readouterr().out


def test_odd_predict_inputs_and_outputs_are_named(tmp_path, capsys):
    from unetkit.cli.main import main

    model = Path(__file__).parent / "fixtures" / "v0" / "model2d.pt"
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "file").write_text("x")
    cases = [([str(tmp_path / "dangling.png")], "a symbolic link to a missing file"),
             ([str(tmp_path / "fifo.png")], "not a regular file"),
             ([str(Path(__file__).parent / "fixtures" / "v0" / "inputs2d"), "--out-file"], "is a file, not a folder")]
    for args, words in cases:
        out = str(tmp_path / "file" / "sub") if args[-1] == "--out-file" else str(tmp_path / "o")
        assert main(["predict", str(model), *[a for a in args if a != "--out-file"], "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err


def test_a_second_resume_of_a_live_run_is_refused_before_the_data_loads(tmp_path, capsys, monkeypatch):
    from filelock import FileLock

    from unetkit import data as data_mod
    from unetkit.atomic import LOCK_NAME
    from unetkit.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--data", "shapes", "--epochs", "1", "--base-channels", "4", "--depth", "2",
                 "--samples", "0", "--no-boundary-f1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    held = FileLock(str(out / LOCK_NAME))
    held.acquire()  # the live run
    try:
        def no_data(*a, **k):
            raise AssertionError("the data was loaded before the lock was checked")

        monkeypatch.setattr(data_mod, "open_datasets", no_data)
        assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
        assert "another unetkit run is using this run folder" in capsys.readouterr().err
    finally:
        held.release()
