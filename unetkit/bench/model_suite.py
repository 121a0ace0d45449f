"""The model suite: our UNet's training step, batch-1 latency and batch-N throughput, optionally next to
segmentation_models.pytorch's ``Unet``, as achieved GFLOP/s and fractions of the machine's peak.

The model is described by a :class:`~unetkit.models.UNetConfig`, the same one ``train`` and ``info`` use.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..device import amp_name, resolve_amp, resolve_device
from ..models import UNet, UNetConfig
from ..models.fuse import fuse_conv_bn
from ..timing import median
from .flops import count_forward_flops, count_params, count_train_flops
from .harness import (
    PHASES,
    SCHEMA_VERSION,
    Variant,
    compile_variant,
    infer_step,
    layout_tensor,
    on_off,
    resolve_layouts,
    row,
    run_rounds,
    train_step,
)
from .machine import keep_freed_memory, machine_info
from .peak import PeakProbe
from .profile import profile_top_ops

#: The performance goals of the benchmark issues (fractions of the fp32 matmul peak, ratios to smp).
GOALS = {"train_per_flop_vs_smp": 1.2, "train_images_per_s_vs_smp": 1.0, "train_frac_peak": 0.85,
         "infer_b1_frac_peak": 0.95}

#: Config fields the report lists on their own rather than among ``model_options``.
_OWN_KEYS = ("encoder", "num_classes", "in_channels")


def build_smp(encoder: str = "vgg16", num_classes: int = 2, in_channels: int = 3) -> nn.Module:
    """segmentation_models.pytorch's ``Unet`` with ``encoder`` (optional dependency, no weights)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError("--compare smp needs segmentation_models_pytorch: "
                          "pip install 'unetkit[smp]'") from e
    return smp.Unet(encoder, encoder_weights=None, classes=num_classes, in_channels=in_channels)


def smp_encoder_for(encoder: str) -> str:
    """The smp encoder to compare ``encoder`` with: the same name when smp has it, else ``vgg16``."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return "vgg16"
    return encoder if encoder in smp.encoders.get_encoder_names() else "vgg16"


def model_options(config: UNetConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from :class:`UNetConfig`'s defaults (but encoder and channels)."""
    defaults = UNetConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in _OWN_KEYS and getattr(config, f.name) != getattr(defaults, f.name)}


def decoder_label(spec: str | Sequence[int] | None) -> str:
    """The report key of our model with ``decoder_channels=spec``: ``unetkit[mirror]``, ``unetkit[128,64]``."""
    text = spec if isinstance(spec, str) or spec is None else ",".join(str(int(c)) for c in spec)
    return f"unetkit[{text}]"


