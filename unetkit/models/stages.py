"""Per-stage pool strides and conv kernel sizes planned from voxel spacing and patch size (nnU-Net's rule).

A thick-slice CT (5 x 0.7 x 0.7 mm) should not be pooled along its 5 mm axis at first: that would make the
voxels even more anisotropic. :func:`plan_stages` pools only the axes whose spacing is within a factor
(2) of the finest one, so the in-plane axes are pooled until their spacing catches up with the slice
axis, and from then on all axes are pooled together; an axis stops being pooled once its feature map
would fall below a minimum size. Convolutions get a kernel of 1 along an axis that is still much coarser
than the finest (nnU-Net's ``1 x 3 x 3`` kernels on thick slices). The result plugs into
``UNetConfig(strides=..., kernel_sizes=...)`` (``depth`` is the number of stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["StagePlan", "plan_stages"]


@dataclass(frozen=True)
class StagePlan:
    """Strides and kernel sizes of each encoder stage, one int per spatial axis, in the input's axis order.

    ``strides[0]`` is all 1 (the first stage is at full resolution); ``feature_sizes[i]`` is the patch's
    size after stage ``i``'s pool (floor division, as max pooling gives); ``spacings[i]`` the voxel
    spacing there.
    """

    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    feature_sizes: tuple[tuple[int, ...], ...]
    spacings: tuple[tuple[float, ...], ...]

    @property
    def depth(self) -> int:
        """Number of encoder stages (``UNetConfig.depth``)."""
        return len(self.strides)

    @property
    def reduction(self) -> tuple[int, ...]:
        """The total downsampling of each axis: patch sizes divisible by it pool without remainder."""
        out = [1] * len(self.strides[0])
        for s in self.strides:
            out = [a * b for a, b in zip(out, s)]
        return tuple(out)


def plan_stages(spacing: Sequence[float], patch_size: Sequence[int], max_depth: int = 6,
                min_feature_size: int = 4, anisotropy: float = 2.0) -> StagePlan:
    """Plan the encoder's stages for a patch of ``patch_size`` voxels of ``spacing`` (same axis order).

    Adds stages (at most ``max_depth``, the full-resolution one included) while some axis can be pooled.
    At each new stage an axis is pooled by 2 when

    * its feature size after pooling is still at least ``min_feature_size`` voxels, and
    * its current spacing is at most ``anisotropy`` times the finest current spacing among the axes that
      may still be pooled by size (so 5 x 0.7 x 0.7 mm pools in-plane only, until 5 x 2.8 x 2.8 mm).

    Each stage's kernel is 3 along an axis whose spacing at that stage is within ``anisotropy`` of the finest
    spacing there, else 1; once 3, an axis keeps 3 in the deeper stages. Planning stops when no axis can be
    pooled or ``max_depth`` stages exist (at least one stage is always returned).
    """
    if len(spacing) != len(patch_size) or not spacing:
        raise ValueError(f"spacing {list(spacing)} and patch_size {list(patch_size)} need one entry per axis")
    if any(s <= 0 for s in spacing) or any(int(p) < 1 for p in patch_size):
        raise ValueError(f"spacing {list(spacing)} and patch_size {list(patch_size)} must be positive")
    if max_depth < 1 or min_feature_size < 1 or anisotropy < 1:
        raise ValueError(f"max_depth ({max_depth}) and min_feature_size ({min_feature_size}) must be >= 1 and "
                         f"anisotropy ({anisotropy}) >= 1")
    nd = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(p) for p in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * nd]
    spacings = [tuple(cur_spacing)]
    sizes = [tuple(cur_size)]
    while len(strides) < max_depth:
        by_size = [a for a in range(nd) if cur_size[a] // 2 >= min_feature_size]
        if not by_size:
            break
        finest = min(cur_spacing[a] for a in by_size)
        pooled = [a for a in by_size if cur_spacing[a] <= anisotropy * finest]
        stride = tuple(2 if a in pooled else 1 for a in range(nd))
        for a in pooled:
            cur_spacing[a] *= 2
            cur_size[a] //= 2
        strides.append(stride)
        spacings.append(tuple(cur_spacing))
        sizes.append(tuple(cur_size))
    kernels: list[tuple[int, ...]] = []
    wide = [False] * nd
    for sp in spacings:
        finest = min(sp)
        wide = [w or sp[a] <= anisotropy * finest for a, w in enumerate(wide)]
        kernels.append(tuple(3 if w else 1 for w in wide))
    return StagePlan(tuple(strides), tuple(kernels), tuple(sizes), tuple(spacings))
