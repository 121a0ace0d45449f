"""Planning for volumes: 2D slices (2.5D with context) or a 3D UNet on volume patches, and the 3D plan.

* **2D, 2.5D or 3D** (:func:`choose_spatial_dims`): on a CPU a 2D network on slices, which was the best or
  within 0.0034 case Dice of the best of 2D, 2.5D and 3D at the same budget on every volume set measured
  (3, 5 and 20 minutes); on a GPU a 3D network when the cases are close to isotropic (slices at most
  ``MAX_ANISOTROPY`` times thicker than the pixels are wide) and deep enough for a 3D patch (at least
  ``MIN_SLICES`` slices), else 2D. ``--spatial-dims`` and ``--context`` (2.5D) override the rule.
* **3D plan** (:func:`plan_3d`): the patch starts from the median case (on the slice grid) and shrinks its
  physically longest axis until it holds ``TARGET_VOXELS / BATCH_3D`` voxels; the encoder's strides and
  kernels follow the voxel spacing (:func:`unetkit.models.stages.plan_stages`: a thick axis is pooled only
  once the others have caught up); batches of 2 patches with instance norm (as nnU-Net), width 16 on a
  CPU and 32 on a GPU; foreground sampling, loss and length as in 2D.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ..models.stages import plan_stages
from .config import TrainConfig
from .plan import BASE_CHANNELS, Plan, plan_length

#: Slices at most this many times thicker than the pixels are wide count as isotropic enough for 3D.
MAX_ANISOTROPY = 3.0
#: A case needs at least this many slices for a 3D patch to be worth it.
MIN_SLICES = 16
#: Voxels per training step (all patches of a step), per device type.
TARGET_VOXELS = {"cpu": 2 * 48**3, "cuda": 2 * 128**3}
#: Patches per step a 3D patch is planned for (nnU-Net's batch of 2).
BATCH_3D = 2
#: Smallest planned patch side (voxels).
MIN_SIDE = 8
MAX_DEPTH_3D = 5


def _median_grid(cases: list[Any]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    shape = tuple(int(statistics.median(c.shape[a] for c in cases)) for a in range(3))
    spacing = tuple(float(statistics.median(c.spacing[a] for c in cases)) for a in range(3))
    return shape, spacing  # type: ignore[return-value]


def choose_spatial_dims(cfg: TrainConfig, train: Any, device: torch.device | str = "cpu") -> tuple[int, str]:
    """``(2 or 3, reason)`` for a volume split ``train`` (slices along the planned axis) trained on ``device``;
    2D images get ``(2, ...)``.

    Measured on the development suite (docs/volumes.md; 2 CPU cores, the same budget of 3, 5 or 20 minutes
    for every variant): a 2D network on slices was the best or within 0.0034 case Dice of the best on every
    volume set. A 3D UNet manages a third to a sixth of its steps on a CPU and led only once (the 3 mm
    isotropic brain at 20 minutes, by 0.0015); one neighbouring slice on each side (2.5D) changed case Dice
    by -0.016 to +0.0034 with no consistent sign. So on a CPU: 2D (2.5D when ``--context`` is given). On a
    GPU: a 3D UNet for near-isotropic cases deep enough for a 3D patch (nnU-Net's finding for its 3d_fullres;
    not measured here), 2D otherwise.
    """
    given = cfg.spatial_dims or (3 if cfg.model.spatial_dims == 3 else None)
    cases = getattr(train, "cases", None)
    if cases is None:
        return 2, "2D images"
    if given is not None:
        return given, "given"
    if cfg.data.context:
        return 2, f"given --context {cfg.data.context} (2.5D: a 2D network on slices with their neighbours)"
    shape, spacing = _median_grid(cases)
    anisotropy = spacing[0] / max(min(spacing[1:]), 1e-6)
    grid = f"median case {shape[0]}x{shape[1]}x{shape[2]} voxels of {spacing[0]:.3g}x{spacing[1]:.3g}x{spacing[2]:.3g} mm"
    if torch.device(device).type != "cuda":
        return 2, (f"{grid}; on a CPU a 2D network on slices: at the same budget it was the best or within 0.0034 "
                   "case Dice of the best of 2D, 2.5D and 3D on every volume set of the development suite "
                   "(docs/volumes.md; --spatial-dims 3 or --context 1 to choose otherwise)")
    if anisotropy > MAX_ANISOTROPY:
        return 2, (f"{grid}: slices {anisotropy:.1f}x thicker than the pixels (> {MAX_ANISOTROPY:g}), so a 2D "
                   "network on slices (--spatial-dims 3 for a 3D one)")
    if shape[0] < MIN_SLICES:
        return 2, (f"{grid}: under {MIN_SLICES} slices, too few for a 3D patch, so a 2D network on slices "
                   "(--spatial-dims 3 for a 3D one)")
    return 3, (f"{grid}: near-isotropic (slices {anisotropy:.1f}x the pixel size) on a GPU, so a 3D UNet on "
               "volume patches (--spatial-dims 2 for slices)")


def _plan_patch_3d(shape: tuple[int, int, int], spacing: tuple[float, float, float], voxels: int
                   ) -> tuple[int, int, int]:
    patch = [max(1, s) for s in shape]
    while math.prod(patch) > voxels:
        # shrink the axis that is longest in millimetres (and still above the minimum side)
        candidates = [a for a in range(3) if patch[a] > MIN_SIDE]
        if not candidates:
            break
        a = max(candidates, key=lambda k: patch[k] * spacing[k])
        patch[a] = max(MIN_SIDE, int(patch[a] * 0.9))
    return tuple(patch)  # type: ignore[return-value]


def plan_3d(plan: Plan, cfg: TrainConfig, train: Any, device: torch.device | str, reason: str) -> Plan:
    """``plan`` (made by the 2D rules from the same fingerprint) turned into a 3D plan for the cases of
    ``train`` (a :class:`~unetkit.data.volume_dataset.VolumeCaseDataset`)."""
    dev = "cuda" if torch.device(device).type == "cuda" else "cpu"
    why = plan.reasons
    shape, spacing = _median_grid(train.cases)
    if cfg.patch_size is not None and len(cfg.patch_size) == 3:
        patch = tuple(int(v) for v in cfg.patch_size)
        why["patch_size"] = "given"
    else:
        limit = TARGET_VOXELS[dev] // BATCH_3D
        patch = _plan_patch_3d(shape, spacing, limit)
        why["patch_size"] = (f"median case {shape[0]}x{shape[1]}x{shape[2]}" + (
            f", its longest axis in mm shrunk until {limit} voxels" if math.prod(patch) < math.prod(shape) else "")
            + ", rounded up to the network's strides")
    model = cfg.model
    stages = plan_stages(spacing, patch, max_depth=model.depth or MAX_DEPTH_3D)
    strides = model.strides or stages.strides
    kernels = model.kernel_sizes or stages.kernel_sizes
    depth = len(strides)
    why["depth"] = ("given" if model.depth is not None or model.strides is not None else
                    f"{depth} stages; strides {' '.join('x'.join(map(str, s)) for s in strides)} follow the "
                    "voxel spacing (a thick axis is pooled once the others caught up, as nnU-Net)")
    total = [math.prod(s[a] for s in strides) for a in range(3)]
    if cfg.patch_size is None:
        patch = tuple(-(-p // t) * t for p, t in zip(patch, total))
    base = model.base_channels or BASE_CHANNELS[dev]
    why["base_channels"] = "given" if model.base_channels else f"{base} on a {dev.upper()}"
    sizes = [tuple(c.shape) for c in train.cases]
    samples = max(1, sum(max(1, math.ceil(math.prod(s) / math.prod(patch))) for s in sizes))
    batch = cfg.batch_size or max(BATCH_3D, min(8, TARGET_VOXELS[dev] // math.prod(patch)))
    why["batch_size"] = "given" if cfg.batch_size else f"about {TARGET_VOXELS[dev]} patch voxels per step"
    samples = max(samples, batch)
    max_steps, budget, why["length"] = plan_length(cfg, samples, batch, device)
    why["spatial_dims"] = reason
    plan.patch_size, plan.batch_size, plan.depth, plan.base_channels = patch, batch, depth, base  # type: ignore[assignment]
    plan.spatial_dims, plan.strides, plan.kernel_sizes = 3, [list(s) for s in strides], [list(k) for k in kernels]
    plan.samples_per_epoch, plan.max_steps, plan.time_budget_s = samples, max_steps, budget
    plan.norm_layer = "instance" if model.norm == "batch" else model.norm
    why["norm_layer"] = f"{plan.norm_layer}: batches of {batch} 3D patches (as nnU-Net)"
    return plan


def as_planned(train: Any, val: Any, spatial_dims: int, augment: Any = None) -> tuple[Any, Any]:
    """The splits as the plan trains on them: slices (2D) as they are, or the cases as 3D samples with the
    3D augmentation of ``augment`` (an :class:`~unetkit.data.AugmentConfig`)."""
    if spatial_dims != 3:
        return train, val
    from ..data.transforms3d import build_transforms_3d
    from ..data.volume_dataset import as_cases

    cases = as_cases(train)
    cases.transform = build_transforms_3d(augment, train.ignore_index)
    val_cases = None
    if val is not None:
        val_cases = as_cases(val)
        val_cases.transform = None
    return cases, val_cases
