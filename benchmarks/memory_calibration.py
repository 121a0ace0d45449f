"""Calibrate :func:`unetkit.train.memory.estimate_step_bytes` against measured peak memory.

Each configuration runs in a fresh child process: ``ru_maxrss`` is read after the data are made and again
after two forward-backward-AdamW steps of a plain :class:`unetkit.UNet` with CE + Dice on the CPU; the
difference is the step's memory. Prints measured vs estimated bytes and their ratio.

    python benchmarks/memory_calibration.py
"""

from __future__ import annotations

import json
import subprocess
import sys

#: (patch, batch, depth, base width, classes): 2D runs around the planned CPU sizes, and some far from them.
CONFIGS = [
    (64, 32, 3, 16, 2), (128, 8, 4, 16, 2), (128, 16, 5, 16, 4), (256, 4, 5, 16, 2),
    (96, 8, 4, 32, 8), (256, 2, 3, 8, 2), (64, 8, 5, 32, 2), (192, 8, 4, 16, 3),
]

CHILD = r"""
import json, resource, sys, torch
from unetkit import UNet, UNetConfig
from unetkit.losses.build import build_loss
torch.set_num_threads(1)
patch, batch, depth, base, classes = json.loads(sys.argv[1])
x = torch.randn(batch, 1, patch, patch)
y = torch.randint(0, classes, (batch, patch, patch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = UNet(UNetConfig(num_classes=classes, in_channels=1, base_channels=base, depth=depth))
opt = torch.optim.AdamW(model.parameters(), 1e-3)
loss_fn = build_loss("ce+dice", classes)
for _ in range(2):
    opt.zero_grad(set_to_none=True)
    out = model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    loss_fn(out, y).backward()
    opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def main() -> None:
    from unetkit.train.memory import estimate_step_bytes

    for cfg in CONFIGS:
        patch, batch, depth, base, classes = cfg
        r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                           check=True)
        measured = int(r.stdout.split()[-1])
        est = estimate_step_bytes((patch, patch), batch, 1, classes, depth, base)
        print(f"patch {patch:4d} batch {batch:3d} depth {depth} width {base:3d} classes {classes}: "
              f"measured {measured / 1e6:8.1f} MB, estimate {est / 1e6:8.1f} MB, estimate/measured "
              f"{est / measured:.2f}")


if __name__ == "__main__":
    main()
