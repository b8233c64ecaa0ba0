"""Atomic files: complete or absent, and what killed writers leave is cleared by the next writer."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganlib.errors import StorageError
from ganlib.rendering.pictures import save_png
from ganlib.runs.files import atomic_torch_save, atomic_write_bytes, remove_temporary_files
from ganlib.runs.paths import write_table
from ganlib.runs.storage import writing


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_writer_clears_a_killed_writers_temporary_file(tmp_path):
    """A run killed while saving a shared cache entry (no run lock there) left ``.<name>.tmp-<pid>.pt``."""
    target = tmp_path / "_cache" / "classifiers" / "key-v1.pt"
    target.parent.mkdir(parents=True)
    dead = target.with_name(f".{target.stem}.tmp-{_dead_pid()}{target.suffix}")
    live = target.with_name(f".{target.stem}.tmp-{os.getppid()}{target.suffix}")  # a live process's
    other = target.with_name(".other.tmp-1.pt")  # another file's: not ours to judge
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not dead.exists() and live.exists() and other.exists()


def test_a_runs_cleanup_removes_dead_writers_files_and_keeps_writes_in_flight(tmp_path):
    """A resumed run clears what its killed attempt left, but not a temporary file this process (the MLflow
    tracker's thread saving ``mlflow.json`` as training began) or another live one is writing now: deleting
    it failed that write, and tracking went off (seen in CI of fb75adc)."""
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    dead = run / "metrics" / f".train.tmp-{_dead_pid()}.parquet"
    nameless = run / ".config.tmp-.json"  # no pid: nobody's, so a leftover
    mine = run / f".mlflow.tmp-{os.getpid()}.json"
    live = run / f".summary.tmp-{os.getppid()}.json"
    for p in (dead, nameless, mine, live):
        p.write_bytes(b"partial")
    assert sorted(remove_temporary_files(run)) == sorted([dead, nameless])
    assert not dead.exists() and not nameless.exists() and mine.exists() and live.exists()


def test_a_killed_writer_not_yet_reaped_counts_as_gone(tmp_path, zombie_pid):
    """A writer killed while its parent (a flow retrying the task, a launcher) has not waited for it yet
    still answers ``kill(pid, 0)``; its temporary file is a leftover all the same."""
    run = tmp_path / "run"
    run.mkdir()
    unreaped = run / f".summary.tmp-{zombie_pid}.json"
    unreaped.write_bytes(b"partial")
    assert remove_temporary_files(run) == [unreaped] and not unreaped.exists()


# A full disk, for real: the temporary file a write goes through is made a link to /dev/full, whose every
# write fails with ENOSPC (Linux). What the writer leaves is then what a full disk leaves.

def _full_disk_at(target: Path) -> Path:
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.symlink_to("/dev/full")
    return tmp


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


@needs_dev_full
@pytest.mark.parametrize("writer", ["table", "torch", "png", "bytes"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, writer):
    import torch
    from PIL import Image

    target = tmp_path / "run" / f"thing.{ {'table': 'parquet', 'torch': 'pt', 'png': 'png', 'bytes': 'json'}[writer]}"
    write = {
        "table": lambda: write_table([{"step": 1, "loss": 0.5}] * 1000, target),
        "torch": lambda: atomic_torch_save({"w": torch.zeros(100_000)}, target),
        "png": lambda: save_png(Image.new("RGB", (256, 256), "red"), target),
        "bytes": lambda: atomic_write_bytes(target, b"x" * 100_000),
    }[writer]
    atomic_write_bytes(target, b"before")
    _full_disk_at(target)
    with pytest.raises(StorageError) as caught:
        write()
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(caught.value) == (f"no space left to write {target} (No space left on device): free disk space and "
                                 "run again; what was saved before is kept")
    assert target.read_bytes() == b"before"  # the previous version is intact
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # and nothing is left beside it


def test_a_place_that_cannot_be_written_is_one_line_and_a_file_elsewhere_keeps_its_error(tmp_path):
    target = tmp_path / "cache" / "entry.pt"
    with pytest.raises(StorageError, match=r"^cannot write .*entry\.pt \(Read-only file system\): make its "
                                           r"directory writable, or choose another --out"):
        with writing(target):
            raise OSError(errno.EROFS, "Read-only file system", str(target.parent / ".entry.tmp-1.pt"))
    # Permission denied on a file elsewhere (an image being read) is that file's problem, not the write's.
    with pytest.raises(PermissionError) as caught, writing(target):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "images" / "a.png"))
    assert not isinstance(caught.value, StorageError)
    with pytest.raises(OSError) as caught, writing(target):  # and other errors pass through
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(caught.value, StorageError)
    # A folder above, that mkdir could not make, is the write's; a permission error naming nothing is not.
    with pytest.raises(StorageError, match=r"^cannot write .*entry\.pt \(Permission denied\)"), writing(target):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
    with pytest.raises(PermissionError) as caught, writing(target):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert not isinstance(caught.value, StorageError)


def test_a_storage_error_rebuilt_from_its_message_says_it():
    """The distributed launcher raises a rank's error again from error.json's type and message alone."""
    error = StorageError(errno.ENOSPC, "No space left on device", "out/r/checkpoints/step_000004.pt")
    assert str(StorageError(str(error))) == str(error)


def test_a_run_lock_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from ganlib.runs import lock

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock.os, "write", full)
    with pytest.raises(StorageError, match=r"^no space left to write .*\.lock "), lock.run_lock(tmp_path / "run"):
        pass
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # the half-made lock is gone: the next run can go
