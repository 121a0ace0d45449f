"""Benchmarks: training and inference speed of a UNet against the machine's matmul peak and a peer library.

Everything here returns plain dicts (JSON-ready); ``unetkit bench`` and the scripts in ``benchmarks/`` print
and save them. The numbers are built to survive a noisy, shared machine:

* Every compared variant (our model, segmentation_models.pytorch's Unet, each memory layout, compiled or
  not) is measured *round-robin*: round ``r`` times one iteration of every variant, in a rotating order,
  so slow spells of the machine hit them all alike. Results are medians over rounds after warm-up.
* The fp32 matmul peak (a large ``torch.mm``) and a reference convolution are sampled in every round of the
  same run, and achieved GFLOP/s are reported as fractions of their medians.
* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts two): forward FLOPs
  per image, and the FLOPs of one whole training step (forward and backward) at the benchmark's batch.
* Peak memory is measured in one extra, untimed step per variant.

One job per module: :mod:`.machine` (machine info, malloc tuning, threads, peak memory), :mod:`.peak`
(matmul and convolution peak probes), :mod:`.flops`, :mod:`.harness` (variants, round-robin rounds, rows),
:mod:`.model_suite` (our UNet against smp), :mod:`.suites` (metrics and encoders), :mod:`.profile` and
:mod:`.format` (tables). Timing is :mod:`unetkit.timing`'s, devices are
:func:`unetkit.device.resolve_device`'s, models are ``UNet(UNetConfig(...))``, and the inference policy
(:func:`prepare_inference`, :func:`preferred_channels_last`) is :mod:`unetkit.inference`'s.
"""

from __future__ import annotations

from ..inference import preferred_channels_last, prepare_inference
from .flops import count_forward_flops, count_params, count_train_flops
from .format import format_encoders_markdown, format_metrics, format_report
from .harness import PHASES, SCHEMA_VERSION
from .machine import PeakMemory, keep_freed_memory, machine_info, num_threads
from .model_suite import GOALS, build_smp, run_bench, smp_encoder_for
from .peak import PeakProbe, matmul_peak
from .profile import profile_top_ops
from .suites import bench_encoders, bench_metrics

__all__ = [
    "GOALS", "PHASES", "SCHEMA_VERSION", "PeakMemory", "PeakProbe", "bench_encoders", "bench_metrics",
    "build_smp", "count_forward_flops", "count_params", "count_train_flops", "format_encoders_markdown",
    "format_metrics", "format_report", "keep_freed_memory", "machine_info", "matmul_peak", "num_threads",
    "preferred_channels_last", "prepare_inference", "profile_top_ops", "run_bench", "smp_encoder_for",
]
