"""Atomic files: complete or absent, and what killed writers leave is cleared by the next writer."""

from __future__ import annotations

import os
import subprocess
import sys

from ganlib.runs.files import atomic_write_bytes


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
