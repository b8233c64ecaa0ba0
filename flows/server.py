"""The temporary Prefect server of a local run, owned by the run: in a session of its own, and gone with it.

Without ``PREFECT_API_URL`` Prefect starts a temporary server as a child in the caller's process group.
Ctrl-C at the terminal then reached the server too, which died at once while training went on, and
every later call to the API failed and was retried for minutes; a SIGKILLed run left its server
running (one was still up 45 minutes later). Here the server is started in its own session (the
terminal's signals reach only the run, which stops politely and then stops the server) and, on Linux,
is sent SIGTERM by the kernel when the process that started it dies, however it died.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prefect.events.worker import EventsWorker
from prefect.logging import get_logger
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from flows.launch import ServerProcess, discard_head_start, take_head_start, warm_up
from ganlib.errors import RunError, first_line

# Seconds to wait for the temporary server to answer. Prefect's default, 20 s, was too short for a first
# start in a fresh PREFECT_HOME (it creates and migrates its database) on a 2-core AMD EPYC VM: the run
# died with a traceback. A larger PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS still wins.
STARTUP_TIMEOUT_S = 120


class OwnedServer:
    """Prefect's temporary server, owned by this process: a ``flows.launch.ServerProcess`` (its own session,
    gone with this process), the head start ``flows.launch.begin`` made when there is one, else one started
    here with the process's current Prefect settings.

    Written here rather than derived from Prefect's ``SubprocessASGIServer``: that class lives in the
    module of the server's whole web app, and importing it cost every command about 4 s of its start
    on a 2-core CPU, for an app that runs in the child process anyway. (Prefect's class also kept one
    instance per port in a class-wide dict, so it handed back a server Prefect had started without ours.)
    """

    def __init__(self) -> None:
        self._server: ServerProcess | None = None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    @property
    def server_process(self) -> subprocess.Popen[Any] | None:
        return self._server.process if self._server is not None else None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> ServerProcess:
        started = take_head_start()
        if started is not None:
            return started
        return ServerProcess(get_current_settings().to_environment_variables(exclude_unset=True))

    def start(self, timeout: float) -> None:
        """Start the server on a free loopback port (or take the head start) and wait up to ``timeout``
        seconds for its health check; RuntimeError if it never answers."""
        deadline = time.monotonic() + timeout
        self._server = server = self._launch()
        get_logger().info("Starting temporary server on http://127.0.0.1:%d (set PREFECT_API_URL to use a "
                          "server of your own)", self.port)
        atexit.register(self.stop)
        with httpx.Client() as client:
            while True:
                code = server.process.poll()
                if code == 3:  # uvicorn could not bind: the port was taken after we chose it
                    server.relaunch()
                elif code is not None:
                    self._server = None
                    raise RuntimeError(f"the server process exited with code {code} before answering")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.api_url}/health", timeout=5).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Timed out while attempting to connect to the temporary Prefect API server.")
                if not warm_up():  # the command's later imports, while there is time
                    time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it if it is still there 5 s later; safe to call more than once."""
        server, self._server = self._server, None
        if server is None:
            return
        get_logger().info("Stopping temporary server on http://127.0.0.1:%d", server.port)
        server.stop()


def start_owned_server() -> OwnedServer:
    """Start the run's temporary server, waiting ``STARTUP_TIMEOUT_S`` (or the longer configured timeout)
    for it to answer; one line that says what to do if it never does."""
    server = OwnedServer()
    timeout = max(STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    try:
        server.start(timeout=timeout)
    except RuntimeError as err:
        raise RunError(f"the temporary Prefect server did not answer within {timeout} s "
                       f"({first_line(err)}); run `prefect server start` in another terminal and set "
                       "PREFECT_API_URL=http://127.0.0.1:4200/api, or raise "
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") from err
    return server


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Point Prefect at a temporary server owned by this process, unless an API URL is configured.

    Yields the API URL used (None when one was configured: a real server, or a test harness's).
    """
    if PREFECT_API_URL.value():
        discard_head_start()  # started for nothing: a profile or project file names a server
        yield None
        return
    server = start_owned_server()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:  # the run's last logs and events go to the server while it is there (else: retries at exit)
                for service in (APILogWorker, EventsWorker):
                    with contextlib.suppress(Exception):
                        service.drain_all(timeout=5)
    finally:
        server.stop()
