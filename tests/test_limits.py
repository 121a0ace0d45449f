"""Bounded by design: inputs that used to grow without bound (or produce garbage) are refused fast.

The command-line cases run in one child process under an address-space cap (``RLIMIT_AS``), which calls
:func:`unetkit.cli.main.main` once per case and reports its exit code, stderr, time and growth of peak
memory: a regression that allocates gigabytes fails in that case at once instead of swapping the machine.
One case also goes through a plain ``python -m unetkit`` subprocess. The data are six 48x40 PNGs.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit import UNet, UNetConfig
from unetkit.atomic import RunFolderError, claim_run_folder, run_outputs
from unetkit.checkpoint import CheckpointError, DataInfo, load_model, save_checkpoint
from unetkit.data import DatasetError
from unetkit.data.classes import MAX_CLASS_NAME, read_class_file
from unetkit.train import TrainConfig
from unetkit.train.memory import (
    available_bytes,
    check_run_size,
    estimate_step_bytes,
    largest_depth,
    plain_unet_parameters,
)
from unetkit.yamlfile import MAX_YAML_BYTES, read_yaml

#: Address-space cap of the CLI child: importing torch maps about 3.5 GB of (mostly unused) address space.
AS_LIMIT = 6 << 30
#: Peak-memory growth a refused case may cause (the process itself, torch imported, is not counted).
MAX_GROWTH = 300 << 20
#: A refused case returns within this (seconds), once the child has imported unetkit. Measured: at most 0.2 s
#: each on 2 idle cores; up to 3 s (the --overwrite case, which builds the model first) on heavily shared ones.
MAX_SECONDS = 5.0
#: Nested aliases: 9**9 (387 million) strings once expanded.
BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)])

RUNNER = r"""
import contextlib, io, json, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from unetkit.cli.main import build_parser, main
import unetkit.checkpoint, unetkit.data, unetkit.export, unetkit.train.trainer  # imported once, not timed
build_parser()
results = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException as e:  # a case that escapes main() is a failure, reported not raised
            code, _ = -1, print(type(e).__name__, e, file=sys.stderr)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    results.append({"code": code, "err": err.getvalue(), "seconds": time.perf_counter() - t, "growth": growth})
print(json.dumps(results))
"""


def make_folder(root: Path, n: int = 6, size: tuple[int, int] = (40, 48)) -> Path:
    """``n`` grey 8-bit images of ``size`` (HxW) with 0/1 masks in ``root/images`` and ``root/masks``."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        mask = np.zeros(size, np.uint8)
        mask[5:20, 5:30] = 1
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def tiny_checkpoint(path: Path, **edit: object) -> Path:
    """A real checkpoint of an untrained 2-class, 1-channel UNet (width 4, depth 2); ``edit`` overrides
    fields of both its ``model_config`` and ``data`` (as a damaged or hand-edited file would)."""
    model = UNet(UNetConfig(num_classes=2, in_channels=1, base_channels=4, depth=2))
    info = DataInfo(2, 1, ["background", "foreground"], [(0, 0, 0), (230, 40, 40)], (0.5,), (0.25,),
                    patch_size=(32, 32))
    mc, data = model.config.to_dict(), info.to_dict()
    for k, v in edit.items():
        for d in (mc, data):
            if k in d:
                d[k] = v
    save_checkpoint({"model": model.state_dict(), "model_config": mc, "data": data}, path)
    return path


# ---------------------------------------------------------------- the command-line cases
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    make_folder(root / "six")
    bomb = make_folder(root / "bomb")
    (bomb / "classes.yaml").write_text(BOMB + "\nnames: *i\n")
    (root / "bomb.yaml").write_text(BOMB + "\nepochs: 1\n")
    (root / "seed.yaml").write_text("seed: 1.0e+23\n")
    long_txt = make_folder(root / "long_txt")
    (long_txt / "classes.txt").write_text("background\n" + "x" * (2 << 20) + "\n")
    long_yaml = make_folder(root / "long_yaml")
    (long_yaml / "classes.yaml").write_text(f"names: [background, {'y' * 1000}]\n")
    tiny_checkpoint(root / "million.pt", num_classes=10**6)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "image.png")
    (root / "taken" / "best.pt").mkdir(parents=True)  # a user's folder where a run writes its best.pt
    (root / "taken" / "best.pt" / "mine.txt").write_text("mine")
    tiny_checkpoint(root / "ok.pt")
    return root


