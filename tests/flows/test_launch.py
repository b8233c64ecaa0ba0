"""flows/launch.py: a command's temporary server starts while it imports, is the server the run uses, and
is gone when the command ends however it ends; the garbage collector is paused for the imports only.

What touches the garbage collector or starts processes runs in a child process: this one keeps the
session's test harness (PREFECT_API_URL) and its collector as the other tests need them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows.launch import wants_server

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (the command's, and everything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    found += [int(entry.name)] if state != "Z" else []
            except OSError:
                continue
    return found


def test_a_server_is_wanted_unless_one_is_configured_or_only_help_or_a_plan_is_asked_for():
    assert wants_server(["--steps", "30"], environ={})
    assert not wants_server(["--steps", "30"], environ={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    for flags in (["-h"], ["--help"], ["--dry-run"], ["--steps", "3", "--dry"], ["--he"]):
        assert not wants_server(flags, environ={}), flags
    assert wants_server(["--device", "cpu"], environ={})  # '--de' abbreviates --device, not --dry-run


def test_the_launcher_imports_neither_torch_nor_prefect_and_pauses_the_collector_for_the_imports_only():
    code = ("import gc, sys\n"
            "from flows import launch\n"
            "heavy = [m for m in ('torch', 'prefect', 'pandas') if m in sys.modules]\n"
            "launch.begin('train', ['--help'])\n"
            "paused = not gc.isenabled()\n"
            "resumed = launch.run(lambda: gc.isenabled())\n"
            "print(heavy, paused, launch.take_head_start(), launch.warm_up(), resumed, gc.get_freeze_count() > 0)\n")
    done = _python(code, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]", "True", "None", "False", "True", "True"]


@pytest.mark.slow
def test_the_head_start_is_the_server_the_run_uses_warmed_up_while_waiting_and_nothing_is_left_after_it():
    marker = uuid.uuid4().hex
    code = ("from flows import launch\n"
            "launch.begin('train', [])\n"
            "port = launch._head_start.port\n"
            "import sys, httpx\n"
            "from flows.server import start_owned_server\n"
            "before = 'torch._dynamo' in sys.modules\n"
            "s = start_owned_server()\n"
            "print(s.port == port, httpx.get(s.api_url + '/health').json(), launch.take_head_start(), before,\n"
            "      'torch._dynamo' in sys.modules)\n"
            "s.stop()\n")
    done = _python(code, env={**os.environ, "GANLIB_TEST_MARKER": marker})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True", "None", "False", "True"]
    assert not _processes_with(marker)


@pytest.mark.slow
def test_a_user_error_ends_the_command_in_one_line_and_its_unused_server_with_it(tmp_path):
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["GANLIB_TEST_MARKER"] = marker
    done = subprocess.run([sys.executable, "flows/train.py", "--steps", "-5", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    deadline = time.monotonic() + 15  # SIGTERM at exit, and the kernel's parent-death signal
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(marker)


def test_every_command_begins_and_ends_through_the_launcher_under_its_own_name():
    # A command added to flows/main.py without these lines would start its server after its imports.
    from flows.launch import SERVER_COMMANDS
    from flows.main import COMMANDS

    assert SERVER_COMMANDS | {"serve"} == set(COMMANDS)
    for name, (module, _) in COMMANDS.items():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        assert f'launch.begin("{name}", sys.argv[1:])' in source, module
        assert source.rstrip().endswith("sys.exit(launch.run(main))"), module


def test_sigusr1_prints_every_threads_stack_and_the_command_goes_on():
    """What a user does to a command that seems stuck (``kill -USR1 <pid>``): without the handler, SIGUSR1 ends it."""
    code = ("import os, signal, threading, time\n"
            "from flows import launch\n"
            "launch.begin('help', [])\n"
            "threading.Thread(target=time.sleep, args=(30,), name='sleeper', daemon=True).start()\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('went on')\n")
    done = _python(code, timeout=60)
    assert done.returncode == 0 and done.stdout == "went on\n", done.stderr
    # the main thread where the signal came, and the sleeping thread's own stack
    assert 'Current thread' in done.stderr and 'File "<string>", line 5' in done.stderr, done.stderr
    assert "Thread 0x" in done.stderr and "threading.py" in done.stderr, done.stderr
