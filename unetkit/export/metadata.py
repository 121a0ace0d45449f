"""The unetkit metadata of an exported model: what ``unetkit predict`` needs to run an ``.onnx`` file.

Class names and colours, the normalisation (mean, std, clip), channels, the training patch size (the
tile size of inference) and the model config travel in the ONNX ``metadata_props`` as JSON strings, so an
exported file is self-describing (no checkpoint needed next to it) and preprocessed exactly as in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, DataInfo

#: ``metadata_props`` keys written by :func:`~unetkit.export.export_onnx` (values are JSON strings).
METADATA_KEYS: tuple[str, ...] = ("unetkit_version", "num_classes", "in_channels", "class_names", "class_colors",
                                  "mean", "std", "clip", "patch_size", "ignore_index", "volume", "flip_axes",
                                  "model_config")


def onnx_metadata(data_info: DataInfo, model_config: dict[str, Any] | None) -> dict[str, str]:
    """The ``metadata_props`` entries (JSON strings) that let ``unetkit predict`` run an ``.onnx`` file."""
    from .. import __version__

    d = data_info.to_dict()
    values: dict[str, Any] = {
        "unetkit_version": __version__, "num_classes": d["num_classes"], "in_channels": d["in_channels"],
        "class_names": d["class_names"], "class_colors": d["class_colors"], "mean": d["mean"], "std": d["std"],
        "clip": d["clip"], "patch_size": d["patch_size"], "ignore_index": d["ignore_index"],
        "volume": d["volume"], "flip_axes": d["flip_axes"], "model_config": model_config,
    }
    return {k: json.dumps(v) for k, v in values.items()}


def set_metadata(model_proto: Any, metadata: dict[str, str]) -> None:
    """Replace ``model_proto``'s ``metadata_props`` entries named in ``metadata`` (others are kept)."""
    keep = [p for p in model_proto.metadata_props if p.key not in metadata]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in metadata.items():
        model_proto.metadata_props.add(key=k, value=v)


def parse_metadata(props: dict[str, str], source: str = "model") -> tuple[DataInfo, dict[str, Any] | None]:
    """``(DataInfo, model_config)`` from the ``metadata_props`` of a file written by ``export_onnx``."""
    missing = [k for k in ("num_classes", "in_channels", "mean", "std") if k not in props]
    if missing:
        raise CheckpointError(f"{source}: no unetkit metadata ({', '.join(missing)} missing); "
                              "export the model with 'unetkit export' so class names and normalisation travel with it")
    try:
        v = {k: json.loads(s) for k, s in props.items() if k in METADATA_KEYS}
        n = int(v["num_classes"])
        from ..data.classes import default_colors, default_names

        info = DataInfo.from_dict({
            "num_classes": n, "in_channels": int(v["in_channels"]),
            "class_names": v.get("class_names") or default_names(n),
            "class_colors": v.get("class_colors") or default_colors(n),
            "mean": v["mean"], "std": v["std"], "ignore_index": v.get("ignore_index", 255),
            "clip": v.get("clip"), "patch_size": v.get("patch_size"), "volume": v.get("volume"),
            "flip_axes": v.get("flip_axes"),
        })
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{source}: unreadable unetkit metadata ({e}); re-export the model") from e
    return info, v.get("model_config")


def read_onnx_metadata(path: str | Path) -> tuple[DataInfo, dict[str, Any] | None]:
    """Read the data description and model config stored in an exported ``.onnx`` file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props}, str(path))
