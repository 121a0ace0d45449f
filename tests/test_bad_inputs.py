"""Every bad input to the command line: exit code 2, one stderr line naming the file or option, no traceback.

Most cases call :func:`unetkit.cli.main.main` in-process (fast; the exit code, stderr and the absence of a
traceback are the same as for ``python -m unetkit``); one training run and one bad input go through a real
subprocess so the process-level behaviour is checked too. The data folders are a few 16x16 PNGs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetkit.checkpoint import load_model
from unetkit.cli.main import main
from unetkit.data import DatasetError
from unetkit.data.folder import scan_folder

#: The smallest training run: a 2-stage net of width 4, one epoch, no samples or Boundary F1.
TINY = ["--base-channels", "4", "--depth", "2", "--epochs", "1", "--samples", "0", "--no-boundary-f1", "--quiet"]
#: tqdm progress output, should any appear (the runs are ``--quiet``).
PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]")
#: A Python keyword argument offered as the fix (``in_channels=3``): the command line has flags instead.
PYTHON_HINT = re.compile(r"\b(in_channels|num_classes|ignore_index|val_fraction|binary)=")


def make_folder(root: Path, n: int = 4, size: int = 16) -> Path:
    """``n`` grey 8-bit ``size``x``size`` images with 0/1 masks in ``root/images`` and ``root/masks``."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[4:12, 4:12] = 1
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def float_tiffs(root: Path, bad: int, value: float) -> None:
    """Replace the PNG images by float32 TIFFs; image ``bad`` gets one ``value`` pixel (NaN or inf)."""
    rng = np.random.default_rng(1)
    for i, png in enumerate(sorted((root / "images").glob("*.png"))):
        arr = rng.random((16, 16), dtype=np.float32)
        if i == bad:
            arr[3, 5] = value
        tifffile.imwrite(png.with_suffix(".tif"), arr)
        png.unlink()


def stderr_lines(err: str) -> list[str]:
    """Non-empty stderr lines that are not progress-bar noise."""
    return [ln for ln in err.splitlines() if ln.strip() and not PROGRESS.search(ln)]


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, list[str]]:
    """Run the command line in-process; return the exit code and the stderr lines. Never a traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors exit from inside the parser
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out and "Traceback" not in err
    return code, stderr_lines(err)


def refused(capsys: pytest.CaptureFixture[str], *argv: object, names: tuple[str, ...]) -> str:
    """Assert exit code 2 and one stderr line that contains every string of ``names``; return the line."""
    code, lines = cli(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"unetkit {argv[0]}: error: "), line
    for name in names:
        assert name in line, (name, line)
    assert PYTHON_HINT.search(line) is None, line
    assert ".tmp" not in line, line  # a failed write names its target, not the hidden temporary file
    return line


# ---------------------------------------------------------------- a trained model for the other commands
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained by a real ``python -m unetkit`` with ``--norm none`` (a documented choice)."""
    root = tmp_path_factory.mktemp("trained")
    data = make_folder(root / "data")
    out = root / "run"
    r = subprocess.run([sys.executable, "-m", "unetkit", "train", "--data", str(data), *TINY, "--norm", "none",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    return out


def test_norm_none_trains_from_the_cli(run_dir: Path) -> None:
    ckpt = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["norm"] == "none"
    model = load_model(run_dir)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


# ---------------------------------------------------------------- data folders (docs/data.md's promises)
def _no_mask(root: Path) -> list[str]:
    (root / "masks" / "s1.png").unlink()
    return []


def _no_image(root: Path) -> list[str]:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "zz.png")
    return []


def _no_masks_folder(root: Path) -> list[str]:
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    return []


def _empty_images(root: Path) -> list[str]:
    for sub in ("images", "masks"):
        for p in (root / sub).iterdir():
            p.unlink()
    (root / "images" / "notes.txt").write_text("not an image")
    return []


def _size_differs(root: Path) -> list[str]:
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(root / "masks" / "s2.png")
    return []


def _corrupt_image(root: Path) -> list[str]:
    (root / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return []


def _truncated_image(root: Path) -> list[str]:
    p = root / "images" / "s1.png"
    p.write_bytes(p.read_bytes()[:60])  # a valid header, most pixel data missing
    return []


def _corrupt_mask(root: Path) -> list[str]:
    (root / "masks" / "s0.png").write_bytes(b"garbage")
    return []


def _jpeg_mask(root: Path) -> list[str]:
    (root / "masks" / "s0.png").unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "s0.jpg")
    return []


def _label_too_large(root: Path) -> list[str]:
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(root / "masks" / "s3.png")
    return ["--num-classes", "2"]


def _label_beyond_classes_yaml(root: Path) -> list[str]:
    (root / "classes.yaml").write_text("names: [background]\n")
    return []


def _classes_yaml_disagrees(root: Path) -> list[str]:
    (root / "classes.yaml").write_text("names: [background, thing]\n")
    return ["--num-classes", "3"]


def _mixed_channels(root: Path) -> list[str]:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "s2.png")
    return []


