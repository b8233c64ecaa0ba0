"""Streaming ``.npy`` files and an ordered, bounded parallel map: preparation's plumbing.

Preparation never holds a dataset in memory. Chunks of decoded images are appended to ``.npy``
files with ordinary sequential writes (not through a memory map: dirty pages of a map count in
the process's resident set until it is unmapped, while written pages belong to the page cache),
hashed as they go, and read back the same way. ``np.load(path, mmap_mode="r")`` opens the result.

Decoding runs in worker processes through ``map_ordered``, which keeps at most ``window`` chunks
in flight, so memory is bounded by ``window`` x chunk size whatever the dataset's size.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ganlib.errors import DataError

_MAGIC = b"\x93NUMPY\x01\x00"
_ALIGN = 64  # numpy aligns the data of .npy files to 64 bytes

M = TypeVar("M")
R = TypeVar("R")


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, length: int | None = None) -> bytes:
    """A version 1.0 .npy header; padded to ``length`` bytes (so it can be rewritten in place)."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (  # noqa: UP031 (numpy's own layout)
        np.lib.format.dtype_to_descr(np.dtype(dtype)), tuple(int(d) for d in shape))
    prefix = len(_MAGIC) + 2
    if length is None:
        length = -(-(prefix + len(text) + 1) // _ALIGN) * _ALIGN
    pad = length - prefix - len(text) - 1
    if pad < 0:
        raise ValueError(f"npy header for shape {shape} does not fit in {length} bytes")
    return _MAGIC + (length - prefix).to_bytes(2, "little") + (text + " " * pad + "\n").encode("latin1")


class NpyWriter:
    """Append rows to ``path``, an .npy array (capacity, *row_shape) of ``dtype``, in order.

    ``finish(rows)`` rewrites the header for the number of rows actually written (fewer than the
    capacity when images were skipped), truncates the file, fsyncs it and returns the sha256 of
    the data bytes (what ``load_store`` verifies).
    """

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...], dtype: Any):
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.rows = 0
        self._header = _npy_header((capacity, *self.row_shape), self.dtype)
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")  # noqa: SIM115  (closed in finish/close)
        self._file.write(self._header)

    def write(self, rows: np.ndarray) -> None:
        """Append rows of shape (n, *row_shape) (cast to the writer's dtype, C order)."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} written to a {self.row_shape} array")
        data = np.ascontiguousarray(rows, dtype=self.dtype).data
        self._file.write(data)
        self._hash.update(data)
        self.rows += len(rows)

    def finish(self) -> str:
        """Fix the header to the rows written, flush to disk; returns the data's sha256 (hex)."""
        self._file.seek(0)
        self._file.write(_npy_header((self.rows, *self.row_shape), self.dtype, len(self._header)))
        self._file.truncate(len(self._header) + self.rows * self.row_bytes)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-ordered .npy file, from its header alone."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; expected C order")
        return tuple(shape), dtype, f.tell()


def iter_npy_rows(path: Path, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """The rows of a C-ordered .npy file, in chunks, read with plain reads (bounded memory)."""
    shape, dtype, offset = npy_layout(path)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, shape[0], rows_per_chunk):
            n = min(rows_per_chunk, shape[0] - start)
            yield np.frombuffer(f.read(n * row_bytes), dtype=dtype).reshape(n, *shape[1:])


def read_npy_rows(path: Path, indices: Iterable[int]) -> np.ndarray:
    """Selected rows of a C-ordered .npy file, (len(indices), *row_shape), with plain reads."""
    shape, dtype, offset = npy_layout(path)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    rows = []
    with open(path, "rb") as f:
        for i in indices:
            f.seek(offset + int(i) * row_bytes)
            rows.append(np.frombuffer(f.read(row_bytes), dtype=dtype).reshape(shape[1:]))
    return np.stack(rows) if rows else np.empty((0, *shape[1:]), dtype=dtype)


