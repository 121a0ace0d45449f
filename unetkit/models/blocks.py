"""Building blocks shared by encoders and the decoder."""

from __future__ import annotations

from torch import nn


def conv3x3(in_ch: int, out_ch: int, padding: str = "same", norm: str = "batch") -> list[nn.Module]:
    """3x3 conv (+ BatchNorm) + ReLU. ``padding="valid"`` is the unpadded conv of the 2015 paper."""
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    if norm not in ("batch", "none"):
        raise ValueError(f"norm must be 'batch' or 'none', not {norm!r}")
    use_bn = norm == "batch"
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1 if padding == "same" else 0, bias=not use_bn)]
    if use_bn:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DoubleConv(nn.Sequential):
    """Two 3x3 conv layers, the unit of every UNet stage."""

    def __init__(self, in_ch: int, out_ch: int, padding: str = "same", norm: str = "batch") -> None:
        super().__init__(*conv3x3(in_ch, out_ch, padding, norm), *conv3x3(out_ch, out_ch, padding, norm))


def init_kaiming(module: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, ReLU), unit BatchNorm. Applied to decoder and heads only."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            if hasattr(m, "factor"):  # ICNRConv keeps its sub-pixel-equal init
                continue
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
