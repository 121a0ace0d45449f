"""Helpers of the benchmark scripts whose numbers go into the docs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_3d_model import paired_ratio  # noqa: E402


def test_paired_ratio_pairs_rounds_not_medians() -> None:
    # Round 4 is a slow spell for both models: pairing compares it with itself.
    ours = [1.0, 1.0, 1.0, 4.0]
    theirs = [1.1, 1.2, 1.0, 4.8]
    q = paired_ratio(ours, theirs)
    # per-round ratios sorted: 1.0, 1.1, 1.2, 1.2 -> median 1.15, inclusive quartiles 1.075 and 1.2
    assert q["median"] == pytest.approx(1.15)
    assert q["q1"] == pytest.approx(1.075)
    assert q["q3"] == pytest.approx(1.2)
    assert paired_ratio([2.0], [3.0]) == {"median": 1.5, "q1": 1.5, "q3": 1.5}


def test_loss_trace_means_windows_of_steps() -> None:
    from bench_datasets import loss_trace

    losses = [4.0, 2.0, 1.0, 1.0, 0.5]
    # windows of 2 steps: (4+2)/2 at step 2, (1+1)/2 at step 4, the short last window 0.5 at step 5
    assert loss_trace(losses, every=2) == [[2, 3.0], [4, 1.0], [5, 0.5]]
    assert loss_trace(losses, every=100) == [[5, 1.7]]
    assert loss_trace([], every=100) == []