def sha256_npy_data(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """sha256 of the data bytes of an .npy file (what ``NpyWriter.finish`` returned), streamed."""
    _, _, offset = npy_layout(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


_PARENTS_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_CAN_HOLD_SIGNALS = hasattr(signal, "pthread_sigmask")  # not on Windows, where workers are spawned, not forked
_STOP_DEADLINE_S = 5.0
_POLL_S = 0.5  # how often a wait for a result looks whether a worker has died
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _pool_workers(pool: ProcessPoolExecutor) -> list:
    """The worker processes ``pool`` holds now (it drops a dead one, and all of them at shutdown)."""
    return list((getattr(pool, "_processes", None) or {}).values())


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT in this thread while workers are forked.

    A forked child starts with its parent's handlers (a flow's process has Prefect's, which raises
    ``TerminationSignal``) and keeps them until ``_worker_start`` runs. A signal in that window ran the
    parent's handler in the worker: an exception that multiprocessing swallows, so the worker lived on
    past the pool's ``terminate`` and, once a second worker had died holding the call queue's lock,
    waited on that lock for ever (a hang seen in CI). Held signals stay pending in the child until
    ``_worker_start`` has installed the worker's own handlers.
    """
    if not _CAN_HOLD_SIGNALS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENTS_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this worker when the thread that forked it ends (its process killed, say).

    A worker otherwise outlives a SIGKILLed preparation for ever: it waits on a task queue whose
    other ends it holds itself, keeping its memory and the parent's stdout and stderr open. The
    pool forks its workers in the consumer's thread, which consumes and stops the pool before it
    ends. Elsewhere (no ``prctl``) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _worker_start(parent: int) -> None:
    """Start a decoding worker clean of what it inherits from its parent through fork.

    A flow's process has Prefect's SIGTERM handler (it raises ``TerminationSignal`` and reports to the
    API) and logging handlers with threads and locks behind them. A forked worker running those hangs
    on a lock another thread of the parent held at fork time, which left a preparation under the flow
    waiting forever. Workers get the default SIGTERM (die at once), ignore SIGINT (Ctrl-C is the
    parent's to handle) and log nowhere; only then are the signals held since the fork let through.
    """
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.root.handlers.clear()
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.propagate = False
    if _CAN_HOLD_SIGNALS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENTS_SIGNALS)


def _result(future: Any, workers: list) -> Any:
    """``future.result()``, or ``BrokenProcessPool`` once a worker has died while it is pending.

    The pool notices a dead worker itself, except one that died half-way through writing a result
    (the out-of-memory killer): its thread has read the message's length and waits for the rest, and
    the future for ever. Workers exit only when the pool is shut down, so one gone now has died.
    """
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if any(p.exitcode is not None for p in workers):
                raise BrokenProcessPool("a worker died while a result was pending") from None


def _why_it_died(workers: list) -> str:
    """What ended the worker that broke the pool, read once every worker has been reaped.

    The pool terminates the others itself (SIGTERM), so a SIGKILL among the exit codes is the cause.
    """
    codes = [p.exitcode for p in workers if p.exitcode]
    if -signal.SIGKILL in codes:
        return "was killed (SIGKILL: out of memory?)"
    killed = [c for c in codes if c < 0 and c != -signal.SIGTERM] or [c for c in codes if c < 0]
    return f"was killed by signal {-killed[0]}" if killed else "exited unexpectedly"


def _stop(pool: ProcessPoolExecutor, workers: list) -> None:
    """End ``pool`` without waiting for tasks nobody wants, and without hanging on a stuck worker.

    First gently: tasks not yet started are cancelled and each worker finishes the one it holds and
    exits. A worker must not be killed while it writes a result: the pool's thread would have read
    the message's length and wait for the rest of it for ever, since this process holds the pipe's
    other write end (a hang seen in CI, when a preparation with ``limit`` stopped its pool early).
    Only a worker still running at ``_STOP_DEADLINE_S`` is terminated, then killed. Once every worker
    is gone, this process's write end is closed too, so a message one of them left half-written (a
    kill, the out-of-memory killer) ends in EOF for the pool's thread instead of a wait.
    Every worker is reaped when this returns, so their exit codes are final (reading them while the
    pool's thread reaps the same processes lost a SIGKILL now and then).
    """
    workers = workers + [p for p in _pool_workers(pool) if p not in workers]
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown(wait=False) forgets both
    results = getattr(pool, "_result_queue", None)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + _STOP_DEADLINE_S
    for process in workers:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [p for p in workers if p.exitcode is None]
    for process in stuck:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    deadline = time.monotonic() + _STOP_DEADLINE_S
    for process in stuck:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                process.kill()
            process.join(timeout=_STOP_DEADLINE_S)
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()  # never written by this process; data already in the pipe is still read before EOF
    if manager is not None:
        manager.join(timeout=_STOP_DEADLINE_S)
        if manager.is_alive():
            logging.getLogger(__name__).warning("data preparation: a worker pool's thread did not stop; left behind")


def map_ordered(fn: Callable[[Any], R], items: Iterable[tuple[M, Any]], workers: int,
                window: int | None = None) -> Iterator[tuple[M, R]]:
    """Yield (meta, fn(task)) for each (meta, task) of ``items``, in order, using ``workers`` processes.

    At most ``window`` (default 2 x workers) tasks are submitted and not yet consumed, so the
    results waiting in memory are bounded. ``workers <= 1`` runs in this process. A worker that
    dies (killed, out of memory, even half-way through sending a result) raises ``DataError`` within
    ``_POLL_S`` instead of leaving the wait hanging; workers die with this process (Linux).
    Closing the generator early (the consumer has enough, or failed) stops the workers. ``fn`` and
    the tasks must be picklable where the platform starts workers by spawning.
    """
    if workers <= 1:
        for meta, task in items:
            yield meta, fn(task)
        return
    window = window or 2 * workers
    # fork is the cheapest start on Linux and does not re-import the caller's main module (a flow
    # script importing Prefect); ``_worker_start`` drops what the workers must not inherit.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_worker_start,
                                   initargs=(os.getpid(),))
    pending: collections.deque = collections.deque()
    seen: list = []  # every worker started: the pool forgets a dead one before we can ask why it died
    broken = False
    try:
        for meta, task in items:
            with _signals_held():  # the pool forks its workers in the first submit
                pending.append((meta, pool.submit(fn, task)))
            seen.extend(p for p in _pool_workers(pool) if p not in seen)
            if len(pending) >= window:
                meta0, future = pending.popleft()
                yield meta0, _result(future, seen)
        while pending:
            meta0, future = pending.popleft()
            yield meta0, _result(future, seen)
    except BrokenProcessPool:
        broken = True
    finally:
        _stop(pool, seen)
    if broken:
        raise DataError(f"data preparation: a decoding worker {_why_it_died(seen)}; run again, with --image-size "
                        "smaller images or fewer workers if memory is short")
