"""Helpers of the benchmark scripts whose numbers go into the docs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_3d_model import paired_ratio  # noqa: E402


def test_paired_ratio_pairs_rounds_not_medians() -> None:
    # Round 4 is a slow spell for both models: pairing compares it with itself.
    ours = [1.0, 1.0, 1.0, 4.0]
    theirs = [1.1, 1.2, 1.0, 4.8]
    q = paired_ratio(ours, theirs)
    # per-round ratios sorted: 1.0, 1.1, 1.2, 1.2 -> median 1.15, inclusive quartiles 1.075 and 1.2
    assert q["median"] == pytest.approx(1.15)
    assert q["q1"] == pytest.approx(1.075)
    assert q["q3"] == pytest.approx(1.2)
    assert paired_ratio([2.0], [3.0]) == {"median": 1.5, "q1": 1.5, "q3": 1.5}


def test_loss_trace_means_windows_of_steps() -> None:
    from bench_datasets import loss_trace

    losses = [4.0, 2.0, 1.0, 1.0, 0.5]
    # windows of 2 steps: (4+2)/2 at step 2, (1+1)/2 at step 4, the short last window 0.5 at step 5
    assert loss_trace(losses, every=2) == [[2, 3.0], [4, 1.0], [5, 0.5]]
    assert loss_trace(losses, every=100) == [[5, 1.7]]
    assert loss_trace([], every=100) == []


def test_final_scores_are_the_last_models(tmp_path: Path) -> None:
    """``final_miou`` is ``last.pt`` scored on the validation pixels ``best.pt`` was: the last epoch's
    validation in ``metrics.csv`` gives the same number another way. A model trained with flips is also
    scored with flip TTA (``final_tta_*``), which the library's own evaluation gives too."""
    import csv
    import json

    import numpy as np
    import yaml
    from bench_datasets import final_scores
    from PIL import Image

    from unetkit.checkpoint import checkpoint_datasets, load_model
    from unetkit.cli.main import main
    from unetkit.evaluate import evaluate
    from unetkit.inference import Predictor

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i:14 + i, 6:18] = 1
        image = (rng.integers(0, 60, (24, 24)) + 150 * mask).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"c{i}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"c{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(run), "--epochs", "3", "--base-channels",
                 "4", "--depth", "2", "--samples", "0", "--no-boundary-f1", "--hflip", "0.5", "--vflip", "0.5",
                 "--quiet"]) == 0
    last = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["val_miou"]][-1]
    pixels = json.loads((run / "metrics.json").read_text())["pixels"]

    scores = final_scores(run, pixels)
    assert set(scores) == {"final_miou", "final_dice", "final_tta_miou", "final_tta_dice"}
    assert scores["final_miou"] == pytest.approx(float(last["val_miou"]), abs=1e-6)
    assert scores["final_dice"] == pytest.approx(float(last["val_dice"]), abs=1e-6)
    model, info, ckpt = load_model(run / "last.pt", "cpu")
    tta = evaluate(Predictor(model, info, device="cpu", tta=True), checkpoint_datasets(ckpt, None)[1])
    assert scores["final_tta_miou"] == pytest.approx(tta.miou, abs=1e-6)

    options = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**options, "hflip": 0.0, "vflip": 0.0}))
    assert set(final_scores(run, pixels)) == {"final_miou", "final_dice"}  # no flips, no TTA score


def test_nnunet_reference_holds_out_the_seeds_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net must be scored on the validation cases our run with ``--seed`` held out: a folder without
    ``val/`` draws them from the seed, so the seed has to reach the comparator's command."""
    import bench_datasets

    commands: list[list[str]] = []
    monkeypatch.setattr(bench_datasets, "run_process", lambda cmd, log: commands.append(cmd) or {"rc": 1})
    assert bench_datasets.nnunet_reference("DATA", 60.0, tmp_path / "nn", "cpu", seed=3) == {"rc": 1}
    cmd = commands[0]
    assert cmd[cmd.index("--seed") + 1] == "3"
    assert cmd[cmd.index("--data") + 1] == "DATA"
