"""Feeding training batches from a prepared store, resident on the device or streamed from disk.

A store that fits the memory budget is copied to the device once and batches are indexed there,
as before (no per-step host work). A larger store stays memory-mapped on disk: a background
thread gathers the next batch's rows while the current step runs, copies them into pinned host
memory and on to the device on a side CUDA stream, so the step finds its batch ready.

Either way the batches are exactly those ``BatchOrder`` gives, in that order, so training stays
bit-reproducible and resumable: the run's own order object advances (its state is what
checkpoints save), and streaming looks ahead with a copy of it on the CPU.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ganlib.errors import ConfigError

log = logging.getLogger("ganlib")

MIB = 1 << 20


def check_batch_size(batch_size: int, num_images: int) -> None:
    """``ConfigError`` (one line) when a batch of ``batch_size`` cannot be drawn from ``num_images`` images."""
    if num_images < 2:
        raise ConfigError(f"train.batch_size: the dataset has {num_images} usable image(s); a GAN needs at least 2 "
                          "(a batch of at least 2), so add images (the manifest lists any that were skipped)")
    if batch_size > num_images:
        raise ConfigError(f"train.batch_size: {batch_size} is larger than the dataset ({num_images} images); "
                          f"use --batch-size {num_images} or less")


class BatchOrder:
    """Which images make each batch: a fresh permutation per epoch, derived from (seed, epoch).

    The state is just (epoch, position), so a resumed run sees exactly the batches the
    uninterrupted run would have seen. The last incomplete batch of an epoch is dropped, keeping
    every batch (and its batch-norm statistics) the same size.

    Data-parallel: with ``world_size`` W processes, ``batch_size`` is the global batch and ``next()``
    returns rank ``rank``'s slice ``[rank*B/W, (rank+1)*B/W)`` of it; the state is the same on all ranks.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        check_batch_size(batch_size, num_items)
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size: {batch_size} does not split over {world_size} training "
                              f"processes; use a multiple of {world_size}")
        self.num_items, self.batch_size, self.seed, self.device = num_items, batch_size, seed, device
        self.rank, self.local_size = rank, batch_size // world_size
        self.batches_per_epoch = num_items // batch_size
        self.epoch, self.position = 0, 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=gen).to(self.device)

    def next(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:  # (>=: a saved position is never past an epoch's end)
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._perm = self._permutation()
        start = self.position * self.batch_size + self.rank * self.local_size
        self.position += 1
        return self._perm[start: start + self.local_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None



def default_budget_bytes(device: torch.device) -> int:
    """Half the device's free memory (CUDA), or half the host's available memory otherwise.

    On CUDA, free counts what this process's caching allocator holds unused (a rolled-back or retried
    attempt's tensors, freed but kept): else each retry would see less and stream a store that fits."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) // 2
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2


class BatchSource:
    """Batches of a uint8 store (N, C, H, W) on ``device``, in the order a ``BatchOrder`` gives.

    ``budget_mb``: largest store kept resident on the device (None: ``default_budget_bytes``);
    0 always streams. ``next_batch(order)`` returns the batch, uint8 (batch, C, H, W) on the device,
    and its indices into the store (on the order's device), e.g. to gather its labels.

    ``mirror``: the order runs over 2N items, item N + i being image i flipped left-right (StyleGAN2-ADA's
    --mirror), so each epoch shows every image once as it is and once mirrored.

    ``close()`` (or ``with BatchSource(...) as source:``) stops the prefetch thread and lets go of the device
    copy and pinned buffer: a long-lived process (``flows/serve.py``) trains run after run.
    """

    def __init__(self, images: np.ndarray, device: torch.device, budget_mb: int | None = None,
                 mirror: bool = False):
        self.images, self.device, self.mirror = images, torch.device(device), mirror
        budget = default_budget_bytes(self.device) if budget_mb is None else budget_mb * MIB
        self.resident, self.closed = images.nbytes <= budget, False
        self._data: torch.Tensor | None = None
        if self.resident:
            self._data = torch.from_numpy(np.array(images)).to(self.device)  # read and copied once
        else:
            log.info("data: store of %.0f MiB exceeds the %.0f MiB device budget; streaming batches "
                     "from disk",
                     images.nbytes / MIB, budget / MIB)
            # The thread's current CUDA device is the run's: else its stream switches make a context on GPU 0
            # for every data-parallel rank
            on_cuda = self.device.type == "cuda"
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="ganlib-prefetch",
                initializer=torch.cuda.set_device if on_cuda else None,
                initargs=(self.device.index if self.device.index is not None else torch.cuda.current_device(),)
                if on_cuda else ())
            self._pinned: torch.Tensor | None = None
            self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            self._ahead: Any = None  # CPU copy of the order, one batch ahead of the run's
            self._pending: Future | None = None
            self._pending_state: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __enter__(self) -> BatchSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the prefetch thread (waiting for a batch it is loading) and drop the device copy; idempotent."""
        if not self.resident:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending, self._pinned = None, None
        self._data, self.closed = None, True

    def next_batch(self, order: BatchOrder) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance ``order`` by one batch; return that batch, uint8 (batch, C, H, W) on the device, and its indices."""
        if self.closed:
            raise RuntimeError("BatchSource.next_batch: the source is closed")
        if self._data is not None:
            indices = order.next()
            if not self.mirror:
                return self._data[indices], indices
            rows = indices % len(self.images)
            batch = self._data[rows]
            flipped = (indices != rows).view(-1, 1, 1, 1)  # items N..2N-1; torch.where: no host sync
            return torch.where(flipped, batch.flip(-1), batch), rows
        state = order.state_dict()
        if self._pending is None or self._pending_state != state:  # first batch, or the order was reset
            self._ahead = copy.copy(order)
            self._ahead.device = torch.device("cpu")
            self._ahead.load_state_dict(state)
            self._pending_indices = self._ahead.next()
            self._pending = self._pool.submit(self._load, self._pending_indices)
        indices = order.next()
        batch = self._pending.result()
        self._pending_state = self._ahead.state_dict()  # == order's state now
        self._pending_indices = self._ahead.next()
        self._pending = self._pool.submit(self._load, self._pending_indices)
        if self._stream is not None:  # the batch was made on the side stream; the step uses it on this one
            batch.record_stream(torch.cuda.current_stream(self.device))
        return batch, indices % len(self.images) if self.mirror else indices

    def _load(self, indices: torch.Tensor) -> torch.Tensor:
        """Gather rows from the memory map (in file order, for locality) onto the device; runs in the
        prefetch thread."""
        idx = indices.numpy()
        flipped = idx >= len(self.images)  # only with mirror
        idx = idx % len(self.images)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
        rows[order] = self.images[idx[order]]
        if flipped.any():
            rows[flipped] = rows[flipped][..., ::-1]
        host = torch.from_numpy(rows)
        if self._stream is None:
            return host.to(self.device)
        if self._pinned is None or self._pinned.shape != host.shape:
            self._pinned = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
        self._pinned.copy_(host)
        with torch.cuda.stream(self._stream):
            batch = self._pinned.to(self.device, non_blocking=True)
        # The pinned buffer is reused for the next batch, so this copy must finish first; waiting
        # here blocks only this thread, while the training step runs on the main stream.
        self._stream.synchronize()
        return batch