TRAIN = ["train", "--data", "six", "--epochs", "1", "--quiet", "--out", "run"]
#: name -> (argv, strings the one stderr line must contain).
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "classes.yaml alias bomb": (["plan", "bomb"], ("classes.yaml", "alias", "*a")),
    "--config alias bomb": (["plan", "six", "--config", "bomb.yaml"], ("bomb.yaml", "alias")),
    "checkpoint claims a million classes": (["predict", "million.pt", "image.png", "--out", "pred"],
                                            ("million.pt", "1000000", "1..1024")),
    "--patch-size 30000": ([*TRAIN, "--patch-size", "30000"], ("--patch-size 30000x30000", "40x48", "80 96")),
    "--batch-size 100000": ([*TRAIN, "--batch-size", "100000"], ("--batch-size 100000", "available",
                                                                 "--batch-size ")),
    "--depth 50": ([*TRAIN, "--depth", "50"], ("--depth 50", "less than 1 pixel", "--depth 6")),
    "plan --depth 50": (["plan", "six", "--depth", "50"], ("--depth 50", "--depth 6")),
    "--base-channels 100000": ([*TRAIN, "--base-channels", "100000"], ("--base-channels 100000", "TB")),
    "2 MB class name (classes.txt)": (["plan", "long_txt"], ("classes.txt", "2097152 characters",
                                                             f"limit of {MAX_CLASS_NAME}")),
    "1000-character class name (classes.yaml)": (["plan", "long_yaml"], ("classes.yaml", "1000 characters")),
    "--overwrite onto a user's folder": ([*TRAIN[:-1], "taken", "--overwrite", "--samples", "0"],
                                         ("best.pt", "a folder unetkit did not write", "move it away")),
    "--class-weights -1 2": ([*TRAIN, "--class-weights", "-1", "2"], ("--class-weights", "-1.0", ">= 0")),
    "--lr nan": ([*TRAIN, "--lr", "nan"], ("--lr", "nan", "finite")),
    "--lr inf": ([*TRAIN, "--lr", "inf"], ("--lr", "inf", "finite")),
    "--rotate nan": ([*TRAIN, "--rotate", "nan"], ("--rotate", "nan", "finite")),
    "--rotate 500": ([*TRAIN, "--rotate", "500"], ("--rotate", "500", "[0, 180]")),
    "--weight-decay=-inf": ([*TRAIN, "--weight-decay=-inf"], ("--weight-decay", "-inf", "finite")),
    "--color-jitter nan": ([*TRAIN, "--color-jitter", "nan"], ("--color-jitter", "nan")),
    "--hflip nan": ([*TRAIN, "--hflip", "nan"], ("--hflip", "nan", "finite")),
    "--affine-p 2": ([*TRAIN, "--affine-p", "2"], ("--affine-p", "2", "probability")),
    "--scale nan 1": ([*TRAIN, "--scale", "nan", "1"], ("--scale", "nan")),
    "--grad-clip -1": ([*TRAIN, "--grad-clip", "-1"], ("--grad-clip", "-1", ">= 0")),
    "--grad-clip nan": ([*TRAIN, "--grad-clip", "nan"], ("--grad-clip", "nan", "finite")),
    "--num-workers -2": ([*TRAIN, "--num-workers", "-2"], ("--num-workers", "-2", ">= 0")),
    "--seed 1e23": ([*TRAIN, "--seed", "1e23"], ("--seed", "1e23")),
    "seed 1e23 in --config": ([*TRAIN, "--config", "seed.yaml"], ("seed.yaml", "seed", "4294967295")),
    "--seed -1": ([*TRAIN, "--seed", "-1"], ("--seed", "-1", "4294967295")),
    "export --opset 5": (["export", "ok.pt", "--opset", "5"], ("--opset 5", "16..")),
    "export --opset 99 --legacy-exporter": (["export", "ok.pt", "--opset", "99", "--legacy-exporter"],
                                            ("--opset 99", "9..", "--legacy-exporter")),
}


