"""Run locks: one live process per run directory, stale locks recovered, parallel runs kept apart.

Other processes are real subprocesses (``sys.executable -c ...``): a lock that only works inside
one interpreter would prove nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ganlib.data.store import prepare_dataset
from ganlib.errors import RunError
from ganlib.runs import lock as lockmod
from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint
from ganlib.runs.lock import LOCK_NAME, check_under_root, read_lock, run_lock

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it

# Holds the lock of argv[1] until its stdin closes; says "held" once it has it, "refused <msg>" if not.
# With argv[2], waits for that file to appear first, so several holders can race at one moment.
HOLDER = r"""
import os, sys, time
from pathlib import Path
from ganlib.errors import RunError
from ganlib.runs.lock import run_lock
if len(sys.argv) > 2:
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
try:
    with run_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()
except RunError as err:
    print(f"refused {err}", flush=True)
"""

# Trains one run while holding its lock; prints what it saw as JSON.
TRAINER = r"""
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # four of these share two cores
from ganlib.config import RunConfig
from ganlib.runs.lock import read_lock, run_lock
from ganlib.training.loop import train
cfg = RunConfig.model_validate_json(sys.argv[1])
with run_lock(cfg.run_dir):
    before = read_lock(cfg.run_dir)
    result = train(cfg, Path(sys.argv[2]))
    after = read_lock(cfg.run_dir)
print(json.dumps({"pid": os.getpid(), "lock_before": before["pid"], "lock_after": after["pid"],
                  "final_step": result.final_step}))
