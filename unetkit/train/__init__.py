"""Training: :func:`fit` / :class:`Trainer` over a :class:`TrainConfig`, single process or DDP."""

from .config import TrainConfig
from .trainer import RunResult, Trainer, TrainingError, fit

__all__ = ["RunResult", "TrainConfig", "Trainer", "TrainingError", "fit"]
