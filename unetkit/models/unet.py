"""The UNet: an encoder, a decoder and a 1x1 segmentation head (plus optional extras).

Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", 2015.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention
from .blocks import conv_nd, init_kaiming, interp_mode
from .config import DEFAULT_BASE_CHANNELS, UNetConfig
from .decoder import UNetDecoder, exporting, resolve_decoder_channels
from .encoders import get_encoder
from .encoders.base import axis_reductions, freeze


class UNet(nn.Module):
    """UNet for semantic segmentation; ``forward`` returns raw logits ``(N, num_classes, H, W)``, or
    ``(N, num_classes, D, H, W)`` for volumes with ``spatial_dims=3``.

    Build it from a :class:`UNetConfig` or from the same options as keywords: ``UNet(config)``,
    ``UNet(num_classes=3, in_channels=1)``, or ``UNet(config, encoder="vgg16")`` (keywords replace fields).
    ``model.config`` is the resolved :class:`UNetConfig` (``depth``, ``base_channels`` and the
    ``decoder_channels`` built filled in).
    The options (see :class:`UNetConfig` for each one's help):

    * ``num_classes`` (1 for a binary model read through a sigmoid), ``in_channels``;
    * ``encoder`` (a registered name or ``"timm:<name>"``, see :func:`unetkit.models.encoder_names`),
      ``encoder_weights`` (``None``, ``"imagenet"`` or a local state-dict path), ``freeze_encoder``
      (no gradients, BatchNorm kept in eval mode);
    * ``base_channels``, ``depth``: the plain encoder's first width and number of stages (64 and 5: the
      paper's 64..1024); ``depth`` also truncates other encoders' stages;
    * ``decoder_channels`` (coarse to fine; ``"mirror"``/``None``: each stage as wide as its skip;
      ``"light"``: 16 x each stage's reduction, at most 256 and at most the mirror, smp's widths;
      ``"auto"``: the one the encoder declares, light for VGG, mirror for the others; or the widths),
      ``upsample`` (``transpose`` |
      ``bilinear`` | ``pixelshuffle``), ``skip`` (``crop`` | ``pool`` | ``interpolate`` | ``pad``: with
      ``padding="same"`` the output always has the input's size), ``padding`` (``same`` | ``valid``: the
      paper's unpadded convs, 572x572 in, 388x388 out), ``norm`` (``batch`` | ``instance`` | ``none``);
    * ``spatial_dims`` (2 or 3: the same network with 3D convs, pools, norms and trilinear resizing; plain
      encoder only), ``strides`` and ``kernel_sizes`` (per-stage pool strides and conv kernels, per axis:
      anisotropic volumes, see :func:`unetkit.models.stages.plan_stages`);
    * ``attention="self"`` (self-attention on the bottleneck), ``deep_supervision`` (training mode returns
      ``[main, aux_1, ...]``, aux_1 the finest; eval mode the main logits), ``multiscale_fusion`` (the
      final logits fuse every decoder stage's prediction).
    """

    def __init__(self, config: UNetConfig | None = None, **options: Any) -> None:
        super().__init__()
        cfg = (config or UNetConfig()).replace(**options) if options else (config or UNetConfig())
        if cfg.encoder == "plain":
            cfg = cfg.replace(base_channels=cfg.base_channels or DEFAULT_BASE_CHANNELS)
            extra = {"spatial_dims": cfg.spatial_dims, "strides": cfg.strides, "kernel_sizes": cfg.kernel_sizes} \
                if cfg.spatial_dims != 2 or cfg.strides is not None or cfg.kernel_sizes is not None else {}
            stages = cfg.strides or cfg.kernel_sizes
            self.encoder = get_encoder("plain", cfg.in_channels, cfg.encoder_weights,
                                       cfg.depth or (len(stages) if stages else 5),
                                       base_channels=cfg.base_channels, padding=cfg.padding, norm=cfg.norm, **extra)
        else:
            self.encoder = get_encoder(cfg.encoder, cfg.in_channels, cfg.encoder_weights, cfg.depth)
        num_classes, nd = cfg.num_classes, cfg.spatial_dims
        enc_ch, red = self.encoder.out_channels, self.encoder.reductions
        widths = resolve_decoder_channels(cfg.decoder_channels, enc_ch, red, self.encoder.decoder)
        self.config = cfg.replace(depth=len(enc_ch), decoder_channels=widths)
        self.bottleneck_attention = SelfAttention(enc_ch[-1], spatial_dims=nd) if cfg.attention == "self" else None
        self.decoder = UNetDecoder(enc_ch, red, widths, cfg.upsample, cfg.skip, cfg.padding, cfg.norm, nd,
                                   axis_reductions(self.encoder) if nd != 2 or cfg.strides else None,
                                   getattr(self.encoder, "kernel_sizes", None) if cfg.kernel_sizes else None)
        dec_ch = self.decoder.out_channels
        conv = conv_nd(nd)
        self.head = conv(dec_ch[-1], num_classes, 1)
        # Per-stage heads for every stage but the last (whose head is ``self.head``).
        needs_stage_heads = cfg.deep_supervision or cfg.multiscale_fusion
        self.stage_heads = nn.ModuleList(conv(c, num_classes, 1) for c in dec_ch[:-1]) \
            if needs_stage_heads else None
        self.fusion = conv(num_classes * len(dec_ch), num_classes, 1) if cfg.multiscale_fusion else None
        for part in (self.decoder, self.head, self.stage_heads, self.fusion, self.bottleneck_attention):
            if part is not None:
                init_kaiming(part)
        if self.fusion is not None:  # start as the plain main head: the finest stage's logits
            with torch.no_grad():
                self.fusion.weight.zero_()
                self.fusion.bias.zero_()
                for c in range(num_classes):
                    self.fusion.weight[c, (len(dec_ch) - 1) * num_classes + c] = 1.0
        if cfg.freeze_encoder:
            freeze(self.encoder)

    @property
    def stride(self) -> int:
        """The total downsampling factor (the deepest encoder stage's reduction; the largest over the axes)."""
        return int(self.encoder.reductions[-1])

    @property
    def axis_strides(self) -> tuple[int, ...]:
        """The total downsampling factor of each spatial axis (``(D, H, W)`` in 3D)."""
        return axis_reductions(self.encoder)[-1]

    @property
    def num_classes(self) -> int:
        return self.head.out_channels

    def train(self, mode: bool = True) -> UNet:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        nd = self.config.spatial_dims
        if x.dim() != nd + 2:
            raise ValueError(f"a UNet with spatial_dims={nd} takes {nd + 2}-D input (N, C, "
                             f"{'D, H, W' if nd == 3 else 'H, W'}), not shape {tuple(x.shape)}")
        size = x.shape[-nd:]
        mode = interp_mode(nd)
        feats = self.encoder(x)
        if self.bottleneck_attention is not None:
            feats = [*feats[:-1], self.bottleneck_attention(feats[-1])]
        stages = self.decoder(feats)
        main = self.head(stages[-1])
        aux = [h(s) for h, s in zip(self.stage_heads, stages[:-1])] if self.stage_heads is not None else []
        if self.fusion is not None:
            out_size = main.shape[-nd:]
            ups = [F.interpolate(a, size=out_size, mode=mode, align_corners=False) for a in aux]
            main = self.fusion(torch.cat([*ups, main], dim=1))
        if self.config.padding == "same" and (exporting() or main.shape[-nd:] != size):
            main = F.interpolate(main, size=size, mode=mode, align_corners=False)
        if self.config.deep_supervision and self.training:
            return [main, *reversed(aux)]
        return main

    @classmethod
    def from_config(cls, config: UNetConfig | dict[str, Any]) -> UNet:
        """Rebuild a model from ``model.config`` or its dict (no weights are fetched: load them separately)."""
        cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
        return cls(cfg.replace(encoder_weights=None))
