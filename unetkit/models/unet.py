"""The UNet: an encoder, a decoder and a 1x1 segmentation head (plus optional extras).

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention
from .blocks import init_kaiming
from .decoder import UNetDecoder, exporting
from .encoders import get_encoder
from .encoders.base import freeze


class UNet(nn.Module):
    """UNet for semantic segmentation; ``forward`` returns raw logits ``(N, num_classes, H, W)``.

    Args:
        num_classes: output channels (1 for a binary model read through a sigmoid).
        in_channels: image channels.
        encoder: a registered encoder name (``"plain"``, ``"vgg16"``, ``"vgg16_bn"``, backbones,
            ``"timm:<name>"``); see :func:`unetkit.models.encoders.encoder_names`.
        encoder_weights: ``None``, ``"imagenet"`` (torchvision's weights enum) or a local state-dict path.
        freeze_encoder: no gradients into the encoder, and its BatchNorm layers stay in eval mode.
        base_channels, depth: the plain encoder's first width and number of stages (64 and 5: the paper's
            64..1024); ``depth`` also truncates other encoders' stages.
        decoder_channels: widths of the decoder stages, coarse to fine (default: mirror the encoder).
        upsample: ``"transpose"`` | ``"bilinear"`` | ``"pixelshuffle"``.
        skip: how a skip and the upsampled map are matched: ``"crop"`` | ``"pool"`` | ``"interpolate"`` |
            ``"pad"``. With ``padding="same"`` the output always has the input's size (logits are resized
            bilinearly at the end when cropping or pooling shrank them).
        padding: ``"same"`` or ``"valid"`` (unpadded convs: 572x572 in, 388x388 out, as in the paper).
        norm: ``"batch"`` | ``"none"`` (decoder, and the plain encoder).
        attention: ``None`` | ``"self"``: a self-attention block on the bottleneck features.
        deep_supervision: in training mode return ``[main, aux_1, ...]`` (aux at their stage's resolution,
            aux_1 the finest); in eval mode only the main logits.
        multiscale_fusion: the final logits fuse every decoder stage's prediction upsampled to full size.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3, encoder: str = "plain",
                 encoder_weights: str | Path | None = None, freeze_encoder: bool = False,
                 base_channels: int = 64, depth: int = 5, decoder_channels: Sequence[int] | None = None,
                 upsample: str = "transpose", skip: str = "interpolate", padding: str = "same",
                 norm: str = "batch", attention: str | None = None, deep_supervision: bool = False,
                 multiscale_fusion: bool = False) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "num_classes": num_classes, "in_channels": in_channels, "encoder": encoder,
            "encoder_weights": str(encoder_weights) if encoder_weights is not None else None,
            "freeze_encoder": freeze_encoder, "base_channels": base_channels, "depth": depth,
            "decoder_channels": list(decoder_channels) if decoder_channels else None, "upsample": upsample,
            "skip": skip, "padding": padding, "norm": norm, "attention": attention,
            "deep_supervision": deep_supervision, "multiscale_fusion": multiscale_fusion,
        }
        if attention not in (None, "self"):
            raise ValueError(f"attention must be None or 'self', not {attention!r}")
        weights = str(encoder_weights) if encoder_weights is not None else None
        if encoder == "plain":
            self.encoder = get_encoder("plain", in_channels, weights, depth, base_channels=base_channels,
                                       padding=padding, norm=norm)
        else:
            if padding != "same":
                raise ValueError(f"padding='valid' needs encoder='plain'; {encoder!r} uses padded convs")
            self.encoder = get_encoder(encoder, in_channels, weights, None if depth == 5 else depth)
        enc_ch, red = self.encoder.out_channels, self.encoder.reductions
        self.bottleneck_attention = SelfAttention(enc_ch[-1]) if attention == "self" else None
        self.decoder = UNetDecoder(enc_ch, red, decoder_channels, upsample, skip, padding, norm)
        dec_ch = self.decoder.out_channels
        self.head = nn.Conv2d(dec_ch[-1], num_classes, 1)
        # Per-stage heads for every stage but the last (whose head is ``self.head``).
        needs_stage_heads = deep_supervision or multiscale_fusion
        self.stage_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in dec_ch[:-1]) \
            if needs_stage_heads else None
        self.fusion = nn.Conv2d(num_classes * len(dec_ch), num_classes, 1) if multiscale_fusion else None
        self.deep_supervision = deep_supervision
        self.padding = padding
        self.encoder_frozen = freeze_encoder
        for part in (self.decoder, self.head, self.stage_heads, self.fusion, self.bottleneck_attention):
            if part is not None:
                init_kaiming(part)
        if self.fusion is not None:  # start as the plain main head: the finest stage's logits
            with torch.no_grad():
                self.fusion.weight.zero_()
                self.fusion.bias.zero_()
                for c in range(num_classes):
                    self.fusion.weight[c, (len(dec_ch) - 1) * num_classes + c] = 1.0
        if freeze_encoder:
            freeze(self.encoder)

    @property
    def num_classes(self) -> int:
        return self.head.out_channels

    def train(self, mode: bool = True) -> UNet:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[-2:]
        feats = self.encoder(x)
        if self.bottleneck_attention is not None:
            feats = [*feats[:-1], self.bottleneck_attention(feats[-1])]
        stages = self.decoder(feats)
        main = self.head(stages[-1])
        aux = [h(s) for h, s in zip(self.stage_heads, stages[:-1])] if self.stage_heads is not None else []
        if self.fusion is not None:
            out_size = main.shape[-2:]
            ups = [F.interpolate(a, size=out_size, mode="bilinear", align_corners=False) for a in aux]
            main = self.fusion(torch.cat([*ups, main], dim=1))
        if self.padding == "same" and (exporting() or main.shape[-2:] != size):
            main = F.interpolate(main, size=size, mode="bilinear", align_corners=False)
        if self.deep_supervision and self.training:
            return [main, *reversed(aux)]
        return main

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNet:
        """Rebuild a model from ``model.config`` (weights are loaded separately, so none are fetched)."""
        return cls(**{**config, "encoder_weights": None})