def _unconvertible_channels(root: Path) -> list[str]:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "s2.png")
    return ["--in-channels", "2"]


def _nan_pixels(root: Path) -> list[str]:
    float_tiffs(root, 2, float("nan"))
    return []


def _inf_pixels(root: Path) -> list[str]:
    float_tiffs(root, 1, float("-inf"))
    return []


def _rgb_mask(root: Path) -> list[str]:
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).save(root / "masks" / "s0.png")
    return []


def _unknown_colour(root: Path) -> list[str]:
    (root / "classes.yaml").write_text("names: [bg, fg]\ncolors: [[0, 0, 0], [255, 0, 0]]\n")
    Image.fromarray(np.full((16, 16, 3), (0, 255, 0), np.uint8)).save(root / "masks" / "s0.png")
    return []


def _shared_stem(root: Path) -> list[str]:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "s0.tif")
    return []


def _val_masks_only(root: Path) -> list[str]:
    (root / "val" / "masks").mkdir(parents=True)
    return []


DATA_CASES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "image without mask": (_no_mask, ("images/s1.png", "masks/s1.png")),
    "mask without image": (_no_image, ("masks/zz.png",)),
    "no masks folder": (_no_masks_folder, ("masks/",)),
    "empty images folder": (_empty_images, ("images/", "no images")),
    "mask size differs": (_size_differs, ("masks/s2.png", "images/s2.png", "12x8")),
    "corrupt image": (_corrupt_image, ("images/s1.png",)),
    "truncated image": (_truncated_image, ("images/s1.png",)),
    "corrupt mask": (_corrupt_mask, ("masks/s0.png",)),
    "jpeg mask": (_jpeg_mask, ("masks/s0.jpg", "PNG")),
    "label >= num_classes": (_label_too_large, ("masks/s3.png", "label value 7", "--num-classes 8")),
    "label beyond classes.yaml": (_label_beyond_classes_yaml, ("masks/s0.png", "classes.yaml")),
    "classes.yaml vs --num-classes": (_classes_yaml_disagrees, ("classes.yaml", "--num-classes")),
    "mixed channel counts": (_mixed_channels, ("images/s2.png", "images/s0.png", "--in-channels")),
    "unconvertible channels": (_unconvertible_channels, ("images/s2.png", "--in-channels")),
    "NaN pixels": (_nan_pixels, ("images/s2.tif", "NaN")),
    "infinite pixels": (_inf_pixels, ("images/s1.tif", "infinite")),
    "RGB mask without colours": (_rgb_mask, ("masks/s0.png", "classes.yaml")),
    "colour not in classes.yaml": (_unknown_colour, ("masks/s0.png", "(0, 255, 0)", "classes.yaml")),
    "two images share a stem": (_shared_stem, ("images/s0.png", "images/s0.tif")),
    "val/masks without val/images": (_val_masks_only, ("val/images",)),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    """Found while the folder is checked, before training: nothing is written into the run folder."""
    mutate, names = DATA_CASES[case]
    data = make_folder(tmp_path / "data")
    extra = mutate(data)
    out = tmp_path / "run"
    refused(capsys, "train", "--data", data, *TINY, *extra, "--out", out, names=names)
    assert not out.exists() or not any(out.iterdir())


