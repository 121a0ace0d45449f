"""Run folders never lose work: exclusive while in use, earlier runs kept unless asked, atomic files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unetkit.atomic import atomic_write, claim_run_folder
from unetkit.checkpoint import read_checkpoint
from unetkit.cli.main import main

TINY = ["--data", "shapes", "--base-channels", "4", "--depth", "3", "--epochs", "1", "--samples", "1",
        "--no-boundary-f1", "--quiet"]


def shapes_args(out: Path) -> list[str]:
    return ["train", *TINY, "--out", str(out)]


@pytest.fixture(autouse=True)
def _small_shapes(monkeypatch):
    # The built-in shapes data set at 32 px, 8 images: a one-epoch run takes a second.
    from unetkit.data import registry

    real = registry._builtin

    def small(name, **kw):
        kw["options"] = {"size": 32, "num_samples": 8, "val_samples": 2, **kw["options"]}
        return real(name, **kw)

    monkeypatch.setattr(registry, "_builtin", small)


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    lock = claim_run_folder(out)
    try:
        assert main(shapes_args(out)) == 2
        err = capsys.readouterr().err
        assert "another unetkit run is using this run folder" in err and str(out) in err
        assert err.count("\n") == 1
    finally:
        lock.release()
    assert main(shapes_args(out)) == 0


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "run"
    code = (f"from unetkit.atomic import claim_run_folder; lock = claim_run_folder({str(out)!r}); "
            "print('locked', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match="another unetkit run"):
        claim_run_folder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    claim_run_folder(out).release()  # the OS dropped the dead process's lock


def test_an_earlier_run_is_kept_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(shapes_args(out)) == 0
    best = (out / "best.pt").read_bytes()
    capsys.readouterr()
    assert main(shapes_args(out)) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == best  # nothing was touched
    (out / "samples" / "epoch_099.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    assert main([*shapes_args(out), "--overwrite"]) == 0
    assert not (out / "samples" / "epoch_099.png").exists()  # the old run's pictures are gone
    assert (out / "notes.txt").read_text() == "mine"  # files unetkit did not write are left alone
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


def test_resume_cleans_temporaries_and_stores_resolved_data(tmp_path, monkeypatch, capsys):
    from unetkit.data import export_dataset

    data = export_dataset("shapes", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", "data", *TINY[2:], "--out", str(out)]) == 0
    assert read_checkpoint(out / "last.pt")["config"]["data"]["source"] == str(data.resolve())
    stale = out / ".last.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative --data would not resolve from here
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == 2 and not stale.exists()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--data", "shapes", "--quiet"]) == 2
    assert "cannot change them" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty), "--quiet"]) == 2
    assert "no last.pt in this folder, so there is nothing to resume" in capsys.readouterr().err


def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_named_and_the_old_file_survives(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"good")

    def torch_save_on_a_full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 143360 vs 143280")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    with pytest.raises(OSError) as e:
        atomic_write(target, torch_save_on_a_full_disk)
    assert e.value.errno == errno.ENOSPC
    assert str(target) in str(e.value) and "no space left on device" in str(e.value)
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_read_only_target_names_the_target_not_the_temporary(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(OSError) as e:
            atomic_write(ro / "m.json", lambda tmp: tmp.write_text("{}"))
        assert str(ro / "m.json") in str(e.value) and ".tmp" not in str(e.value)
    finally:
        ro.chmod(0o755)
    time.sleep(0)