@pytest.fixture(scope="module")
def results(world: Path) -> dict[str, dict[str, object]]:
    """Every case of ``CASES`` run once in the capped child (in ``world``, so relative paths resolve)."""
    argvs = [argv for argv, _ in CASES.values()]
    r = subprocess.run([sys.executable, "-c", RUNNER, str(AS_LIMIT)], input=json.dumps(argvs), capture_output=True,
                       text=True, timeout=600, cwd=world)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(zip(CASES, json.loads(r.stdout.splitlines()[-1])))


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_fast_and_small(case: str, results: dict[str, dict[str, object]], world: Path) -> None:
    argv, names = CASES[case]
    res = results[case]
    lines = [ln for ln in str(res["err"]).splitlines() if ln.strip()]
    assert res["code"] == 2, (res["code"], lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"unetkit {argv[0]}: error: "), lines[0]
    assert "Traceback" not in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert float(res["seconds"]) < MAX_SECONDS, res["seconds"]  # type: ignore[arg-type]
    assert int(res["growth"]) < MAX_GROWTH, res["growth"]  # type: ignore[call-overload]
    assert not (world / "run").exists() and not (world / "pred").exists()  # nothing written
    assert not list(world.glob("*.onnx"))


def test_user_folder_at_a_run_path_survives(results: dict[str, dict[str, object]], world: Path) -> None:
    assert (world / "taken" / "best.pt" / "mine.txt").read_text() == "mine"


def test_a_real_process_is_refused_under_a_memory_cap(world: Path) -> None:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    r = subprocess.run([sys.executable, "-m", "unetkit", *TRAIN, "--batch-size", "100000"], capture_output=True,
                       text=True, timeout=300, cwd=world, preexec_fn=cap)  # a hang guard: importing torch is slow
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("unetkit train: error: --batch-size 100000: a training step needs about ")
    assert "Traceback" not in r.stdout + r.stderr
    assert not (world / "run").exists()


# ---------------------------------------------------------------- YAML
def test_read_yaml_refuses_aliases_and_big_files_and_keeps_safe_load(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "\n")
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb.yaml: line 2 uses the YAML alias \*a"):
        read_yaml(bomb)
    assert time.perf_counter() - t < 1
    merge = tmp_path / "merge.yaml"
    merge.write_text("base: &b {lr: 0.1}\nrun:\n  <<: *b\n")
    with pytest.raises(ValueError, match="alias"):
        read_yaml(merge)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(ValueError, match="over unetkit's 1 MB limit"):
        read_yaml(big)
    ok = tmp_path / "ok.yaml"
    ok.write_text("lr: 0.01\nnames: [a, b]\nanchor_free: !!python/name:os.system ''\n")
    with pytest.raises(ValueError, match="not valid YAML"):  # safe_load semantics: no Python tags
        read_yaml(ok)
    ok.write_text("lr: 0.01\nnames: [a, b]\nwhen: 2024-01-02\n")
    assert read_yaml(ok) == {"lr": 0.01, "names": ["a", "b"], "when": __import__("datetime").date(2024, 1, 2)}
    with pytest.raises(DatasetError, match="classes.yaml: line 2"):
        (tmp_path / "classes.yaml").write_text(BOMB + "\nnames: *i\n")
        read_class_file(tmp_path)
    with pytest.raises(ValueError, match="bomb.yaml: line 2"):
        TrainConfig.from_yaml(bomb)


# ---------------------------------------------------------------- class names
def test_class_names_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("bg\n" + "n" * (MAX_CLASS_NAME + 1) + "\n")
    with pytest.raises(DatasetError, match=f"class 1's name is {MAX_CLASS_NAME + 1} characters"):
        read_class_file(tmp_path)
    (tmp_path / "classes.txt").write_text("bg\n" + "n" * MAX_CLASS_NAME + "\n")
    assert read_class_file(tmp_path)[0] == ["bg", "n" * MAX_CLASS_NAME]


