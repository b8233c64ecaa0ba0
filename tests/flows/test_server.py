"""flows/server.py: the run's own temporary Prefect server starts with time to spare, or fails in one line."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import server
from ganlib.errors import RunError


@pytest.fixture(autouse=True)
def no_api_url(monkeypatch):
    """No configured server, even after another test's session-wide harness set one."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_the_server_gets_more_than_prefects_20_seconds_to_start(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(server.OwnedServer, "start", lambda self, timeout=None: seen.append(timeout))
    monkeypatch.setattr(server.OwnedServer, "stop", lambda self: None)
    with server.temporary_server() as url:
        assert url is not None and url.startswith("http://127.0.0.1:")
    assert seen == [server.STARTUP_TIMEOUT_S] and server.STARTUP_TIMEOUT_S > 20


def test_a_server_that_never_answers_is_one_line_that_says_what_to_do(monkeypatch):
    def start(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.\nmore")

    monkeypatch.setattr(server.OwnedServer, "start", start)
    with pytest.raises(RunError, match=r"did not answer within 120 s \(Timed out .*server\.\); run `prefect "
                                       r"server start` .* PREFECT_API_URL=.*STARTUP_TIMEOUT_SECONDS$"):
        with server.temporary_server():
            pass
