"""One process per run directory: an advisory lock file, and a check that runs stay under the root.

``run_lock(run_dir)`` holds ``run_dir/.lock`` for the duration of a run. The file holds JSON
``{"pid", "hostname", "started", "token", "proc_start"}``: who holds the run, since when, a random
token that identifies this acquisition (so a release never deletes someone else's lock) and, on
Linux, the holder's process start time (so a PID reused by an unrelated process is not mistaken
for the holder).

- The lock is created with ``O_CREAT | O_EXCL``, so of two processes starting the same run at
  once exactly one gets it; the other fails at once with a one-line ``RunError``.
- A lock left behind by a process that died (SIGKILL, OOM kill, power loss) is *stale*: its PID
  is gone from this host, or it is unreadable, or it names this very process although this
  process does not hold it (a container restarted with the same PID). A stale lock is taken over
  with a warning. The takeover is serialised by ``flock`` on the run directory where the
  filesystem supports it, and is checked by renaming the stale file aside and comparing its bytes
  with what was judged stale, so two processes recovering at once never both win.
- Within one process the lock is re-entrant (a counter keyed by the resolved path): the flow can
  hold it for a whole pipeline while the training call inside takes it again, and a retry in the
  same process does not deadlock on its own lock. Consequently it does not keep two *threads* of
  one process apart.
- A lock held on another host (a shared filesystem) cannot be checked and is always respected.

POSIX only: liveness is checked with ``os.kill(pid, 0)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganlib.errors import RunError
from ganlib.runs.storage import writing

try:
    import fcntl
except ImportError:  # not POSIX: the rename-and-compare check alone guards the takeover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("ganlib")

LOCK_NAME = ".lock"
# O_EXCL creation and writing the JSON are two system calls: a reader can meet an empty file for a
# moment. Unreadable content younger than this is treated as "being written" and read again.
GARBAGE_GRACE_S = 2.0
_POLL_S = 0.05
_MAX_ATTEMPTS = 200  # create/judge/take-over rounds before giving up (only reached under heavy contention)


@dataclass
class _Held:
    pid: int
    token: str
    count: int


# Locks this process holds, by resolved lock path. One process-wide RLock serialises acquisition
# and release, so two threads entering the same run for the first time cannot both create it.
_HELD: dict[Path, _Held] = {}
_GUARD = threading.RLock()


def proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] == "Z"


def pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows; assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    # A killed child that its parent has not reaped yet still answers kill(pid, 0).
    return not _is_zombie(pid)


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The content of ``run_dir/.lock``, or None if there is none or it is unreadable."""
    try:
        info = json.loads((Path(run_dir) / LOCK_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or info["pid"] <= 0:
        return None
    return info


def _holder_is_alive(info: dict[str, Any]) -> bool:
    """Whether the process named by a lock may still be running (True when it cannot be told).

    Only called for locks this process does not hold (``run_lock`` re-enters those without reading).
    """
    if info.get("hostname") != socket.gethostname():
        return True
    pid = info["pid"]
    if pid == os.getpid():
        # Our PID but not our lock: left by an earlier process with the same PID (a container
        # restarted, so the entry point got the same low PID), or by an attempt of this process
        # interrupted between creating the file and registering it.
        return False
    if not pid_alive(pid):
        return False
    recorded, current = info.get("proc_start"), proc_start(pid)
    # Same PID, different start time: the holder died and the PID was reused.
    return not (recorded is not None and current is not None and recorded != current)


@contextlib.contextmanager
def _dir_flock(directory: Path) -> Iterator[None]:
    """Exclusive flock on a directory (released on close); a no-op where unsupported."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # e.g. NFS emulates flock with write locks: not on a directory
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def computing(target: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s lock file (``.<name>.lock`` beside it) while ``target`` is
    looked for and, if absent, computed and saved: processes, or threads of a sweep, that need the same
    cached file at once (an evaluation's classifier, encoder or reference) compute it once; the others
    wait, logging ``what`` they wait for, then find it. A holder that dies releases the lock (flock); where
    flock is missing or unsupported it is a no-op and each computes its own, as without it."""
    target = Path(target)
    if fcntl is None:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # e.g. a read-only cache someone else filled: nothing to compute there
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is computing %s; waiting for it", what, target.name)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # e.g. NFS without flock
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


def _describe(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid')} on host {info.get('hostname')} since {info.get('started')}"


def _take_over(lock_path: Path, judged: bytes, reason: str) -> None:
    """Remove the stale lock file if it still holds exactly ``judged``; the caller then creates its own."""
    with _dir_flock(lock_path.parent):
        try:
            if lock_path.read_bytes() != judged:
                return  # it changed since it was judged (someone else recovered it): judge again
        except FileNotFoundError:
            return
        aside = lock_path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(lock_path, aside)
        except FileNotFoundError:
            return
        try:
            moved = aside.read_bytes()
        except OSError:
            moved = judged
        if moved != judged:
            # Only possible where flock is unavailable: between our read and the rename another
            # process recovered the stale lock and created its own, which we just moved. Put it
            # back (link fails if yet another lock appeared) and judge again.
            with contextlib.suppress(OSError):
                os.link(aside, lock_path)
            with contextlib.suppress(OSError):
                aside.unlink()
            return
        with contextlib.suppress(OSError):
            aside.unlink()
    log.warning("run %r: recovered a stale lock %s", lock_path.parent.name, reason)


def _acquire(lock_path: Path) -> _Held:
    with writing(lock_path):  # a full disk or a read-only --out: one line
        return _acquire_or_wait(lock_path)


def _acquire_or_wait(lock_path: Path) -> _Held:
    run_dir = lock_path.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(_MAX_ATTEMPTS):
        token = uuid.uuid4().hex
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            info = {
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
                "token": token,
                "proc_start": proc_start(os.getpid()),
            }
            try:
                os.write(fd, (json.dumps(info, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    lock_path.unlink()
                raise
            os.close(fd)
            return _Held(pid=os.getpid(), token=token, count=1)

        try:
            raw = lock_path.read_bytes()
            age = time.time() - lock_path.stat().st_mtime
        except FileNotFoundError:
            continue  # released between our create and our read: try again
        info = _parse(raw)
        if info is None:
            if age < GARBAGE_GRACE_S:
                time.sleep(_POLL_S)  # most likely being written right now
                continue
            _take_over(lock_path, raw, f"with unreadable content ({raw[:40]!r})")
            continue
        if _holder_is_alive(info):
            if info.get("hostname") != socket.gethostname():
                raise RunError(
                    f"run {run_dir.name!r} is locked by {_describe(info)}; if that run is no longer "
                    f"running, delete {lock_path}, or use another --run-id")
            raise RunError(
                f"run {run_dir.name!r} is already running ({_describe(info)}); "
                "wait for it to finish, or use another --run-id")
        _take_over(lock_path, raw, f"of dead pid {info['pid']} (host {info.get('hostname')}, "
                                   f"since {info.get('started')})")
    raise RunError(f"run {run_dir.name!r}: could not take the lock {lock_path} (it keeps changing); "
                   "is something else recreating it?")


def _release(lock_path: Path, held: _Held) -> None:
    with _dir_flock(lock_path.parent):
        try:
            info = _parse(lock_path.read_bytes())
        except FileNotFoundError:
            log.warning("run %r: the lock %s was removed while the run held it",
                        lock_path.parent.name, lock_path)
            return
        if info is not None and info.get("token") == held.token:
            lock_path.unlink()
        else:  # someone judged us dead and took over; their lock is not ours to remove
            log.warning("run %r: the lock was taken over by %s; leaving it", lock_path.parent.name,
                        _describe(info) if info else "unreadable content")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` (creating ``run_dir`` if needed) for the ``with`` block; yield its path.

    Raises ``RunError`` if another live process holds the run. Re-entrant within one process.
    The lock is removed on exit, normal or by exception, if it is still this process's.
    """
    lock_path = Path(run_dir).resolve() / LOCK_NAME
    with _GUARD:
        held = _HELD.get(lock_path)
        if held is not None and held.pid == os.getpid():
            held.count += 1
        else:  # not held, or inherited through fork by a child process: not the child's lock
            held = _HELD[lock_path] = _acquire(lock_path)
    try:
        yield lock_path
    finally:
        with _GUARD:
            held.count -= 1
            if held.count == 0:
                if _HELD.get(lock_path) is held:
                    del _HELD[lock_path]
                _release(lock_path, held)


def check_under_root(path: Path, root: Path) -> Path:
    """``path`` resolved, after checking it lies strictly inside ``root`` (resolved); else ``RunError``.

    Defence in depth behind the run-id pattern: symlinks or '..' must not lead a run to write
    outside the output root (or onto the root itself).
    """
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved == base or base not in resolved.parents:
        raise RunError(f"run directory {path} resolves to {resolved}, which is not inside the output root "
                       f"{base}; use a plain --run-id (letters, digits, '.', '_', '-') and no symlinks out")
    return resolved


def check_not_running(run_dir: Path) -> None:
    """Raise ``RunError`` if another live process holds ``run_dir``'s lock (a cheap pre-check;
    ``run_lock`` is what actually excludes)."""
    lock_path = Path(run_dir).resolve() / LOCK_NAME
    held = _HELD.get(lock_path)
    if held is not None and held.pid == os.getpid():
        return
    try:
        info = _parse(lock_path.read_bytes())
    except OSError:
        return
    if info is not None and _holder_is_alive(info):
        raise RunError(f"run {lock_path.parent.name!r} is already running ({_describe(info)}); "
                       "wait for it to finish, or use another --run-id")
