"""Run sizes checked against memory before anything is allocated.

A ``--patch-size``, ``--batch-size``, ``--depth`` or ``--base-channels`` far beyond what the machine holds
used to grow until the OOM killer ended the process (tens of GB on a folder of tiny images). This module
estimates a training step's memory from the run's sizes alone (integers: nothing is built), reads the
memory the process may use, and refuses a run that cannot fit, naming the option, the value, the
estimate, the limit and a value that fits.

Rules besides memory (decided here; docs/training.md says the same):

* **depth**: a plain UNet halves the patch ``depth - 1`` times; a depth whose bottleneck would be smaller
  than 1 pixel on an axis of the patch (or, when the patch is planned, of the largest image) is refused
  with the largest depth that fits.
* **patch larger than the images**: the part of a patch beyond an image is padding, so a patch side more
  than :data:`MAX_PATCH_OVER_IMAGE` times the largest image's side (and larger than that side rounded up
  to the network's stride) only costs memory and time; it is refused with the largest useful size.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

#: A patch side may exceed the largest image's side by this factor (the rest is padding) before it is refused.
MAX_PATCH_OVER_IMAGE = 2
#: Calibrated constants of :func:`estimate_step_bytes` (see its docstring).
ACTIVATION_FACTOR = 14.0
HEAD_FACTOR = 8.0
STATE_BYTES_PER_PARAM = 16  # fp32 weights + gradients + two Adam moments
OVERHEAD_BYTES = 64 << 20
#: Options that set a run's size, as the command line spells them.
SIZE_OPTIONS = ("patch_size", "batch_size", "depth", "base_channels")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human number (``1.2 GB``, ``3.4e+21 TB`` for absurd values)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB" if n < 1e6 else f"{n:.2g} TB"


def plain_unet_parameters(in_channels: int, num_classes: int, depth: int, base_channels: int, dims: int = 2) -> float:
    """Parameters of a plain UNet (double 3^dims convs, stage widths ``base * 2**i``, transposed-conv upsampling).

    A float, so that absurd sizes (``depth 50``) stay computable without building anything.
    """
    k = 3.0 ** dims
    widths = [float(base_channels) * 2.0 ** i for i in range(depth)]
    params, prev = 0.0, float(in_channels)
    for c in widths:  # encoder
        params += k * (prev * c + c * c)
        prev = c
    for i in range(depth - 2, -1, -1):  # decoder: upsample from stage i+1, then a double conv on the concat
        c = widths[i]
        params += 2.0 ** dims * widths[i + 1] * c + k * (2 * c * c + c * c)
    return params + widths[0] * num_classes


def estimate_step_bytes(patch_size: Sequence[int], batch_size: int, in_channels: int, num_classes: int,
                        depth: int, base_channels: int) -> float:
    """Bytes a training step of a plain UNet needs (fp32, Adam-type optimizer), from its sizes alone.

    ``patch_size`` is 2 or 3 ints (2D or 3D). The estimate is

    * activations kept for the backward pass: ``ACTIVATION_FACTOR`` x ``batch`` x sum over stages of
      width x pixels of the stage (each stage's convs, norms, activations, pooling, upsampling and skip
      concatenation, with their gradients at the peak of the backward pass), times 4 bytes;
    * the head: ``HEAD_FACTOR`` x ``batch`` x pixels x ``num_classes`` (logits, softmax, one-hot target and
      their gradients) plus the input, times 4 bytes;
    * parameters, gradients and two optimizer moments: ``STATE_BYTES_PER_PARAM`` per parameter;
    * ``OVERHEAD_BYTES`` for the allocator and kernels' workspaces.

    Calibration: the peak resident memory (``ru_maxrss``) of a child process doing two forward-backward-AdamW
    steps of :class:`unetkit.UNet` with CE + Dice on CPU, minus that of the same process before the model was
    built, was measured for eight 2D runs (patch 64-256, batch 2-32, depth 3-5, width 8-32, 2-8 classes; torch
    2.x, one thread). With the factors above the estimate was 0.98x to 1.28x the measured memory (it errs high,
    most for deep narrow nets on small patches, where the optimizer state dominates);
    ``benchmarks/memory_calibration.py`` repeats the measurement. 3D patches use the same per-pixel factors
    (3x3x3 convs keep the same tensors per voxel); they were not measured.
    """
    dims = len(patch_size)
    if dims not in (2, 3):
        raise ValueError(f"patch_size has 2 or 3 sides, not {list(patch_size)}")
    pixels = float(math.prod(float(s) for s in patch_size))
    stage = sum(float(base_channels) * 2.0 ** i * pixels / 2.0 ** (dims * i) for i in range(depth))
    activations = ACTIVATION_FACTOR * batch_size * stage
    head = batch_size * pixels * (HEAD_FACTOR * num_classes + in_channels)
    params = plain_unet_parameters(in_channels, num_classes, depth, base_channels, dims)
    return 4.0 * (activations + head) + STATE_BYTES_PER_PARAM * params + OVERHEAD_BYTES


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device: Any = None) -> int | None:
    """Memory a run may still use: free GPU memory for a CUDA ``device``; otherwise the smaller of the
    cgroup's remaining limit (v2 or v1) and ``MemAvailable`` of ``/proc/meminfo``. ``None`` when unknown
    (not Linux, no readable files): callers then skip the memory check rather than guess."""
    if device is not None and str(device).startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:  # noqa: BLE001 - no usable GPU query: fall back to host memory
            pass
    found: list[int] = []
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # v1 writes a huge number for "no limit"
            found.append(max(0, limit - (_read_int(usage_file) or 0)))
            break
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


def largest_depth(side: int) -> int:
    """The largest depth whose ``side / 2**(depth - 1)`` is still at least 1 pixel."""
    return max(1, int(math.floor(math.log2(max(side, 1)))) + 1)


def check_run_size(patch_size: Sequence[int], batch_size: int, *, in_channels: int, num_classes: int,
                   depth: int | None = None, base_channels: int | None = None,
                   largest_image: Sequence[int] | None = None, given: Collection[str] = SIZE_OPTIONS,
                   limit_bytes: int | None = None, device: Any = None, check_depth: bool = True) -> float:
    """Refuse a run whose sizes cannot work, before anything is allocated; return the estimated step bytes.

    ``depth``/``base_channels`` are the plain UNet's (``None`` for a pretrained encoder: its own, estimated
    as depth 5, width 64). ``largest_image`` is the largest image's size per axis, for the depth and patch
    rules of this module's docstring. ``given`` names the options the user set (the ones blamed; by default
    all four; an empty one blames "the planned sizes"). ``check_depth=False`` skips the depth rule (a network
    whose stages pool some axes only, as anisotropic 3D plans do, checks its own strides). ``limit_bytes`` defaults to :func:`available_bytes` of ``device``.
    Raises ``ValueError`` (one line, naming the option, its value, the estimate, the limit and the fix).
    """
    patch = tuple(int(s) for s in patch_size)
    shown = "x".join(str(s) for s in patch)
    plain = depth is not None
    if plain and depth is not None and check_depth:
        ref = patch if "patch_size" in given or largest_image is None else tuple(int(s) for s in largest_image)
        fits = largest_depth(min(ref))
        if depth > fits:
            what = (f"a {shown} patch" if ref == patch else f"the largest image ({'x'.join(map(str, ref))})")
            raise ValueError(f"--depth {depth}: halving {what} {depth - 1} times leaves less than 1 pixel per "
                             f"axis; use --depth {fits} or less")
    if largest_image is not None:
        stride = 2 ** ((depth or 5) - 1)
        useful = [max(MAX_PATCH_OVER_IMAGE * int(s), -(-int(s) // stride) * stride) for s in largest_image]
        if len(useful) == len(patch) and any(p > u for p, u in zip(patch, useful)):
            image = "x".join(str(int(s)) for s in largest_image)
            name = "--patch-size" if "patch_size" in given else "the planned patch size"
            raise ValueError(f"{name} {shown}: larger than {MAX_PATCH_OVER_IMAGE}x the largest image ({image}); "
                             f"the rest would be padding; use --patch-size {' '.join(map(str, useful))} or less "
                             "(or leave it to the plan)")
    d, base = (depth, base_channels or 16) if plain else (5, 64)
    assert d is not None
    need = estimate_step_bytes(patch, batch_size, in_channels, num_classes, d, base)
    limit = available_bytes(device) if limit_bytes is None else limit_bytes
    if limit is None or need <= limit:
        return need
    values = {"patch_size": shown, "batch_size": batch_size, "depth": d, "base_channels": base}
    what = ", ".join(f"{_flag(n)} {values[n]}" for n in SIZE_OPTIONS
                     if n in given and (plain or n in ("patch_size", "batch_size")))
    fixed = estimate_step_bytes(patch, 0, in_channels, num_classes, d, base)
    per_sample = estimate_step_bytes(patch, 1, in_channels, num_classes, d, base) - fixed
    max_batch = int((limit - fixed) // per_sample) if limit > fixed else 0
    if max_batch >= 1:
        fix = f"use --batch-size {max_batch} or less, or a smaller --patch-size"
    elif plain:
        fix = "use a smaller --patch-size, --depth or --base-channels"
    else:
        fix = "use a smaller --patch-size or encoder"
    raise ValueError(f"{what or 'the planned sizes'}: a training step needs about {format_bytes(need)} of memory "
                     f"(patch {shown}, batch {batch_size}, depth {d}, width {base}) but {format_bytes(limit)} is "
                     f"available; {fix}")


def check_plan_size(plan: Any, cfg: Any, fp: Any, device: Any = None) -> float:
    """:func:`check_run_size` for a :class:`unetkit.train.plan.Plan` made for ``cfg`` from fingerprint ``fp``."""
    model = cfg.model
    plain = model.encoder == "plain"
    largest = fp.size_stats().get("max") if fp is not None else None
    given = [n for n in SIZE_OPTIONS if plan.reasons.get(n) == "given"]
    in_channels = getattr(fp, "in_channels", None) or model.in_channels
    num_classes = getattr(fp, "num_classes", None) or model.num_classes
    return check_run_size(plan.patch_size, plan.batch_size, in_channels=int(in_channels),
                          num_classes=int(num_classes), depth=plan.depth if plain else None,
                          base_channels=plan.base_channels if plain else None, largest_image=largest,
                          given=given, device=device, check_depth=getattr(plan, "strides", None) is None)