"""


@pytest.fixture
def ganlib_log(caplog):
    """caplog wired to the "ganlib" logger directly (Prefect may have turned its propagation off)."""
    logger = logging.getLogger("ganlib")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir: Path, **info) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"hostname": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00",
                                "token": "x", **info}))
    return path


def _holder(run_dir: Path, go: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", HOLDER, str(run_dir)] + ([str(go)] if go else [])
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_acquire_writes_who_and_when_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "out" / "r1"  # does not exist yet: the lock creates it
    with run_lock(run_dir) as path:
        assert path == run_dir.resolve() / LOCK_NAME
        info = read_lock(run_dir)
        assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
        started = dt.datetime.fromisoformat(info["started"])
        assert abs((dt.datetime.now(dt.timezone.utc) - started).total_seconds()) < 60
    assert not path.exists() and run_dir.is_dir()


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path):
    run_dir = tmp_path / "busy"
    holder = _holder(run_dir)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as err:
            with run_lock(run_dir):
                pass
        msg = str(err.value)
        host = socket.gethostname()
        assert msg.startswith(f"run 'busy' is already running (pid {holder.pid} on host {host} since "), msg
        assert msg.endswith("); wait for it to finish, or use another --run-id"), msg
        assert "\n" not in msg
        assert read_lock(run_dir)["pid"] == holder.pid  # refusing did not disturb the holder's lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0 and not (run_dir / LOCK_NAME).exists()
    with run_lock(run_dir):  # free again once the holder has finished
        pass


def test_of_four_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    run_dir, go = tmp_path / "race", tmp_path / "go"
    _write_lock(run_dir, pid=_dead_pid())
    holders = [_holder(run_dir, go) for _ in range(4)]
    try:
        assert all(h.stdout.readline().strip() == "ready" for h in holders)
        go.touch()
        answers = [h.stdout.readline().strip() for h in holders]
        assert answers.count("held") == 1, answers
        losers = [a for a in answers if a != "held"]
        assert all(a.startswith("refused run 'race' is already running") for a in losers), answers
        winner = holders[answers.index("held")]
        assert read_lock(run_dir)["pid"] == winner.pid
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(timeout=30)
    assert not (run_dir / LOCK_NAME).exists()
    assert [p.name for p in run_dir.iterdir()] == []  # no renamed-aside stale files left


def test_a_stale_lock_of_a_dead_pid_is_recovered_with_a_warning(tmp_path, ganlib_log):
    run_dir = tmp_path / "stale"
    dead = _dead_pid()
    _write_lock(run_dir, pid=dead)
    with run_lock(run_dir):
        assert read_lock(run_dir)["pid"] == os.getpid()
    assert f"recovered a stale lock of dead pid {dead}" in ganlib_log.text
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not json {", b'{"pid": "seven"}', b"[1, 2]"])
def test_an_unreadable_lock_is_recovered_once_it_is_old(tmp_path, ganlib_log, content):
    run_dir = tmp_path / "garbage"
    run_dir.mkdir()
    path = run_dir / LOCK_NAME
    path.write_bytes(content)
    old = time.time() - 3600
    os.utime(path, (old, old))
    with run_lock(run_dir):
        assert read_lock(run_dir)["pid"] == os.getpid()
    assert "recovered a stale lock with unreadable content" in ganlib_log.text


def test_a_fresh_unreadable_lock_is_given_time_to_be_written(tmp_path, monkeypatch):
    # An empty lock may be a holder between its O_EXCL create and its write: wait before taking it.
    monkeypatch.setattr(lockmod, "GARBAGE_GRACE_S", 0.3)
    run_dir = tmp_path / "young"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_bytes(b"")
    t0 = time.monotonic()
    with run_lock(run_dir):
        assert time.monotonic() - t0 >= 0.25


def test_a_lock_with_our_own_pid_that_we_do_not_hold_is_stale(tmp_path, ganlib_log):
    # A container restarted with the same PID finds the lock its killed predecessor left.
    run_dir = tmp_path / "samepid"
    _write_lock(run_dir, pid=os.getpid())
    with run_lock(run_dir):
        assert read_lock(run_dir)["token"] != "x"
    assert f"recovered a stale lock of dead pid {os.getpid()}" in ganlib_log.text


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_a_reused_pid_and_an_unreaped_zombie_do_not_count_as_the_holder(tmp_path, zombie_pid):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A live PID, but the process started at another time than the lock's holder did.
        _write_lock(tmp_path / "reused", pid=sleeper.pid, proc_start="1")
        with run_lock(tmp_path / "reused"):
            assert read_lock(tmp_path / "reused")["pid"] == os.getpid()
        _write_lock(tmp_path / "alive", pid=sleeper.pid, proc_start=lockmod.proc_start(sleeper.pid))
        with pytest.raises(RunError, match="is already running"):
            with run_lock(tmp_path / "alive"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()

    _write_lock(tmp_path / "zombie", pid=zombie_pid)
    with run_lock(tmp_path / "zombie"):
        assert read_lock(tmp_path / "zombie")["pid"] == os.getpid()


def test_a_lock_held_on_another_host_is_respected(tmp_path):
    _write_lock(tmp_path / "remote", pid=1, hostname="elsewhere.example")
    with pytest.raises(RunError, match=r"locked by pid 1 on host elsewhere.example .* delete .*\.lock"):
        with run_lock(tmp_path / "remote"):
            pass
    assert read_lock(tmp_path / "remote")["hostname"] == "elsewhere.example"


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    run_dir = tmp_path / "re"
    with run_lock(run_dir):
        token = read_lock(run_dir)["token"]
        with run_lock(tmp_path / "x" / ".." / "re"):  # the same directory spelt differently
            assert read_lock(run_dir)["token"] == token
        assert read_lock(run_dir)["token"] == token  # the inner exit kept the outer hold
    assert read_lock(run_dir) is None


def test_the_lock_is_removed_after_an_exception_and_can_be_taken_again(tmp_path):
    run_dir = tmp_path / "boom"
    for _ in range(2):  # a retry in the same process, as Prefect does, gets the lock again
        with pytest.raises(ValueError):
            with run_lock(run_dir):
                with run_lock(run_dir):
                    raise ValueError("step failed")
        assert not (run_dir / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, ganlib_log):
    run_dir = tmp_path / "taken"
    with run_lock(run_dir):
        _write_lock(run_dir, pid=12345, token="theirs")  # someone judged us dead and took over
    assert read_lock(run_dir)["token"] == "theirs"
    assert "was taken over by pid 12345" in ganlib_log.text


def test_check_under_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert check_under_root(root / "run-1", root) == (root / "run-1").resolve()
    for bad in (root / ".." / "elsewhere", root, root / "."):
        with pytest.raises(RunError, match="not inside the output root"):
            check_under_root(bad, root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(RunError, match="not inside the output root"):
        check_under_root(root / "link" / "x", root)


@pytest.mark.slow
def test_four_runs_trained_in_parallel_each_under_its_own_lock(tmp_path, tiny):
    out = tmp_path / "out"
    cfgs = [tiny(run_id=f"p{i}", seed=i) for i in range(4)]
    store = prepare_dataset(cfgs[0].data, cfgs[0].out)  # once, before the race; the runs share it
    procs = [subprocess.Popen([sys.executable, "-c", TRAINER, c.model_dump_json(), str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cfgs]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-2000:]
        seen = json.loads(stdout.strip().splitlines()[-1])
        assert seen["lock_before"] == seen["lock_after"] == seen["pid"] == p.pid and seen["final_step"] == 12

    assert sorted(p.name for p in out.iterdir()) == ["_cache", "p0", "p1", "p2", "p3"]
    finals = []
    for cfg in cfgs:
        run = cfg.run_dir
        assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [6, 12]
        for step in (6, 12):
            state = load_checkpoint(run / "checkpoints" / f"step_{step:06d}.pt")  # verifies the sidecar
            assert state["config"]["run_id"] == cfg.run_id and state["config"]["seed"] == cfg.seed
        assert (run / "checkpoints" / "step_000012.pt.sha256").is_file()
        assert pd.read_parquet(run / "metrics" / "train.parquet")["step"].tolist() == list(range(1, 13))
        leftovers = [p for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith(LOCK_NAME)]
        assert leftovers == []
        finals.append(load_checkpoint(run / "checkpoints" / "step_000012.pt")["generator"])
    # Different seeds give different weights: no run picked up another's checkpoint.
    for i in range(4):
        for j in range(i + 1, 4):
            assert not all(torch.equal(finals[i][k], finals[j][k]) for k in finals[i]), (i, j)


def test_computing_makes_another_process_wait_until_the_file_is_there(tmp_path, caplog):
    """``computing``: a second process that needs the same cached file waits for the first, then finds it."""
    target = tmp_path / "cache" / "reference.pt"
    script = ("import sys, time\nfrom pathlib import Path\nfrom ganlib.runs.lock import computing\n"
              "target = Path(sys.argv[1])\nwith computing(target, 'test'):\n    print('in', flush=True)\n"
              "    time.sleep(1.0)\n    target.write_text('done')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in"  # the other process holds the lock now
        with caplog.at_level(logging.INFO, logger="ganlib"), lockmod.computing(target, "test"):
            found = target.read_text() if target.exists() else None
    finally:
        proc.wait(30)
    assert found == "done" and "another process is computing reference.pt" in caplog.text
    with lockmod.computing(target, "test"):  # free again: no wait, no message
        pass
    assert caplog.text.count("another process is computing") == 1
