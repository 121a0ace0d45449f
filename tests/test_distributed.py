"""DDP on the CPU (gloo, 2 processes under torchrun): rank agreement, exact metrics, failures, resume."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unetkit.checkpoint import checkpoint_datasets, load_model, read_checkpoint
from unetkit.evaluate import ShardSampler, evaluate
from unetkit.inference import Predictor

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(out: Path, epochs: int, *extra: str, ok: bool = True, restarts: int = 0,
             **env_extra: str) -> subprocess.CompletedProcess:
    """tests/ddp_worker.py in 2 processes under torchrun (``restarts``: its ``--max-restarts``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(restarts), str(WORKER), str(out), str(epochs), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                       timeout=600)
    assert (r.returncode == 0) == ok, failure_text(r)
    return r


#: stderr lines that name why a rank died (C++ aborts, Python errors), wherever they are in a long output.
CAUSE = re.compile(r"terminate called|what\(\)|Fatal Python|Error|\[rank\d\]:\s+\w+\.\w+")


def failure_text(r: subprocess.CompletedProcess) -> str:
    """A failed torchrun's output tails, preceded by every line that names why a rank died: the first
    failure is often far above the tail, which shows the other ranks being stopped."""
    causes = [ln for ln in r.stderr.splitlines() if CAUSE.search(ln)][:40]
    return "\n".join(["causes:", *causes, "stdout:", r.stdout[-2000:], "stderr:", r.stderr[-3000:]])


def rank_params(run: Path, rank: int) -> dict[str, torch.Tensor]:
    """The parameters rank ``rank`` saved at the end of training (tests/ddp_worker.py)."""
    return torch.load(run / f"rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, torchrun(out, 2)


def test_parameters_identical_across_ranks(ddp_run):
    out, _ = ddp_run
    a, b = rank_params(out, 0), rank_params(out, 1)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ...and training changed them (the two ranks did not merely agree on the initial weights).
    first = read_checkpoint(out / "last.pt")["history"][0]
    assert first["train_loss"] > 0


def test_cleanup_frees_the_ddp_model_before_exit(ddp_run):
    """The DDP model (its reducer holds gloo's process group and threads) is freed by ``cleanup_distributed``,
    not left to interpreter teardown, where freeing it aborted a finished rank."""
    _, proc = ddp_run
    assert sorted(re.findall(r"rank (\d): (\d+) DDP models alive after cleanup", proc.stdout)) == [("0", "0"),
                                                                                                ("1", "0")]


def test_only_rank0_writes_and_reports_global_batch(ddp_run):
    out, proc = ddp_run
    assert proc.stdout.count("global batch 4 (= 2/process x 2 x 1 accumulation)") == 1
    with open(out / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert (out / "report.html").is_file()


def test_ddp_validation_equals_single_process_evaluation(ddp_run):
    out, _ = ddp_run
    model, info, ckpt = load_model(out / "last.pt")
    _, val = checkpoint_datasets(ckpt)
    assert len(val) == 5  # odd: a padding sampler would count one image twice on 2 ranks
    single = evaluate(Predictor(model, info, device="cpu", amp=None, batch_size=8), val)
    ddp_miou = ckpt["history"][-1]["val_miou"]
    assert single.miou == pytest.approx(ddp_miou, abs=1e-6)


def test_shard_sampler_counts_each_sample_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))


def test_a_failing_rank_stops_the_job(tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    r = torchrun(out, 2, ok=False, FAIL_RANK="1")
    assert time.monotonic() - start < 240  # rank 0, waiting in a collective, was stopped: no hang
    assert "simulated failure on rank 1" in r.stdout + r.stderr
    assert read_checkpoint(out / "last.pt")["epoch"] == 1  # the last good epoch is kept


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_like_one(ddp_run, tmp_path):
    """Two torchrun launchers (one process each) meeting at a c10d rendezvous on 127.0.0.1 train exactly as
    one launcher with two processes."""
    out = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", str(WORKER), str(out), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    for p in nodes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    one_node, _ = ddp_run
    for rank in (0, 1):
        a, b = rank_params(one_node, rank), rank_params(out, rank)
        assert all(torch.equal(a[k], b[k]) for k in a), rank
    def metrics(run: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_checkpoint(run / "last.pt")["history"]]

    assert metrics(out) == metrics(one_node)


def test_a_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    """torchrun --max-restarts 1: a worker dies in epoch 2, the job restarts, every rank resumes from last.pt
    (DDP resume) and the ranks finish with identical parameters."""
    out = tmp_path / "run"
    r = torchrun(out, 3, restarts=1, FAIL_ONCE_RANK="1")
    assert "restarted by torchrun (restart 1): resuming from" in r.stdout
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 3 and [h["epoch"] for h in ckpt["history"]] == [1, 2, 3]
    assert (out / "report.html").is_file() and (out / "best.pt").is_file()
    a, b = rank_params(out, 0), rank_params(out, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_under_torchrun_stops_every_rank_and_exits_143(tmp_path):
    """``unetkit train --devices 2`` launches torchrun (rank 0 alone reports the global batch) and forwards
    SIGTERM to it: every rank writes what it must, says how to resume, and stops; the launcher exits 143 and
    leaves no process behind."""
    import signal

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "unetkit", "train", "--devices", "2", "--data", "shapes",
                             "--epochs", "5000", "--base-channels", "4", "--depth", "2", "--samples", "0",
                             "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", errors="replace")
    deadline = time.monotonic() + 180
    while not (out / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "last.pt").is_file(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    why = failure_text(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert proc.returncode == 143, why
    assert stderr.count("unetkit: terminated (SIGTERM)") == 2, why  # both ranks
    assert f"continue with: unetkit train --resume {out}" in stdout
    assert stdout.count("2 processes") == 1  # rank 0 alone reports, and the batch spans both processes:
    total, per_process = map(int, re.search(r"global batch (\d+) \(= (\d+)/process x 2 x 1 ", stdout).groups())
    assert total == 2 * per_process
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1
