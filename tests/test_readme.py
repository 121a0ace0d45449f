"""The README's Python snippets run as written, offline, one after the other in one session (as a new user
pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 3


def test_readme_snippets_run_in_order(tmp_path, monkeypatch, one_torch_thread, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
    result = namespace["result"]  # the training snippet: a run directory with a report came out
    assert (tmp_path / result.run_dir / "report.html").is_file()
    assert 0.0 <= result.best_miou <= 1.0
    # the Predictor snippet: a mask at the image's size, the folder's masks written
    image = np.asarray(Image.open(tmp_path / "my_data" / "images" / "train_0000.png"))
    assert namespace["mask"].shape == image.shape[:2]
    assert namespace["probs"].shape == (len(namespace["predictor"].class_names), *image.shape[:2])
    written = sorted(p.name for p in (tmp_path / "predictions").glob("*_mask.png"))
    assert len(written) == len(list((tmp_path / "my_data" / "images").glob("*.png"))) > 0
    saved = np.asarray(Image.open(tmp_path / "predictions" / "train_0000_mask.png"))
    assert (saved == namespace["mask"]).all()  # the folder path writes what predict() returns
