"""Which device a run uses, and the process-wide switches that go with it (set by entry points only)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from ganlib.errors import ConfigError, DeviceMemoryError

log = logging.getLogger("ganlib")

T = TypeVar("T")


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
    return isinstance(err, torch.cuda.OutOfMemoryError) or (isinstance(err, RuntimeError)
                                                             and "MPS backend out of memory" in str(err))


def device_memory_detail(err: BaseException, device: torch.device | None = None) -> str:
    """What ran out, in a few words: the device (default: the one ``err`` names), its size where known, and how
    much more torch asked for."""
    if device is None:
        gpu = re.search(r"GPU (\d+)", str(err))
        device = (torch.device("cuda", int(gpu.group(1))) if gpu else torch.device("cuda")) if isinstance(
            err, torch.cuda.OutOfMemoryError) else torch.device("mps")
    where = str(device)
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # the device may be in no state to answer
            props = torch.cuda.get_device_properties(device)
            where = f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", str(err))
    return where + (f", asking for {asked.group(1)} more" if asked else "")


def fitting_batches(total: int, batch_size: int, work: Callable[[int, int], T], what: str, flag: str,
                    fitted: dict[str, int] | None = None) -> Iterator[T]:
    """``work(start, stop)`` over ``range(total)`` in order, ``batch_size`` at a time; where a batch runs the GPU
    (or MPS) out of memory, that batch is halved, with a warning saying how to start there (``flag``, with
    ``{n}`` for the size: ``--batch-size {n}``), and tried again, down to one image, then ``DeviceMemoryError``.
    Any other error is raised as it is.

    ``what`` says what is being done, for the messages (``evaluation: step 500 ema samples``). ``fitted``: a
    dict that carries the batch size that fitted (key ``batch_size``) from one call to the next (the seeds and
    checkpoints of one evaluation), so each does not run out of memory, and say so, again.
    """
    if fitted is not None:
        batch_size = min(batch_size, fitted.get("batch_size", batch_size))
    start = 0
    while start < total:
        stop = min(start + batch_size, total)
        try:
            result = work(start, stop)
        except Exception as err:  # out of device memory: a smaller batch; anything else as it is
            if not is_out_of_device_memory(err):
                raise
            failed, where = stop - start, device_memory_detail(err)
            if failed == 1:
                raise DeviceMemoryError(f"{what}: out of memory on {where} even one image at a time: free the GPU "
                                        "(another process may hold its memory) or use --device cpu") from None
            batch_size = failed // 2
            log.warning("%s: out of memory on %s in a batch of %d; going on in batches of %d (to start there: %s)",
                        what, where, failed, batch_size, flag.format(n=batch_size))
            if fitted is not None:
                fitted["batch_size"] = batch_size
        else:
            yield result
            start = stop
            continue
        if torch.cuda.is_initialized():  # out of the handler: the failed batch's tensors are free to go back
            torch.cuda.empty_cache()


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