def test_a_dollar_class_name_is_drawn_as_plain_text() -> None:
    from unetkit.train.report import confusion_figure, confusion_png
    from unetkit.viz import legend_strip, overlay_view

    names = ["background", "$x_{$", "cost $5 and $6"]
    fig = confusion_figure([[5, 1, 0], [2, 3, 0], [0, 0, 4]], names)
    fig.canvas.draw()  # an unclosed '$' read as mathtext raised here
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert all(not t.get_parse_math() for t in ax.get_xticklabels() + ax.get_yticklabels())
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert confusion_png([[5, 1, 0], [2, 3, 0], [0, 0, 4]], names)[:8] == b"\x89PNG\r\n\x1a\n"
    colors = [(0, 0, 0), (230, 40, 40), (40, 180, 70)]
    assert legend_strip(names, colors, 300).shape[1] == 300
    view = overlay_view(np.zeros((1, 16, 16)), np.zeros((16, 16), np.int64), colors, names, min_size=64)
    assert view.shape[1] >= 64 and view.dtype == np.uint8


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(("edit", "says"), [
    ({"num_classes": 10**6}, "num_classes is 1000000, outside 1..1024"),
    ({"num_classes": 3}, "num_classes 3 but its head has 2 outputs"),
    ({"in_channels": 3}, "in_channels 3 but its first conv takes 1"),
    ({"base_channels": 10**6}, "base_channels is 1000000, outside 1..1024"),
    ({"base_channels": 8}, "base_channels 8 but its first conv has 4 outputs"),
    ({"depth": 40}, "depth is 40, outside 1..12"),
    ({"depth": 3}, "depth 3 but its encoder has 2 stages"),
    ({"patch_size": [10**6, 10**6]}, "patch_size [1000000, 1000000]"),
    ({"class_names": ["a", "b" * 10**6]}, "a class name is not text"),
])
def test_checkpoint_bounds(tmp_path: Path, edit: dict[str, object], says: str) -> None:
    path = tiny_checkpoint(tmp_path / "edited.pt", **edit)
    t = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert time.perf_counter() - t < 1
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and says in msg and "train again" in msg and "\n" not in msg


def test_a_sound_checkpoint_still_loads(tmp_path: Path) -> None:
    model, info, _ = load_model(tiny_checkpoint(tmp_path / "ok.pt"))
    assert info.num_classes == 2 and model.head.out_channels == 2
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


# ---------------------------------------------------------------- run-size estimate
def test_parameter_count_matches_the_model() -> None:
    for depth, base, classes in ((2, 4, 2), (4, 16, 3), (5, 8, 5)):
        model = UNet(UNetConfig(num_classes=classes, in_channels=1, base_channels=base, depth=depth, norm="none"))
        convs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))
        assert plain_unet_parameters(1, classes, depth, base) == convs  # weights; biases are negligible


def test_estimate_grows_with_each_size_and_works_in_3d() -> None:
    base = estimate_step_bytes((128, 128), 8, 1, 2, 4, 16)
    assert 2.5e8 < base < 3.5e8  # measured 284 MB (benchmarks/memory_calibration.py)
    assert estimate_step_bytes((256, 256), 8, 1, 2, 4, 16) > 3.5 * (base - 1e8)
    assert estimate_step_bytes((128, 128), 16, 1, 2, 4, 16) > 1.8 * (base - 1e8)
    assert estimate_step_bytes((128, 128), 8, 1, 2, 4, 32) > 1.8 * (base - 1e8)
    assert estimate_step_bytes((128, 128), 8, 1, 2, 5, 16) > base
    def per_sample(patch: tuple[int, ...]) -> float:
        return estimate_step_bytes(patch, 2, 1, 2, 4, 16) - estimate_step_bytes(patch, 1, 1, 2, 4, 16)

    assert 30 < per_sample((64, 64, 64)) / per_sample((64, 64)) < 64  # 64x the pixels; deeper stages shrink faster
    assert math.isfinite(estimate_step_bytes((48, 48), 2, 1, 2, 50, 16))  # absurd, but computable
    with pytest.raises(ValueError, match="2 or 3 sides"):
        estimate_step_bytes((64,), 2, 1, 2, 4, 16)


def test_largest_depth() -> None:
    assert [largest_depth(s) for s in (1, 2, 3, 40, 48, 64)] == [1, 2, 2, 6, 6, 7]


