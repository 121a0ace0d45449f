"""Applying a trained model: :class:`Predictor` (a model and everything it needs to preprocess), the
sliding-window :func:`predict` underneath it, volumes, folders, and the fast-inference policy.

``inference/`` is where a trained model meets new data: ``unetkit predict`` and ``evaluate``, training's
validation, the export checks and the benchmarks all go through it, so they tile, pad and cast alike.
"""

from ..export.runtime import OnnxModel
from .folder import FolderResult
from .policy import compile_for_inference, preferred_channels_last, prepare_inference
from .predictor import Predictor
from .sliding import (
    MIN_WEIGHT,
    TTA_FLIPS,
    Model,
    gaussian_weight,
    model_stride,
    predict,
    tile_starts,
    tta_flips,
)
from .volume import check_volume_model, predict_volume

__all__ = [
    "MIN_WEIGHT",
    "TTA_FLIPS",
    "FolderResult",
    "Model",
    "OnnxModel",
    "Predictor",
    "check_volume_model",
    "compile_for_inference",
    "gaussian_weight",
    "model_stride",
    "predict",
    "predict_volume",
    "preferred_channels_last",
    "prepare_inference",
    "tile_starts",
    "tta_flips",
]
