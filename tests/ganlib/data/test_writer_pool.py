"""map_ordered's worker pool under hostile conditions: a parent with Prefect-like signal handlers, a worker
that dies. It must neither hang nor let a worker run the parent's handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ganlib.data.writer import map_ordered
from ganlib.errors import DataError


def _handlers(_task: int) -> tuple[object, object]:
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def _die(task: int) -> int:
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return task


def _raise_on_term(signum, frame):  # what Prefect installs in a flow's process
    raise RuntimeError("TerminationSignal")


def test_workers_do_not_inherit_the_parents_signal_handlers(monkeypatch):
    previous = signal.signal(signal.SIGTERM, _raise_on_term)
    try:
        results = [r for _, r in map_ordered(_handlers, ((i, i) for i in range(4)), workers=2)]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert results == [(signal.SIG_DFL, signal.SIG_IGN)] * 4


def test_a_worker_that_dies_is_an_error_not_a_hang():
    # In a subprocess with a deadline: the old pool waited forever for the dead worker's result.
    code = textwrap.dedent("""
        import os, signal
        from ganlib.data.writer import map_ordered
        from ganlib.errors import DataError

        def _die(task):
            if task == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return task

        try:
            list(map_ordered(_die, ((i, i) for i in range(8)), workers=2))
        except DataError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "a decoding worker was killed (SIGKILL: out of memory?)" in out.stdout, out.stdout + out.stderr


def test_closing_early_stops_the_workers():
    results = map_ordered(_handlers, ((i, i) for i in range(100)), workers=2)
    next(results)
    results.close()  # the consumer has enough: no waiting for the rest


def test_the_error_is_one_line():
    with pytest.raises(DataError) as info:
        list(map_ordered(_die, ((i, i) for i in range(8)), workers=2))
    assert "\n" not in str(info.value)


def test_a_signal_before_a_worker_is_set_up_never_runs_the_parents_handler(tmp_path, monkeypatch):
    # The window between fork and _worker_start, made wide: a worker that ran the parent's handler
    # there survived the pool's terminate (the handler's exception was swallowed) and could hang it.
    import ganlib.data.writer as writer

    marker = tmp_path / "parent-handler-ran-in"
    parent = os.getpid()

    def _record(signum, frame):
        if os.getpid() != parent:
            marker.write_text(str(os.getpid()))

    def _slow_start():
        import time
        time.sleep(1.0)
        writer._worker_start.__wrapped__()

    _slow_start.__wrapped__ = writer._worker_start
    monkeypatch.setattr(writer, "_worker_start", _slow_start)

    def _items():
        yield 0, 0
        raise ValueError("the source failed")

    previous = signal.signal(signal.SIGTERM, _record)
    try:
        with pytest.raises(ValueError, match="the source failed"):
            list(map_ordered(_handlers, _items(), workers=2))  # the pool is stopped while workers sleep
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not marker.exists(), "a worker ran the parent's SIGTERM handler"


def test_a_worker_that_ignores_terminate_is_killed_not_waited_for():
    code = textwrap.dedent("""
        import signal, time
        import ganlib.data.writer as writer

        writer._STOP_DEADLINE_S = 1.0

        def _stubborn(task):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if task > 0:
                time.sleep(3600)
            return task

        results = writer.map_ordered(_stubborn, ((i, i) for i in range(4)), workers=2, window=4)
        next(results)
        start = time.monotonic()
        results.close()
        print(f"closed in {time.monotonic() - start:.1f} s")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "closed in" in out.stdout, out.stdout + out.stderr
    assert float(out.stdout.split()[2]) < 10, out.stdout
