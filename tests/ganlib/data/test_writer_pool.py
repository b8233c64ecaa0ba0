"""map_ordered's worker pool under hostile conditions: a parent with Prefect-like signal handlers, a worker
that dies (even half-way through sending a result), a parent that dies, a consumer that stops early. It must
neither hang nor let a worker run the parent's handlers nor leave a worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ganlib.data.writer import map_ordered
from ganlib.errors import DataError
from ganlib.runs.lock import pid_alive


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


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter, with a deadline: a hang fails the test instead of the suite."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _error_of(worker: str) -> str:
    """What ``map_ordered(_work, 8 tasks, workers=2)`` prints, run in a subprocess with a deadline, ``_work``
    defined by ``worker`` (source): the DataError's message, or the traceback."""
    code = textwrap.dedent(worker) + textwrap.dedent("""
        from ganlib.data.writer import map_ordered
        from ganlib.errors import DataError

        try:
            list(map_ordered(_work, ((i, i) for i in range(8)), workers=2))
        except DataError as err:
            print(err)
    """)
    out = _python(code)
    return out.stdout + out.stderr


def test_a_worker_that_dies_is_an_error_not_a_hang():
    # The old pool waited forever for the dead worker's result.
    out = _error_of("""
        import os, signal

        def _work(task):
            if task == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return task
    """)
    assert "a decoding worker was killed (SIGKILL: out of memory?)" in out, out


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

    def _slow_start(parent):
        import time
        time.sleep(1.0)
        writer._worker_start.__wrapped__(parent)

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
    out = _python(code)
    assert out.returncode == 0 and "closed in" in out.stdout, out.stdout + out.stderr
    assert float(out.stdout.split()[2]) < 10, out.stdout


def test_closing_early_while_workers_send_large_results_does_not_hang():
    # Results larger than a pipe's buffer: a worker is often half-way through sending one when the
    # consumer stops. Terminating it there left the pool's thread waiting for the rest for ever (CI hung
    # on test_sources.py's ``limit`` preparation); the first close hung every time before the fix.
    code = textwrap.dedent("""
        from ganlib.data.writer import map_ordered

        def _big(task):
            return bytes(4 << 20)

        for _ in range(10):
            results = map_ordered(_big, ((i, i) for i in range(50)), workers=2)
            next(results)
            results.close()
        print("closed 10 times")
    """)
    out = _python(code)
    assert "closed 10 times" in out.stdout, out.stdout + out.stderr


def _result_queue_is_the_workers_second_argument() -> bool:
    import concurrent.futures.process as cf_process
    import inspect

    worker = getattr(cf_process, "_process_worker", None)
    return worker is not None and list(inspect.signature(worker).parameters)[1:2] == ["result_queue"]


@pytest.mark.skipif(not _result_queue_is_the_workers_second_argument(),
                    reason="reaches into CPython's pool worker (its result queue), laid out otherwise here")
def test_a_worker_killed_half_way_through_sending_a_result_is_an_error_not_a_hang():
    # What the out-of-memory killer can do: the pool's thread has read a message's length, the rest never
    # comes, and the pool itself never notices the death. Before the fix the wait for the result hung.
    out = _error_of("""
        import multiprocessing as mp, os, signal, struct

        def _work(task):
            if task == 3:  # CPython's worker holds the result queue as its second argument
                pipe = mp.current_process()._args[1]._writer
                os.write(pipe.fileno(), struct.pack("!i", 1 << 20) + bytes(100))
                os.kill(os.getpid(), signal.SIGKILL)
            return task
    """)
    assert "a decoding worker was killed (SIGKILL: out of memory?)" in out, out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    # A SIGKILLed preparation (a crashed flow run, the out-of-memory killer) left its workers waiting on the
    # task queue for ever, holding their memory and the parent's stdout.
    pids = tmp_path / "pids"
    code = textwrap.dedent(f"""
        import os, signal, threading, time
        from ganlib.data.writer import map_ordered

        def _slow(task):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(120)
            return task

        threading.Thread(target=lambda: list(map_ordered(_slow, ((i, i) for i in range(4)), workers=2)),
                         daemon=True).start()
        while not os.path.exists({str(pids)!r}) or len(open({str(pids)!r}).read().split()) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    with open(tmp_path / "out", "w") as out:  # not a pipe: a surviving worker would hold it open
        assert subprocess.run([sys.executable, "-c", code], stdout=out, stderr=out, timeout=60).returncode == -9
    workers = [int(pid) for pid in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if pid_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"
