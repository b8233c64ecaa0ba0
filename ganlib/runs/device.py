"""Which device a run uses, and the process-wide switches that go with it (set by entry points only)."""

from __future__ import annotations

import logging

import torch

from ganlib.errors import ConfigError

log = logging.getLogger("ganlib")


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


def configure_backends(precision: str, device: torch.device) -> None:
    """Process-wide speed switches for a training process: TF32 matmuls on CUDA with bf16 autocast.

    Entry points call this (the training task, the torchrun worker, the benchmarks), never the library:
    a notebook that imports ganlib keeps its own settings.
    """
    if precision in ("bf16", "auto") and device.type == "cuda":  # auto is bf16 on CUDA (ganlib.training.probe)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
