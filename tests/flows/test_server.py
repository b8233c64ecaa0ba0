"""flows/server.py: the run's own temporary Prefect server starts with time to spare, or fails in one line.

These call ``start_owned_server`` with ``OwnedServer.start`` replaced, so they touch no Prefect setting:
the session's test harness (PREFECT_API_URL) stays as the other tests need it.
"""

from __future__ import annotations

import pytest
from prefect.server.api.server import SubprocessASGIServer

from flows import server
from ganlib.errors import RunError


def test_the_server_gets_more_than_prefects_20_seconds_to_start(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(server.OwnedServer, "start", lambda self, timeout=None: seen.append(timeout))
    assert isinstance(server.start_owned_server(), server.OwnedServer)
    assert seen == [server.STARTUP_TIMEOUT_S] and server.STARTUP_TIMEOUT_S > 20


def test_ours_is_never_a_server_prefect_started_in_this_process():
    # Prefect's class keeps one instance per port; the test harness's (or Prefect's own ephemeral) server
    # is that instance for port None, and our start must not be skipped for it.
    prefects = SubprocessASGIServer()
    ours = server.OwnedServer()
    assert isinstance(ours, server.OwnedServer) and ours is not prefects


def test_a_server_that_never_answers_is_one_line_that_says_what_to_do(monkeypatch):
    def start(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.\nmore")

    monkeypatch.setattr(server.OwnedServer, "start", start)
    with pytest.raises(RunError, match=r"did not answer within 120 s \(Timed out .*server\.\); run `prefect "
                                       r"server start` .* PREFECT_API_URL=.*STARTUP_TIMEOUT_SECONDS$") as info:
        server.start_owned_server()
    assert "\n" not in str(info.value)
