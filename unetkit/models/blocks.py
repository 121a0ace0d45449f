"""Building blocks shared by encoders and the decoder, in 2D or 3D.

One code path serves both: the layer classes and interpolation mode are picked by ``spatial_dims``
(:func:`conv_nd`, :func:`norm_nd`, ...), so a 3D UNet is the 2D one with 3D layers, not a copied class.
Kernel sizes and strides are an ``int`` (the same on every axis) or one ``int`` per spatial axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Layer classes per spatial dimensionality.
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)

Size = int | Sequence[int]


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
    return spatial_dims


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[_check_dims(spatial_dims)]


def conv_transpose_nd(spatial_dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _CONV_T[_check_dims(spatial_dims)]


def _exporting() -> bool:
    """True while the model is traced, scripted, exported or compiled (keep the library ops in the graph)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())


class _GroupNormKernel:
    """Instance norm computed by ``F.group_norm`` with one group per channel: the same statistics (per sample
    and channel) and affine weights, through a CPU kernel 1.1-5x faster, forward and backward, than the one
    behind ``F.instance_norm`` (docs/performance.md). Used on CPU tensors, without running statistics, on
    batched input, when not exporting; otherwise, and for a single spatial element (which instance norm
    refuses in training), the library's forward runs, so exported graphs keep their instance-norm node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or self.track_running_stats or x.dim() != self._get_no_batch_dim() + 1
                or x.shape[2:].numel() == 1 or _exporting()):
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm2d(_GroupNormKernel, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters and state dict) with the faster kernel of ``_GroupNormKernel``."""


class InstanceNorm3d(_GroupNormKernel, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same parameters and state dict) with the faster kernel of ``_GroupNormKernel``."""


_INSTANCE_NORM = {2: InstanceNorm2d, 3: InstanceNorm3d}


class MaxPool(nn.Module):
    """Max pooling with the kernel equal to the stride (per axis, no padding, odd sizes floored), 2D or 3D.

    The values are ``F.max_pool2d``/``F.max_pool3d``'s. Where no gradient is needed (validation, prediction)
    on a CPU tensor in the default memory layout, it takes the elementwise maximum of strided views, one axis
    at a time: PyTorch's CPU pooling kernel for NC(D)HW tensors measured 2.6-18x slower than that (fp32, AMD EPYC;
    ``benchmarks/bench_3d_model.py``, docs/performance.md). Training (which needs the pool's indices for the
    backward pass), channels-last tensors, other devices, inputs smaller than the window (the library's error),
    tracing, export and ``torch.compile`` use the library kernel, so exported graphs keep their ``MaxPool`` node.
    """

    def __init__(self, stride: Size, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = _check_dims(spatial_dims)
        self.stride = as_axes(stride, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not x.is_contiguous() or (torch.is_grad_enabled() and x.requires_grad)
                or any(n < s for n, s in zip(x.shape[2:], self.stride)) or _exporting()):
            pool = F.max_pool2d if self.spatial_dims == 2 else F.max_pool3d
            return pool(x, self.stride, self.stride)
        for axis, s in enumerate(self.stride):
            if s == 1:
                continue
            dim = axis + 2
            n = x.shape[dim] // s
            views = x.narrow(dim, 0, n * s).unflatten(dim, (n, s))
            out = views.select(dim + 1, 0)
            for j in range(1, s):
                out = torch.maximum(out, views.select(dim + 1, j))
            x = out
        return x

    def extra_repr(self) -> str:
        return f"stride={compact(self.stride)}, spatial_dims={self.spatial_dims}"


def interp_mode(spatial_dims: int) -> str:
    """The linear interpolation mode of ``F.interpolate`` for these dimensions: bilinear or trilinear."""
    return {2: "bilinear", 3: "trilinear"}[_check_dims(spatial_dims)]


def as_axes(value: Size, spatial_dims: int) -> tuple[int, ...]:
    """``value`` as one int per spatial axis (an int is repeated)."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    t = tuple(int(v) for v in value)
    if len(t) != spatial_dims:
        raise ValueError(f"{list(t)} needs one entry per spatial axis ({spatial_dims})")
    return t


def compact(value: Size) -> int | tuple[int, ...]:
    """An int when every axis has the same value (so 2D layers keep their ``int`` arguments), else the tuple."""
    if isinstance(value, int):
        return value
    t = tuple(value)
    return t[0] if len(set(t)) == 1 else t


def norm_nd(norm: str, channels: int, spatial_dims: int = 2) -> nn.Module | None:
    """The normalisation layer ``norm`` names: BatchNorm, InstanceNorm (affine, as nnU-Net) or ``None``."""
    if norm == "batch":
        return _BATCH_NORM[_check_dims(spatial_dims)](channels)
    if norm == "instance":
        return _INSTANCE_NORM[_check_dims(spatial_dims)](channels, affine=True)
    if norm == "none":
        return None
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', not {norm!r}")


def conv3x3(in_ch: int, out_ch: int, padding: str = "same", norm: str = "batch", spatial_dims: int = 2,
            kernel_size: Size = 3) -> list[nn.Module]:
    """3x3 conv (+ norm) + ReLU. ``padding="valid"`` is the unpadded conv of the 2015 paper.

    ``kernel_size`` may differ per axis (e.g. ``(1, 3, 3)`` on thick slices); each axis is padded by
    ``k // 2`` with ``padding="same"`` (odd kernels keep the size).
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    k = as_axes(kernel_size, spatial_dims)
    if any(v < 1 or v % 2 == 0 for v in k):
        raise ValueError(f"kernel sizes must be odd and positive, not {list(k)}")
    n = norm_nd(norm, out_ch, spatial_dims)
    pad = compact([v // 2 for v in k]) if padding == "same" else 0
    layers: list[nn.Module] = [conv_nd(spatial_dims)(in_ch, out_ch, compact(k), padding=pad, bias=n is None)]
    if n is not None:
        layers.append(n)
    layers.append(nn.ReLU(inplace=True))
    return layers


class DoubleConv(nn.Sequential):
    """Two 3x3 (or ``kernel_size``) conv layers, the unit of every UNet stage."""

    def __init__(self, in_ch: int, out_ch: int, padding: str = "same", norm: str = "batch", spatial_dims: int = 2,
                 kernel_size: Size = 3) -> None:
        super().__init__(*conv3x3(in_ch, out_ch, padding, norm, spatial_dims, kernel_size),
                         *conv3x3(out_ch, out_ch, padding, norm, spatial_dims, kernel_size))


def init_kaiming(module: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, ReLU), unit norms. Applied to decoder and heads only."""
    for m in module.modules():
        if isinstance(m, CONVS):
            if hasattr(m, "factor"):  # ICNRConv keeps its sub-pixel-equal init
                continue
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORMS) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
