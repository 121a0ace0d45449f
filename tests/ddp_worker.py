"""Run by ``torchrun`` in tests/test_distributed.py: train a tiny model with DDP (gloo, CPU), and in
tests/test_cuda.py with ``DDP_DEVICE=cuda`` (NCCL).

Usage: ``torchrun --nproc-per-node 2 tests/ddp_worker.py OUT_DIR EPOCHS``; ``FAIL_RANK=R`` makes
rank R raise in its second epoch; ``FAIL_ONCE_RANK=R`` makes rank R die in its second epoch on torchrun's
first attempt only (for ``--max-restarts``). Each rank saves its parameters (not BatchNorm buffers: DDP
broadcasts rank 0's at each forward) at the end of training (before the final evaluation reloads best.pt)
as ``rank{R}.pt``, and prints the process group's backend and, after ``cleanup_distributed``, how many DDP
models are still alive (the finished trainer's reference cycles hold one until collected).
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch

from unetkit.train import TrainConfig, Trainer
from unetkit.train.distributed import cleanup_distributed

TINY = dict(data="shapes", base_channels=4, depth=3, batch_size=2, samples=1, boundary_f1=False, val_every=1,
            data_options={"size": 32, "num_samples": 12, "val_samples": 5})


class CapturingTrainer(Trainer):
    def train_epoch(self, epoch: int) -> tuple[float, bool]:
        if os.environ.get("FAIL_RANK") == os.environ["RANK"] and epoch == 1:
            raise RuntimeError(f"simulated failure on rank {os.environ['RANK']}")
        if os.environ.get("FAIL_ONCE_RANK") == os.environ["RANK"] and epoch == 1 and \
                os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            os._exit(9)  # the process dies (as if killed) in its second epoch, on the first attempt only
        return super().train_epoch(epoch)

    def finish(self):  # noqa: ANN201 - same as Trainer.finish
        model = self.model.module if hasattr(self.model, "module") else self.model
        params = {k: v.detach() for k, v in model.named_parameters()}
        torch.save(params, self.run_dir / f"rank{os.environ['RANK']}.pt")
        print(f"rank {os.environ['RANK']} backend {torch.distributed.get_backend()} device {self.dist.device}")
        return super().finish()


def main() -> None:
    out, epochs = Path(sys.argv[1]), int(sys.argv[2])
    cfg = TrainConfig.from_dict({**TINY, "out": str(out), "epochs": epochs,
                                 "device": os.environ.get("DDP_DEVICE", "cpu")})
    CapturingTrainer(cfg, progress=False, log=print).run()
    cleanup_distributed()
    alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    print(f"rank {os.environ['RANK']}: {alive} DDP models alive after cleanup")


if __name__ == "__main__":
    main()
