"""Conv + BatchNorm folding for inference and export.

In eval mode a BatchNorm layer is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma +
beta``; when its input is a convolution's output (and nothing else reads that output) the map can be folded
into the convolution's weight and bias, which removes one full pass over the activation per BatchNorm.

Which convolution feeds which BatchNorm is found by running one forward pass and watching the calls (a
``TorchFunctionMode``), so any architecture that calls ``F.conv2d`` / ``F.conv_transpose2d`` and
``F.batch_norm`` works (the UNet, torchvision backbones, segmentation_models.pytorch), whether the layers
sit in an ``nn.Sequential`` or are wired by hand. 3D models (``F.conv3d`` / ``F.conv_transpose3d`` and
``BatchNorm3d``) fold the same way; InstanceNorm has no running statistics to fold and is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["find_conv_bn_pairs", "fold_conv_bn", "fuse_conv_bn"]

_CONVS: tuple[Callable[..., Any], ...] = (F.conv2d, torch.conv2d, F.conv_transpose2d, torch.conv_transpose2d,
                                          F.conv3d, torch.conv3d, F.conv_transpose3d, torch.conv_transpose3d)
_CONV_MODULES = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_MODULES = (nn.BatchNorm2d, nn.BatchNorm3d)
_BATCH_NORMS: tuple[Callable[..., Any], ...] = (F.batch_norm, torch.batch_norm)
#: Calls that only read a tensor's metadata (``x.dim()``, ``x.shape``...), not its values.
_METADATA = {"dim", "ndimension", "size", "stride", "numel", "nelement", "is_contiguous", "__len__", "__get__",
             "data_ptr", "is_floating_point", "is_complex", "element_size", "get_device", "storage_offset"}


class _Recorder(TorchFunctionMode):
    """Records, for every conv output tensor, the calls that read it (by ``id``, the tensors kept alive)."""

    def __init__(self, convs: dict[int, nn.Module], norms: dict[int, nn.Module]) -> None:
        super().__init__()
        self.convs, self.norms = convs, norms
        self.produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # id(output) -> (conv, output)
        self.readers: dict[int, list[nn.Module | None]] = {}  # id(output) -> BN module or None (other)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        kwargs = kwargs or {}
        reader: nn.Module | None = None
        if func in _BATCH_NORMS:
            running_mean = args[1] if len(args) > 1 else kwargs.get("running_mean")
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            if running_mean is not None and not training:
                reader = self.norms.get(id(running_mean))
        out = func(*args, **kwargs)
        if not (getattr(func, "__name__", "") in _METADATA and not isinstance(out, torch.Tensor)):
            flat, _ = tree_flatten((args, kwargs))
            for i, t in enumerate(flat):
                if isinstance(t, torch.Tensor) and id(t) in self.produced:
                    # Only the BatchNorm's *input* (its first argument) may be folded.
                    self.readers.setdefault(id(t), []).append(reader if i == 0 else None)
        if func in _CONVS and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            conv = self.convs.get(id(weight))
            if conv is not None:
                self.produced[id(out)] = (conv, out)
        return out


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """``(conv, bn)`` pairs where the BatchNorm (eval mode, running statistics) is the only reader of the conv.

    Runs ``model(example)`` once without gradients. Only exact ``nn.BatchNorm2d``/``BatchNorm3d`` modules are folded
    (subclasses such as timm's ``BatchNormAct2d`` do more than normalise); a conv that feeds the same
    BatchNorm more than once, or a BatchNorm fed by more than one conv, is left alone.
    """
    convs = {id(m.weight): m for m in model.modules() if type(m) in _CONV_MODULES}
    norms = {id(m.running_mean): m for m in model.modules()
             if type(m) in _BN_MODULES and m.running_mean is not None}
    rec = _Recorder(convs, norms)
    with torch.no_grad(), rec:
        model(example)
    pairs: dict[int, tuple[nn.Module, nn.Module]] = {}
    uses: dict[int, int] = {}
    for key, (conv, _) in rec.produced.items():
        readers = rec.readers.get(key, [])
        if len(readers) == 1 and readers[0] is not None:
            bn = readers[0]
            uses[id(bn)] = uses.get(id(bn), 0) + 1
            pairs[id(bn)] = (conv, bn)
    # A module called several times (same conv or BN reused) is folded only if every call agreed.
    conv_calls: dict[int, int] = {}
    for conv, _ in rec.produced.values():
        conv_calls[id(conv)] = conv_calls.get(id(conv), 0) + 1
    return [(c, b) for k, (c, b) in pairs.items() if uses[k] == 1 and conv_calls[id(c)] == 1
            and not (isinstance(c, _TRANSPOSED) and c.groups != 1)]


@torch.no_grad()
def fold_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv``'s weight and bias, in place (float64 arithmetic)."""
    w = conv.weight
    scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_var, dtype=torch.float64)
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    rest = [1] * (w.dim() - 2)
    shape = [1, -1, *rest] if isinstance(conv, _TRANSPOSED) else [-1, 1, *rest]
    new_w = (w.double() * scale.reshape(shape)).to(w.dtype)
    new_b = ((bias - bn.running_mean.double()) * scale + shift).to(w.dtype)
    conv.weight = nn.Parameter(new_w.contiguous(memory_format=_memory_format(w)), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b, requires_grad=w.requires_grad)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _replace(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is target:
                setattr(parent, name, new)


def _example_input(model: nn.Module, size: int) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)), None)
    if first is None:
        raise ValueError("fuse_conv_bn: the model has no Conv2d or Conv3d, pass example=")
    p = first.weight
    nd = p.dim() - 2
    if nd == 3:
        size = min(size, 64)  # a 256^3 volume is needlessly large to find the pairs
    return torch.zeros(1, first.in_channels, *(size,) * nd, device=p.device, dtype=p.dtype)


def fuse_conv_bn(model: nn.Module, example: torch.Tensor | None = None, size: int = 256) -> nn.Module:
    """Fold every eval-mode BatchNorm2d/3d that directly follows a convolution into it; return ``model``.

    The model is switched to eval mode and changed in place (BatchNorm layers become ``nn.Identity``), so
    the result is for inference and export only. ``example`` is one input used to find the pairs (default:
    zeros of ``(1, C, size, size)``, or ``(1, C, s, s, s)`` with ``s = min(size, 64)`` for a 3D model, ``C``
    from the first conv). Outputs agree with the unfused model to
    float32 rounding (about 1e-6 relative).
    """
    model.eval()
    pairs = find_conv_bn_pairs(model, _example_input(model, size) if example is None else example)
    for conv, bn in pairs:
        fold_conv_bn(conv, bn)
        _replace(model, bn, nn.Identity())
    return model
