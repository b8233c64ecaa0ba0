"""Atomic files: complete or absent, and what killed writers leave is cleared by the next writer."""

from __future__ import annotations

import os
import subprocess
import sys

from ganlib.runs.files import atomic_write_bytes, remove_temporary_files


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
