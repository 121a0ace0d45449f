"""``DataConfig``: every option of the data in one dataclass, the single source of truth.

What to read (a built-in name or a folder), which classes and channels, the ignored mask value, how the
validation split is drawn, how masks are read and cached, and how volumes become network input (slice
axis, 2.5D context, in-plane spacing). ``TrainConfig.data`` holds one; a checkpoint stores it once (in its
``config``); :func:`unetkit.data.open_datasets` builds the splits from it for training, ``plan``,
``evaluate``, ``predict`` and ``export``; and the data flags of those commands are generated from the
fields below (help and choices live in each field's metadata, the flag name in ``flag`` where it differs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..fields import check_value, option

#: The mask value excluded from losses and metrics unless a data set says otherwise.
IGNORE_INDEX = 255
#: The share of a folder (of its cases, for volumes) held out for validation when it has no ``val/``.
VAL_FRACTION = 0.2
#: Fields that are flags under another name (``--data DIR`` sets ``source``).
FLAG_NAMES = {"source": "data"}


@dataclass
class DataConfig:
    """Where the images come from and how they are read, split and turned into network input.

    ``options`` go to a built-in dataset (e.g. ``{"size": 64, "num_samples": 32}`` for ``shapes``).
    ``split_seed=None`` draws the validation split with the run's ``seed``.
    """

    source: str = option("ct-chest", "a built-in dataset (ct-chest, shapes) or a folder with images/ and masks/")
    num_classes: int | None = option(None, "number of classes (default: from the masks or classes.yaml)")
    in_channels: int | None = option(None, "image channels (default: from the images)")
    ignore_index: int = option(IGNORE_INDEX, "mask value excluded from loss and metrics")
    val_fraction: float = option(VAL_FRACTION, "fraction held out for validation when the folder has no val/ "
                                               "(volume folders: a fraction of the cases)")
    split_seed: int | None = option(None, "seed of the validation split (default: the run's --seed)")
    binary: bool | None = option(None, "read masks as binary 0/255 (default: when every mask holds only 0 and "
                                       "255)")
    cache: bool | None = option(None, "keep decoded images in memory (default: when they fit in 1 GB)")
    context: int = option(0, "volumes: neighbouring slices on each side stacked as extra input channels (2.5D)")
    slice_axis: int | None = option(None, "volumes: voxel axis 0, 1 or 2 to cut slices along (default: each "
                                          "scan's coarsest-spacing axis)")
    spacing: tuple[float, float] | None = option(None, "volumes: in-plane spacing in mm to resample slices to "
                                                       "(default: planned from the cases' spacings)")
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of a built-in dataset"})

    def __post_init__(self) -> None:
        self.options = dict(self.options or {})

    def validate(self, where: str = "config") -> DataConfig:
        """Range checks that types alone do not catch (errors name the option and ``where``); returns self."""
        for name in ("num_classes", "in_channels"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{where}: {name} must be >= 1, not {v}")
        if not (math.isfinite(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"{where}: val_fraction must be in [0, 1), not {self.val_fraction}")
        if not 0 <= self.ignore_index < 2**31:
            raise ValueError(f"{where}: ignore_index must be a mask value >= 0, not {self.ignore_index}")
        if self.context < 0:
            raise ValueError(f"{where}: context must be >= 0, not {self.context}")
        if self.slice_axis is not None and self.slice_axis not in (0, 1, 2):
            raise ValueError(f"{where}: slice_axis must be 0, 1 or 2 (a voxel axis), not {self.slice_axis}")
        if self.spacing is not None:
            sp = tuple(float(v) for v in self.spacing)
            sp = sp * 2 if len(sp) == 1 else sp
            if len(sp) != 2 or not all(math.isfinite(v) and v > 0 for v in sp):
                raise ValueError(f"{where}: spacing takes one or two positive numbers (mm), not "
                                 f"{list(self.spacing)}")
            self.spacing = sp  # type: ignore[assignment]
        if not isinstance(self.options, dict):
            raise ValueError(f"{where}: data options must be a mapping")
        return self

    @property
    def volume_options(self) -> dict[str, Any]:
        """The volume settings that differ from their defaults (none for 2D and built-in data)."""
        opts: dict[str, Any] = {}
        if self.context:
            opts["context"] = self.context
        if self.slice_axis is not None:
            opts["slice_axis"] = self.slice_axis
        if self.spacing is not None:
            opts["spacing"] = self.spacing
        return opts

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["spacing"] is not None:
            d["spacing"] = list(d["spacing"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str, where: str = "data config") -> DataConfig:
        """Build from a mapping (or a bare source string, as configs of earlier versions wrote ``data: DIR``),
        checking every option's type and range; unknown keys are an error naming them and ``where``."""
        if isinstance(d, str):
            d = {"source": d}
        d = dict(d)
        if "data_options" in d:  # the name of earlier versions
            d["options"] = d.pop("data_options")
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise ValueError(f"{where}: unknown data option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(field_names())}")
        import typing

        hints = typing.get_type_hints(cls)
        values = {k: check_value(k, v, hints[k], where) for k, v in d.items() if k != "options"}
        if "options" in d:
            if not isinstance(d["options"] or {}, dict):
                raise ValueError(f"{where}: data options must be a mapping")
            values["options"] = dict(d["options"] or {})
        return cls(**values).validate(where)

    def replace(self, **changes: Any) -> DataConfig:
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(DataConfig)]
