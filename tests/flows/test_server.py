"""flows/server.py: the run's own temporary Prefect server starts with time to spare, or fails in one line.

The fast ones call ``start_owned_server`` with ``OwnedServer.start`` replaced, and the real start runs in a
child process, so they touch no Prefect setting: the session's test harness (PREFECT_API_URL) stays as the
other tests need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import server
from ganlib.errors import RunError

REPO = Path(__file__).resolve().parents[2]


def test_the_server_gets_more_than_prefects_20_seconds_to_start(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(server.OwnedServer, "start", lambda self, timeout=None: seen.append(timeout))
    assert isinstance(server.start_owned_server(), server.OwnedServer)
    assert seen == [server.STARTUP_TIMEOUT_S] and server.STARTUP_TIMEOUT_S > 20


def test_importing_it_does_not_import_prefects_server_app():
    # The app runs in the server's process; importing its module here cost every command ~4 s of its start.
    code = "import sys, flows.server; print('prefect.server.api.server' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


@pytest.mark.slow
def test_a_server_starts_answers_and_stops_with_nothing_left():
    # In a child process without the harness's API URL: this test's process keeps the session harness's
    # settings as the other tests need them.
    code = ("from flows.server import start_owned_server\n"
            "import httpx\n"
            "s = start_owned_server(); p = s.server_process\n"
            "print(httpx.get(s.api_url + '/health').json(), s.port)\n"
            "s.stop(); s.stop(); print(p.poll() is not None, s.server_process)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    health, stopped = done.stdout.strip().splitlines()
    assert health.startswith("True ") and stopped == "True None"


def test_a_server_that_never_answers_is_one_line_that_says_what_to_do(monkeypatch):
    def start(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.\nmore")

    monkeypatch.setattr(server.OwnedServer, "start", start)
    with pytest.raises(RunError, match=r"did not answer within 120 s \(Timed out .*server\.\); run `prefect "
                                       r"server start` .* PREFECT_API_URL=.*STARTUP_TIMEOUT_SECONDS$") as info:
        server.start_owned_server()
    assert "\n" not in str(info.value)
