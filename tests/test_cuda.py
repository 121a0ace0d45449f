"""The CUDA paths, skipped without a GPU: training under AMP (bf16, fp16 through a GradScaler) in channels_last,
DDP with NCCL under torchrun, evaluation on the GPU against the CPU, and the GPU variants of the benchmarks.
CI has no GPU; these run where one is at hand (see docs/performance.md for the card they last ran on)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetkit.bench import run_bench
from unetkit.checkpoint import checkpoint_datasets, load_model, read_checkpoint
from unetkit.evaluate import evaluate
from unetkit.inference import Predictor
from unetkit.models import UNetConfig
from unetkit.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = dict(data="shapes", base_channels=8, depth=3, batch_size=4, samples=1, boundary_f1=False, val_every=1,
            data_options={"size": 48, "num_samples": 24, "val_samples": 6}, device="cuda", num_workers=0)


def cpu_miou(run: Path) -> float:
    model, info, ckpt = load_model(run / "best.pt", "cpu")
    _, val = checkpoint_datasets(ckpt)
    return evaluate(Predictor(model, info, device="cpu", amp=None, batch_size=8), val).miou


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_cuda_under_amp(tmp_path, amp):
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({**TINY, "out": str(out), "epochs": 6, "amp": amp, "channels_last": True})
    trainer = Trainer(cfg, progress=False, log=print)
    assert trainer.amp_dtype == {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    trainer.run()
    ckpt = read_checkpoint(out / "last.pt")
    history = ckpt["history"]
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    best = read_checkpoint(out / "best.pt")
    # The GPU validation (under the same autocast) agrees with an fp32 evaluation on the CPU.
    assert cpu_miou(out) == pytest.approx(best["best_miou"], abs=0.02)


def test_ddp_with_nccl_under_torchrun(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "DDP_DEVICE": "cuda", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(WORKER),
           str(out), "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "rank 0 backend nccl device cuda" in r.stdout
    assert read_checkpoint(out / "last.pt")["epoch"] == 2
    params = torch.load(out / "rank0.pt", weights_only=True)
    model, _, _ = load_model(out / "last.pt", "cpu")
    assert all(torch.equal(params[k].cpu(), v) for k, v in model.named_parameters() if k in params)


def test_bench_gpu_precisions_and_layouts():
    rep = run_bench(UNetConfig(encoder="plain", base_channels=8), size=64, batch=2, infer_batch=2, iters=2,
                    channels_last="both", amp=("off", "bf16", "fp16"), device="cuda", phases=("train", "inferN"))
    got = sorted((r["phase"], r["layout"], r["amp"]) for r in rep["rows"])
    assert got == sorted((p, lay, a) for p in ("train", "inferN") for lay in ("nchw", "channels_last")
                         for a in ("fp32", "bf16", "fp16"))
    assert all(r["median_s"] > 0 and r["peak_mem_mb"] > 0 for r in rep["rows"])
    assert "gpu" in rep["machine"]


def test_predict_paths_on_cuda(tmp_path):
    from unetkit.bench.predict_suite import available_paths, bench_predict

    out = tmp_path / "run"
    Trainer(TrainConfig.from_dict({**TINY, "out": str(out), "epochs": 3}), progress=False, log=print).run()
    assert available_paths(torch.device("cuda"))[:4] == ["eager", "fp32", "bf16", "fp16"]
    rep = bench_predict(out, paths=["fp32", "bf16", "fp16"], rounds=2, device="cuda", max_images=6)
    rows = {r["path"]: r for r in rep["rows"]}
    assert rep["default_path"] == "bf16" and rows["bf16"]["default"]
    assert rows["fp32"]["identical_pixels"] > 0.999
    assert rows["bf16"]["identical_pixels"] > 0.99 and rows["fp16"]["identical_pixels"] > 0.99