def run_bench(config: UNetConfig | None = None, size: int = 256, batch: int = 4, iters: int = 5,
              warmup: int = 1, channels_last: str = "both", compile: str | bool = "off",
              fuse: str | bool = "on", compare: str | None = None, device: str | torch.device = "cpu",
              infer_batch: int = 8, decoders: Sequence[str | Sequence[int]] = (),
              phases: Sequence[str] = PHASES, smp_encoder: str | None = None, profile: bool = False,
              compile_mode: str | None = None, peak_n: int | None = None, keep_freed: bool = False,
              amp: Sequence[str] = ("off",), seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark our UNet (and optionally smp's Unet); return the report dict (see ``docs/performance.md``).

    Args:
        config: the model, ``UNet(config)`` (default ``UNetConfig()``: the plain encoder at the paper's
            widths); its ``encoder_weights`` are used as given (``None`` by default: nothing is downloaded).
        size, batch, infer_batch: square input side; training batch; the throughput phase's batch.
        iters, warmup: timed rounds and warm-up steps per phase.
        channels_last: ``"on"``, ``"off"``, ``"both"`` (measure both), ``"auto"`` (per-device choice).
        compile: ``"off"``, ``"on"`` or ``"both"``: ``torch.compile`` variants (compile time is reported).
        fuse: fold conv+BN for inference (``"on"``, ``"off"``, ``"both"``); applied alike to every model.
        compare: ``None`` or ``"smp"``: add segmentation_models.pytorch's Unet with the same encoder
            (``smp_encoder`` overrides; encoders smp lacks, e.g. ``plain``, compare with ``vgg16``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`unetkit.device.resolve_device`).
        decoders: more of our models, ``config`` with each of these ``decoder_channels`` (``"auto"``,
            ``"mirror"``, ``"light"`` or widths), timed in the same rounds; reported as ``unetkit[<spec>]``, with ratios
            to smp prefixed by that key (``"unetkit[mirror]/train_images_per_s"``).
        phases: any of ``"train"``, ``"infer1"`` (batch-1 latency), ``"inferN"`` (``infer_batch`` throughput).
        profile: add the top operators of one step per model and phase (``torch.profiler``).
        peak_n: side of the peak-sampling matmul (default 2048 on CPU, 8192 on GPU).
        keep_freed: call :func:`~unetkit.bench.keep_freed_memory` first (process-wide, cannot be undone).
        amp: precisions to measure, each as ``--amp`` takes it (``"off"`` = fp32, ``"bf16"``, ``"fp16"`` on
            CUDA, ``"auto"`` = what ``predict`` picks here, :func:`unetkit.device.resolve_amp`); the forward
            pass runs under that autocast, the loss in fp32, fp16 training through a ``GradScaler``.
    """
    config = UNetConfig() if config is None else config
    if config.spatial_dims != 2:
        raise ValueError("unetkit bench measures 2D models (spatial_dims 2); for 3D run "
                         "benchmarks/bench_3d_model.py")
    dev = resolve_device(device)
    if compare not in (None, "smp"):
        raise ValueError(f"compare must be None or 'smp', not {compare!r}")
    bad = set(phases) - set(PHASES)
    if bad:
        raise ValueError(f"unknown phases {sorted(bad)}")
    if min(size, batch, infer_batch, iters) < 1 or warmup < 0:
        raise ValueError("size, batch, infer_batch and iters must be >= 1, warmup >= 0")
    compiles, fuses = on_off(compile, "compile"), on_off(fuse, "fuse")
    dtypes = list(dict.fromkeys(resolve_amp(a, dev) for a in amp))  # a bad or unsupported one fails here
    resolve_layouts(channels_last, dev, "train")  # a bad value fails before any model is built
    keep_freed = keep_freed_memory() if keep_freed and dev.type == "cpu" else False
    num_classes, in_channels, options = config.num_classes, config.in_channels, model_options(config)

    torch.manual_seed(seed)
    bases: dict[str, nn.Module] = {"unetkit": UNet(config).to(dev)}
    names = {"unetkit": f"unetkit UNet(encoder={config.encoder!r}"
                        + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"}
    for spec in decoders:
        key = decoder_label(spec)
        bases[key] = UNet(config.replace(decoder_channels=spec)).to(dev)
        names[key] = (f"unetkit UNet(encoder={config.encoder!r}, decoder_channels="
                      f"{list(bases[key].config.decoder_channels)})")
    if compare == "smp":
        smp_enc = smp_encoder or smp_encoder_for(config.encoder)
        bases["smp"] = build_smp(smp_enc, num_classes, in_channels).to(dev)
        names["smp"] = f"smp Unet({smp_enc!r})"

    g = torch.Generator().manual_seed(seed)
    x_train = torch.randn(batch, in_channels, size, size, generator=g).to(dev)
    y_train = torch.randint(0, max(num_classes, 2), (batch, size, size), generator=g).to(dev)
    x1 = x_train[:1].clone()
    x_n = torch.randn(infer_batch, in_channels, size, size, generator=g).to(dev)

    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "config": {"encoder": config.encoder, "size": size, "batch": batch, "infer_batch": infer_batch,
                   "num_classes": num_classes, "in_channels": in_channels, "iters": iters, "warmup": warmup,
                   "channels_last": channels_last, "compile": compile, "compile_mode": compile_mode,
                   "fuse": fuse, "compare": compare, "device": str(dev), "phases": list(phases),
                   "model_options": options, "model": bases["unetkit"].config.to_dict(),
                   "decoders": [decoder_label(s) for s in decoders],
                   "optimizer": "SGD(lr=1e-3, momentum=0.9)", "loss": "cross_entropy",
                   "amp": [amp_name(d) for d in dtypes],
                   "keep_freed_memory": keep_freed},
        "machine": machine_info(dev),
        "models": {},
        "rows": [],
    }
    for key, m in bases.items():
        report["models"][key] = {"name": names[key], "params": count_params(m),
                                 "forward_flops": count_forward_flops(m, x1)}
        if progress:
            progress(f"{names[key]}: {count_params(m) / 1e6:.1f}M params, "
                     f"{report['models'][key]['forward_flops'] / 1e9:.1f} GFLOP forward per image")

    probe = PeakProbe(dev, peak_n)

    if "train" in phases:
        for key, m in bases.items():
            report["models"][key]["train_flops"] = count_train_flops(m, x_train, y_train)
        variants = []
        for key, base in bases.items():
            for layout in resolve_layouts(channels_last, dev, "train"):
                for comp, dtype in itertools.product(compiles, dtypes):
                    model = copy.deepcopy(base).train()
                    if layout == "channels_last":
                        model = model.to(memory_format=torch.channels_last)
                    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                    run = compile_variant(model, compile_mode) if comp else model
                    scaler = torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None
                    variants.append(Variant(key, layout, comp, False, run, model, layout_tensor(x_train, layout),
                                            y_train, opt, amp=dtype, scaler=scaler))
        if progress:
            progress(f"train: batch {batch}, {size}x{size}, {len(variants)} variants")
        run_rounds(variants, train_step, iters, warmup, dev, probe, progress)
        report["rows"] += [row(v, "train", batch, report["models"][v.model]["train_flops"]) for v in variants]
        del variants

    for phase, x in (("infer1", x1), ("inferN", x_n)):
        if phase not in phases:
            continue
        variants = []
        for key, base in bases.items():
            for fused in fuses:
                eager = copy.deepcopy(base).eval()
                if fused:
                    fuse_conv_bn(eager, x1)
                for layout in resolve_layouts(channels_last, dev, "infer"):
                    model = eager if layout == "nchw" else copy.deepcopy(eager).to(
                        memory_format=torch.channels_last)
                    for comp, dtype in itertools.product(compiles, dtypes):
                        run = compile_variant(model, compile_mode, inference=True) if comp else model
                        variants.append(Variant(key, layout, comp, fused, run, model, layout_tensor(x, layout),
                                                amp=dtype))
        if progress:
            progress(f"{phase}: batch {x.shape[0]}, {size}x{size}, {len(variants)} variants")
        run_rounds(variants, infer_step, iters, warmup, dev, probe, progress)
        report["rows"] += [row(v, phase, x.shape[0], report["models"][v.model]["forward_flops"] * x.shape[0])
                           for v in variants]
        del variants

    report["peak"] = probe.summary()
    peak, conv_peak = report["peak"]["gflops"], report["peak"].get("conv_gflops", math.nan)
    for r in report["rows"]:
        r["frac_peak"] = r["gflops"] / peak if peak > 0 else math.nan
        r["frac_conv_peak"] = r["gflops"] / conv_peak if conv_peak > 0 else math.nan
    report["best"] = _best(report["rows"])
    report["ratios"] = _ratios(report)
    report["goals"] = _goals(report)
    if profile:
        report["profile"] = {key: {phase: profile_top_ops(base, phase, x_train, y_train, x1, x_n,
                                                          channels_last, dev, fused=fuses[-1])
                                   for phase in phases} for key, base in bases.items()}
    return report


def _best(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and phase, the fastest variant's summary."""
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cur = best.setdefault(r["model"], {}).get(r["phase"])
        if cur is None or r["median_s"] < cur["median_s"]:
            best[r["model"]][r["phase"]] = {k: r[k] for k in (
                "layout", "amp", "compiled", "fused", "median_s", "min_s", "times_s", "flops_per_step",
                "images_per_s", "gflops", "frac_peak", "frac_conv_peak")}
    return best


def _ratios(report: dict[str, Any]) -> dict[str, float]:
    """Ours / smp per phase, best variant of each: per-FLOP throughput and images/s.

    ``*_per_flop`` uses the medians; ``*_per_flop_paired`` is the median over rounds of the ratio within each
    round (both measured back to back); ``*_per_flop_min`` uses each variant's fastest round. On a quiet
    machine the three agree; when they differ the machine was busy and the paired figure is the fairest.
    ``*_images_per_s`` and ``*_images_per_s_paired`` are the same per image. Models of ``decoders`` get the
    same ratios, their keys prefixed by the model's (``"unetkit[mirror]/train_per_flop"``).
    """
    best = report["best"]
    if "smp" not in best:
        return {}
    out = {}
    for model in best:
        if model == "smp":
            continue
        prefix = "" if model == "unetkit" else f"{model}/"
        for phase in best[model]:
            if phase in best["smp"]:
                a, b = best[model][phase], best["smp"][phase]
                flop_ratio = a["flops_per_step"] / b["flops_per_step"]  # same batch for both
                paired = median([tb / ta for ta, tb in zip(a["times_s"], b["times_s"])])
                out[f"{prefix}{phase}_per_flop"] = a["gflops"] / b["gflops"]
                out[f"{prefix}{phase}_per_flop_paired"] = paired * flop_ratio
                out[f"{prefix}{phase}_per_flop_min"] = b["min_s"] / a["min_s"] * flop_ratio
                out[f"{prefix}{phase}_images_per_s"] = a["images_per_s"] / b["images_per_s"]
                out[f"{prefix}{phase}_images_per_s_paired"] = paired
    return out


def _goals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each of :data:`GOALS` with its measured value and whether it is met (``None``: not measured)."""
    best = report["best"]["unetkit"]
    values = {"train_per_flop_vs_smp": report["ratios"].get("train_per_flop"),
              "train_images_per_s_vs_smp": report["ratios"].get("train_images_per_s"),
              "train_frac_peak": best.get("train", {}).get("frac_peak"),
              "infer_b1_frac_peak": best.get("infer1", {}).get("frac_peak")}
    return {k: {"target": GOALS[k], "value": v, "met": None if v is None else bool(v >= GOALS[k])}
            for k, v in values.items()}
