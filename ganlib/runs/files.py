"""Atomic file writing: every file a run leaves is either complete or absent.

Writers produce a temporary file next to the target, flush and fsync it, then ``os.replace`` it
over the target (atomic on POSIX), and fsync the directory so the rename itself survives a crash.
A failure part-way (disk full, kill) leaves the previous version of the target untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganlib.runs.lock import pid_alive
from ganlib.runs.storage import writing


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not let a directory be opened; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s content to; on success it replaces ``target``.

    The temporary name keeps ``target``'s suffix, so libraries that pick a format from the
    extension (Pillow, pandas) behave the same.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_dead_writers_files(target)
            yield tmp
            with open(tmp, "rb+") as f:
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _remove_dead_writers_files(target: Path) -> None:
    """Delete temporary files of ``target`` left by writers that were killed (their process is gone).

    Shared files (the ``_cache`` of classifiers and reference statistics) are written without a run
    lock, so a killed writer's leftover is cleared here, by the next writer of the same file. A
    temporary file of a live process (another run writing the same cache entry now) is left alone.
    """
    for tmp in target.parent.glob(f".{target.stem}.tmp-*{target.suffix}"):
        if writer_is_gone(tmp):
            with contextlib.suppress(FileNotFoundError, PermissionError):  # another user's, in a shared cache
                tmp.unlink()


def writer_is_gone(tmp: Path) -> bool:
    """Whether the process named in a temporary file's name (``.<name>.tmp-<pid>[suffix]``) has ended.

    A name without a pid counts as gone; this process, and another user's live one, do not. A killed
    writer that its parent has not reaped yet (a zombie) has ended: ``runs.lock.pid_alive`` decides.
    """
    found = re.match(r".*\.tmp-(\d*)", tmp.name)  # greedy: the digits after the last ".tmp-"
    digits = found.group(1) if found else ""
    if not digits:
        return True
    pid = int(digits)
    return pid != os.getpid() and not pid_alive(pid)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_torch_save(obj: Any, target: Path) -> None:
    """``torch.save(obj)`` to ``target`` atomically. Through a Python file object: given a path, torch's own
    writer reports a full disk as an opaque ``RuntimeError`` ("unexpected pos ..."), given a file it is
    ``OSError(ENOSPC)``, which ``writing`` turns into one line."""
    import torch

    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def remove_temporary_files(root: Path) -> list[Path]:
    """Delete the temporary files that killed writers left under ``root``; return them.

    Called under the run's lock, so no other run writes here; a file whose writer is alive is this
    process's own write in flight (the MLflow tracker's thread saving its state while training starts:
    deleting it failed that write, and tracking went off) and is left alone.
    """
    leftovers = [p for p in Path(root).rglob(".*.tmp-*") if p.is_file() and writer_is_gone(p)]
    for p in leftovers:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return leftovers


def check_writable_directory(path: Path, what: str, fix: str = "choose another --out") -> None:
    """``RunError`` (one line, ending in ``fix``) unless ``path`` is, or can be created as, a directory this
    process may write.

    Checked before any work: a file in the way or a read-only disk would otherwise surface only after
    the dataset was prepared and a server started.
    """
    from ganlib.errors import RunError

    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise RunError(f"{what}: {existing} is a file, not a directory; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{what}: cannot write in {existing} (read-only or not permitted); {fix}")