def test_check_run_size_names_the_option_value_estimate_limit_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"in_channels": 1, "num_classes": 2, "depth": 4, "base_channels": 16}
    need = check_run_size((48, 48), 4, **kw, largest_image=(40, 48), limit_bytes=10**12)  # type: ignore[arg-type]
    assert need == estimate_step_bytes((48, 48), 4, 1, 2, 4, 16)
    with pytest.raises(ValueError) as e:
        check_run_size((48, 48), 10**5, **kw, given=("batch_size",), limit_bytes=2 * 10**9)  # type: ignore[arg-type]
    msg = str(e.value)
    assert msg.startswith("--batch-size 100000: a training step needs about ") and "but 2.0 GB is available" in msg
    best = int(msg.split("use --batch-size ")[1].split()[0])
    assert estimate_step_bytes((48, 48), best, 1, 2, 4, 16) <= 2e9 < estimate_step_bytes((48, 48), best + 1, 1, 2, 4, 16)
    with pytest.raises(ValueError, match=r"^--depth 50: halving a 48x48 patch 49 times .* use --depth 6 or less$"):
        check_run_size((48, 48), 2, **{**kw, "depth": 50}, given=("depth", "patch_size"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^--depth 50: halving the largest image \(40x48\)"):
        check_run_size((2**49, 2**49), 2, **{**kw, "depth": 50}, largest_image=(40, 48), given=("depth",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^--patch-size 30000x30000: larger than 2x the largest image \(40x48\)"):
        check_run_size((30000, 30000), 2, **kw, largest_image=(40, 48), given=("patch_size",))  # type: ignore[arg-type]
    # a patch up to twice the image, or the image rounded up to the stride, is fine (padding is cheap there)
    check_run_size((80, 96), 2, **kw, largest_image=(40, 48), limit_bytes=10**12)  # type: ignore[arg-type]
    check_run_size((32, 32), 2, **{**kw, "depth": 6}, largest_image=(12, 12), limit_bytes=10**12)  # type: ignore[arg-type]
    # stages that pool some axes only (anisotropic 3D) check their own strides: no depth rule here
    assert check_run_size((8, 160, 160), 2, **{**kw, "depth": 6}, given=("patch_size", "depth"), check_depth=False,  # type: ignore[arg-type]
                          limit_bytes=10**12) > 0
    # a pretrained encoder: no depth rule, estimated as depth 5 width 64
    with pytest.raises(ValueError, match=r"^--patch-size 512x512, --batch-size 64: .* depth 5, width 64\)"):
        check_run_size((512, 512), 64, in_channels=3, num_classes=2, limit_bytes=10**9)
    # unknown memory: only the structural rules apply
    monkeypatch.setattr("unetkit.train.memory.available_bytes", lambda device=None: None)
    assert check_run_size((48, 48), 10**5, **kw) > 1e11  # type: ignore[arg-type]


def test_available_bytes_reads_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import unetkit.train.memory as memory

    free = available_bytes()
    assert free is None or free > 0
    files = {"/sys/fs/cgroup/memory.max": 1 << 30, "/sys/fs/cgroup/memory.current": 256 << 20}
    monkeypatch.setattr(memory, "_read_int", files.get)
    got = memory.available_bytes()
    assert got is not None and got <= (1 << 30) - (256 << 20)
    monkeypatch.setattr(memory, "_read_int", lambda path: None)
    monkeypatch.setattr(memory, "Path", lambda p: Path("/nonexistent/meminfo"))
    monkeypatch.delattr(memory.os, "sysconf")
    assert memory.available_bytes() is None  # nothing readable: unknown, and the memory check is skipped


# ---------------------------------------------------------------- --overwrite
def test_overwrite_removes_only_what_unetkit_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    for name in ("best.pt", "last.pt", "metrics.csv", "report.html"):
        (run / name).write_text("old")
    (run / "samples" / "epoch_007.png").write_text("old")
    (run / "samples" / "my_notes.txt").write_text("mine")
    (run / "samples" / "epoch_7_mine.png").write_text("mine")
    (run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_text("old")
    (run / "tensorboard" / "README").write_text("mine")
    (run / "notes.txt").write_text("mine")
    assert sorted(p.relative_to(run).as_posix() for p in run_outputs(run)) == [
        "best.pt", "last.pt", "metrics.csv", "report.html", "samples/epoch_007.png",
        "tensorboard/events.out.tfevents.1.host.1.0"]
    with pytest.raises(RunFolderError, match="holds an earlier run"):
        claim_run_folder(run)
    claim_run_folder(run, overwrite=True).release()
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and p.name != ".unetkit.lock")
    assert left == ["notes.txt", "samples/epoch_7_mine.png", "samples/my_notes.txt", "tensorboard/README"]


def test_overwrite_refuses_a_user_path_where_a_run_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").write_text("my file called samples")
    (run / "best.pt").write_text("old")
    with pytest.raises(RunFolderError, match=r"run/samples: a file unetkit did not write sits where a run writes "
                                             r"its folder samples; move it away or choose another --out$"):
        claim_run_folder(run, overwrite=True)
    assert (run / "samples").read_text() == "my file called samples" and (run / "best.pt").exists()
    (run / "samples").unlink()
    claim_run_folder(run, overwrite=True).release()  # the refusal released the lock
    assert not (run / "best.pt").exists()
