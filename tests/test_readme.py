"""The README's Python snippets run as written, offline (a new user pastes them first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, one_torch_thread, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), namespace)
    if "result" in namespace:  # the training snippet: a run directory with a report came out
        assert (tmp_path / namespace["result"].run_dir / "report.html").is_file()
        assert 0.0 <= namespace["result"].best_miou <= 1.0
