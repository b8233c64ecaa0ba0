"""Which device a run uses, and the process-wide switches that go with it (set by entry points only)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

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


def float64_device(device: torch.device | str) -> torch.device:
    """Where float64 work meant for ``device`` runs: there, or on the CPU for Apple's MPS, which has no float64
    (the evaluation's statistics, k-NN and memorisation distances are float64)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def is_out_of_device_memory(err: BaseException) -> bool:
    """Whether ``err`` is a GPU's (CUDA's ``OutOfMemoryError``) or Apple's MPS's out-of-memory error."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError)
                                                        and "MPS backend out of memory" in str(err))


def device_memory_detail(err: BaseException, device: torch.device | None = None) -> str:
    """What ran out, in a few words: the device (default: the one ``err`` names), its size where known, and how
    much more torch asked for."""
    if device is None:
        gpu = re.search(r"GPU (\d+)", str(err))
        device = (torch.device("cuda", int(gpu.group(1))) if gpu else torch.device("cuda")) if isinstance(
            err, torch.OutOfMemoryError) else torch.device("mps")
    where = str(device)
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # the device may be in no state to answer
            props = torch.cuda.get_device_properties(device)
            where = f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", str(err))
    return where + (f", asking for {asked.group(1)} more" if asked else "")


def configure_backends(precision: str, device: torch.device) -> None:
    """Process-wide speed switches for a training process on CUDA: cuDNN's autotuner (a GAN's shapes never
    change) and, with bf16 autocast, TF32 matmuls. Nothing changes on a CPU.

    Entry points call this (the torchrun worker, the benchmarks) or ``training_backends`` (the training
    task, whose process evaluates next), never the library: a notebook that imports ganlib keeps its own.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if precision in ("bf16", "auto"):  # auto: bf16 on GPUs with bf16 units, which are the ones with TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def training_backends(precision: str, device: torch.device) -> Iterator[None]:
    """``configure_backends`` for the length of a block, the process's own switches restored after it: the
    pipeline evaluates in the process it trained in, and must score as ``flows/evaluate.py`` does alone
    (full fp32 matmuls, not TF32), or rows of one checkpoint would differ by where they were computed."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    configure_backends(precision, device)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved
