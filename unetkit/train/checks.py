"""Training options that pass a type check and still produce garbage, refused by name.

``--lr nan`` trains nothing, ``--rotate nan`` is silently ignored, negative ``--class-weights`` make the
loss negative without bound (and the run marks it "best"), ``--seed 1e23`` overflows the seeding of
numpy. :func:`check_training_values` refuses each with the option, its value and the allowed range; it
covers the non-data options of :class:`unetkit.train.TrainConfig` (the range checks of
``TrainConfig.validate`` that comparisons with NaN slip through).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: Largest seed every random generator seeded from it accepts (numpy takes 0 .. 2**32 - 1).
MAX_SEED = 2**32 - 1
MAX_ROTATE = 180.0
#: Non-data float options, with their allowed range (low, high, low inclusive).
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, True), "rotate": (0.0, MAX_ROTATE, True),
    "color_jitter": (0.0, math.inf, True), "grad_clip": (0.0, math.inf, True),
}
#: Fields with checks of their own (the data's :meth:`DataConfig.validate`, the model's config).
DATA_FIELDS = ("data", "model")


def _range_text(low: float, high: float, inclusive: bool) -> str:
    lo = f"{'>=' if inclusive else '>'} {low:g}"
    return f"a finite number {lo}" if math.isinf(high) else f"a number in [{low:g}, {high:g}]"


def check_training_values(cfg: Any, where: str = "config") -> None:
    """Refuse NaN, infinity and out-of-range values of ``cfg``'s non-data options (a ``TrainConfig``).

    Errors read ``<where>: <option> must be <range>, not <value>`` (the command line names the flag).
    """
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in DATA_FIELDS or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):  # every float option: NaN/inf never make sense
            raise ValueError(f"{where}: {f.name} must be a finite number, not {v}")
        if isinstance(v, (tuple, list)) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
            raise ValueError(f"{where}: {f.name} must be finite numbers, not {list(v)}")
    for name, (low, high, inclusive) in FLOAT_RANGES.items():
        v = getattr(cfg, name)
        if v is not None and not ((low <= v if inclusive else low < v) and v <= high):
            raise ValueError(f"{where}: {name} must be {_range_text(low, high, inclusive)}, not {v}")
    weights = cfg.class_weights
    if weights is not None and (min(weights, default=0.0) < 0 or not any(w > 0 for w in weights)):
        raise ValueError(f"{where}: class_weights must be numbers >= 0, at least one > 0, not {list(weights)}")
    if cfg.num_workers is not None and cfg.num_workers < 0:
        raise ValueError(f"{where}: num_workers must be an integer >= 0, not {cfg.num_workers}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ValueError(f"{where}: seed must be an integer in [0, {MAX_SEED}], not {cfg.seed}")
