"""Is the data pipeline ever the bottleneck? Loader images/s against training-step images/s, same run.

Measures, for the ``ct-chest`` demo: the DataLoader alone (default augmentation, and with every
geometric augmentation on) and the demo model's training step on pre-loaded batches. Usage::

    python benchmarks/bench_loader.py [--workers 0] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unetkit import UNet
from unetkit.data import AugmentConfig, get_datasets, make_loader
from unetkit.losses import build_loss
from unetkit.train import TrainConfig


def loader_rate(augment: AugmentConfig, workers: int, batches: int, batch_size: int) -> float:
    train, _ = get_datasets("ct-chest", augment=augment)
    loader = make_loader(train, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    n, t0 = 0, time.perf_counter()
    while n < batches * batch_size:
        for images, _ in loader:
            n += images.shape[0]
            if n >= batches * batch_size:
                break
    return n / (time.perf_counter() - t0)


def step_rate(batch_size: int, steps: int) -> float:
    cfg = TrainConfig()
    train, _ = get_datasets("ct-chest")
    model = UNet(**cfg.model_kwargs(train.num_classes, train.in_channels))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loss_fn = build_loss(cfg.loss, train.num_classes)
    x = torch.stack([train[i][0] for i in range(batch_size)])
    y = torch.stack([train[i][1] for i in range(batch_size)])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    cfg = TrainConfig()
    default = AugmentConfig(hflip=cfg.hflip, rotate=cfg.rotate, scale=cfg.scale, color_jitter=cfg.color_jitter)
    heavy = AugmentConfig(hflip=0.5, vflip=0.5, rotate=15, scale=(0.8, 1.2), elastic=0.5, color_jitter=0.2)
    result = {
        "loader_default_img_s": loader_rate(default, args.workers, args.batches, args.batch_size),
        "loader_all_geometric_img_s": loader_rate(heavy, args.workers, args.batches, args.batch_size),
        "train_step_img_s": step_rate(args.batch_size, 12),
        "workers": args.workers, "threads": torch.get_num_threads(),
    }
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
