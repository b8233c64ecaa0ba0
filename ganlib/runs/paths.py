"""Where a run's files live, and which device it runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ganlib.errors import ConfigError


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``<out>/<run-id>/``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.parquet"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.parquet"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; explicit names are checked, not silently replaced."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name!r} does not exist ({torch.cuda.device_count()} CUDA devices); use cuda:0..")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {name!r} requested but MPS is not available here; use --device cpu or auto")
    return device