def test_missing_or_unusable_data_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    refused(capsys, "train", "--data", tmp_path / "nope", *TINY, "--out", out, names=("nope",))
    (tmp_path / "plain").mkdir()
    refused(capsys, "train", "--data", tmp_path / "plain", *TINY, "--out", out, names=("plain", "images/"))
    (tmp_path / "file.txt").write_text("x")
    refused(capsys, "train", "--data", tmp_path / "file.txt", *TINY, "--out", out, names=("file.txt",))
    assert not out.exists()


def test_nan_pixels_found_without_the_cache(tmp_path: Path) -> None:
    """Uncached datasets decode float images up front too: NaN is never first met mid-epoch."""
    data = make_folder(tmp_path)
    float_tiffs(data, 3, float("nan"))
    with pytest.raises(DatasetError, match=r"^images/s3\.tif has 1 NaN and 0 infinite pixel"):
        scan_folder(data, cache=False)


def test_binary_mask_note_names_no_python_argument(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_folder(tmp_path)
    for p in (data / "masks").iterdir():
        Image.fromarray((np.array(Image.open(p)) * 255).astype(np.uint8)).save(p)
    scan = scan_folder(data)
    assert scan.binary and scan.num_classes == 2
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "0 and 255" in note and "binary=False" not in note and "indices" in note


# ---------------------------------------------------------------- options and config files
def test_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    base = ["train", "--data", data, *TINY]
    refused(capsys, "train", "--data", data, "--epochs", "0", "--quiet", "--out", out, names=("--epochs", "0"))
    refused(capsys, "train", "--data", data, "--epochs", "-1", "--quiet", "--out", out, names=("--epochs", "-1"))
    refused(capsys, *base, "--encoder", "nosuch", "--out", out, names=("--encoder", "nosuch", "vgg16"))
    refused(capsys, *base, "--time", "abc", "--out", out, names=("--time", "abc", "10m"))
    refused(capsys, *base, "--patch-size", "0", "--out", out, names=("--patch-size",))
    # argparse's own errors: one line too, naming the option, not the whole usage text.
    refused(capsys, *base, "--norm", "group", "--out", out, names=("--norm", "group", "train --help"))
    refused(capsys, *base, "--epochs", "x", "--out", out, names=("--epochs", "'x'"))
    refused(capsys, *base, "--bogus-flag", "--out", out, names=("--bogus-flag", "train --help"))
    assert not out.exists()


def test_bad_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"

    def config(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    abc = config("abc.yaml", 'epochs: "abc"\n')
    refused(capsys, "train", "--data", data, "--quiet", "--config", abc, "--out", out,
            names=("abc.yaml", "epochs", "'abc'"))
    unknown = config("unknown.yaml", "epochs: 1\nbogus_option: 3\n")
    refused(capsys, "train", "--data", data, "--quiet", "--config", unknown, "--out", out,
            names=("unknown.yaml", "bogus_option"))
    broken = config("broken.yaml", "epochs: [1\n  lr: : x\n")
    refused(capsys, "train", "--data", data, "--quiet", "--config", broken, "--out", out,
            names=("broken.yaml", "YAML"))
    listed = config("list.yaml", "- epochs\n- 1\n")
    refused(capsys, "train", "--data", data, "--quiet", "--config", listed, "--out", out, names=("list.yaml",))
    refused(capsys, "train", "--data", data, "--quiet", "--config", tmp_path / "absent.yaml", "--out", out,
            names=("absent.yaml", "--config"))
    assert not out.exists()


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    """``--debug`` is accepted after the subcommand too (not an argparse error): the exception propagates."""
    data = make_folder(tmp_path / "data")
    _no_mask(data)
    with pytest.raises(DatasetError, match="^images/s1.png has no mask"):
        main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run"), "--debug"])


def test_resume_without_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty_run"
    empty.mkdir()
    refused(capsys, "train", "--resume", empty, "--quiet", names=("empty_run", "last.pt", "--resume"))


# ---------------------------------------------------------------- evaluate, predict, export
def test_bad_checkpoints(capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    refused(capsys, "evaluate", tmp_path / "missing.pt", names=("missing.pt",))
    refused(capsys, "evaluate", junk, names=("junk.pt", "unetkit train"))
    refused(capsys, "evaluate", other, names=("other.pt", "unetkit train"))
    refused(capsys, "evaluate", tmp_path, names=(str(tmp_path), "best.pt"))
    images = run_dir.parent / "data" / "images"
    refused(capsys, "predict", junk, images, "--out", tmp_path / "pred", names=("junk.pt",))
    refused(capsys, "predict", run_dir, tmp_path / "missing.png", "--out", tmp_path / "pred",
            names=("missing.png",))
    assert not (tmp_path / "pred").exists()


def test_unwritable_outputs_name_the_target(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            run_dir: Path) -> None:
    """A path under a regular file cannot be written, also by root: the message names the target file."""
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("x")
    refused(capsys, "evaluate", run_dir, "--json", blocker / "out.json", names=("somefile.txt/out.json",))
    refused(capsys, "export", run_dir, "--out", blocker / "model.onnx", names=("somefile.txt/model.onnx",))
    refused(capsys, "export", run_dir, "--out", blocker / "sub" / "model.onnx",
            names=("somefile.txt/sub/model.onnx",))


def test_read_only_folder_names_the_target(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           run_dir: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        refused(capsys, "evaluate", run_dir, "--json", locked / "out.json", names=("locked/out.json",))
        refused(capsys, "export", run_dir, "--out", locked / "model.onnx", names=("locked/model.onnx",))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_bad_calibration_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        run_dir: Path) -> None:
    """``export --int8`` checks its calibration images before the fp32 model is written."""
    out = tmp_path / "export" / "model.onnx"
    refused(capsys, "export", run_dir, "--int8", "--calibration", tmp_path / "nosuch", "--out", out,
            names=("--calibration", "nosuch"))
    (tmp_path / "no_images").mkdir()
    refused(capsys, "export", run_dir, "--int8", "--calibration", tmp_path / "no_images", "--out", out,
            names=("--calibration", "no_images"))
    bad = tmp_path / "bad_images"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    refused(capsys, "export", run_dir, "--int8", "--calibration", bad, "--out", out, names=("bad_images/a.png",))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    """``python -m unetkit``: exit code 2, one stderr line naming the file, no traceback."""
    data = make_folder(tmp_path / "data")
    float_tiffs(data, 0, float("nan"))
    r = subprocess.run([sys.executable, "-m", "unetkit", "train", "--data", str(data), *TINY,
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    lines = stderr_lines(r.stderr)
    assert len(lines) == 1 and "images/s0.tif" in lines[0] and "NaN" in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- help texts
@pytest.mark.parametrize("command", ["train", "plan", "evaluate", "predict", "export", "info", "bench",
                                     "data export"])
def test_help_states_each_default_once(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command.split(), "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = re.split(r"\n(?= {2}\S)", text)  # one block per argument: its name(s) and its help lines
    assert any(block.lstrip().startswith("-h, --help") for block in options)
    for block in options:
        flat = " ".join(block.split())
        assert len(re.findall(r"\(default\b", flat)) <= 1, flat
