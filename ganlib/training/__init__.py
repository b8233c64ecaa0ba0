"""Adversarial training: the loop (``loop``), what a checkpoint holds (``state``), one update (``step``),
losses, augmentation, health checks, and the process context and launcher for data-parallel runs."""

from ganlib.training.loop import TrainResult, train
from ganlib.training.state import TrainingState

__all__ = ["TrainResult", "TrainingState", "train"]
