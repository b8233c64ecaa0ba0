"""How a command of flows/ starts and ends as a process: a head start for its temporary Prefect server, and
no garbage-collector time spent on its imports or at its exit. Standard library only: it runs first.

A script's first lines, before its heavy imports, and its last (``flows/main.py`` does the same for
``ganlib <command>``)::

    from flows import launch

    if __name__ == "__main__":  # before the imports below: the server starts while they run
        launch.begin("train", sys.argv[1:])
    ...
    if __name__ == "__main__":
        sys.exit(launch.run(main))

Measured on 2 cores of an AMD EPYC (AVX2), ``python flows/train.py``: the imports (torch, Prefect, pandas)
take about 6 s and the temporary server about 8 s to answer, most of it the import of Prefect's server app
in its own process; one after the other they were 14 s before the first task. The server's process now
starts first, its imports on the second core while the command's run on the first. The cyclic garbage
collector made nine full passes over the growing heap during the imports (0.2 s each, almost nothing to
free) and one more at exit (about 1 s): it is paused for the imports, and the heap they leave is frozen
(``gc.freeze``: kept, never traversed again), as it is again before the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import gc
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Runs in the server's process before it becomes uvicorn: die with the parent (Linux's
# PR_SET_PDEATHSIG survives exec), then exec the command Prefect would have run.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit(1)  # the parent died before prctl took effect\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)

# The commands that run flows on a temporary server when no PREFECT_API_URL is set (``serve`` needs a real one).
SERVER_COMMANDS = frozenset({"train", "evaluate", "generate", "export", "continue", "sweep"})

# Modules a command imports only once its run is under way, imported while it waits for its server instead:
# torch._dynamo (about 2 s on 2 cores) is imported by the first call of a torch.optim optimiser, which
# torch wraps in ``torch._disable_dynamo``.
WARM_IMPORTS: dict[str, tuple[str, ...]] = {
    "train": ("torch._dynamo",), "continue": ("torch._dynamo",), "sweep": ("torch._dynamo",),
}

# Flags that mean no server will be wanted (a help text, or a plan only), with argparse's abbreviations.
_NO_SERVER_FLAGS = ("--help", "--dry-run")

_head_start: ServerProcess | None = None
_warm: list[str] = []


def free_port() -> int:
    """A loopback port the kernel says is free now (it may be taken before the server binds it: uvicorn
    then exits with code 3, and ``flows.server.OwnedServer.start`` launches again on another)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """The process of a temporary Prefect server (uvicorn serving Prefect's API app, with the command and
    environment Prefect 3's own temporary server gets) on a free loopback port, in a session of its own
    (the terminal's Ctrl-C reaches only the run, which then stops it) and, on Linux, sent SIGTERM by the
    kernel when the process that started it dies, however it died."""

    def __init__(self, settings_env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.settings_env = dict(settings_env or {})
        self.process: subprocess.Popen[Any] = self._popen()

    def _popen(self) -> subprocess.Popen[Any]:
        spec = importlib.util.find_spec("prefect")  # finds the package without importing it
        app_dir = Path(spec.submodule_search_locations[0]).parent  # type: ignore[union-attr,index]
        uvicorn = ["-m", "uvicorn", "--app-dir", str(app_dir), "--factory", "prefect.server.api.server:create_app",
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **self.settings_env}
        return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *uvicorn], env=env,
                                start_new_session=True)

    def relaunch(self) -> None:
        """Start again on another free port (this one was taken before the server could bind it)."""
        self.port = free_port()
        self.process = self._popen()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there 5 s later (nothing if it had already exited)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wants_server(argv: list[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a command line will most likely start a temporary server: no ``PREFECT_API_URL`` in the
    environment (a profile or a project file may still set one: then the head start is stopped unused)
    and no ``--help`` or ``--dry-run``."""
    def no_server(arg: str) -> bool:
        return arg == "-h" or (len(arg) > 2 and any(flag.startswith(arg) for flag in _NO_SERVER_FLAGS))

    return not environ.get("PREFECT_API_URL") and not any(map(no_server, argv))


def begin(command: str, argv: list[str]) -> None:
    """The first call of a command line, before its heavy imports: pause the garbage collector (``run``
    resumes it) and, when the command runs flows and ``wants_server(argv)``, start the temporary server's
    process now. ``take_head_start`` hands it to the command; unused, it is stopped at exit. While the
    command later waits for it to answer, ``warm_up`` imports what the command will need next.

    The server's process reads the same environment, Prefect profile and project files as the command,
    so it gets the settings Prefect would have passed it (``flows.server.OwnedServer`` passes them
    explicitly for a server started later, when settings may have been changed in the process).
    """
    global _head_start
    gc.disable()
    dump_stacks_on_sigusr1()
    if command in SERVER_COMMANDS and _head_start is None and wants_server(argv):
        _head_start = ServerProcess()
        _warm[:] = WARM_IMPORTS.get(command, ())
        atexit.register(discard_head_start)


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints the stack of every thread of a command that seems stuck to its stderr, and
    the command goes on (``faulthandler``: it works even where Python code cannot run, inside a C call)."""
    if hasattr(signal, "SIGUSR1"):  # not on Windows
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def warm_up() -> bool:
    """Import the next module the command will need (``WARM_IMPORTS``); False when none is left. Called
    between health checks while the command waits for its server, in the main thread: nothing else
    imports then, and the second core is busy starting the server anyway."""
    while _warm:
        with contextlib.suppress(ImportError):
            importlib.import_module(_warm.pop(0))
            return True
    return False


def take_head_start() -> ServerProcess | None:
    """The server process ``begin`` started, once (None if it started none, or it was taken)."""
    global _head_start
    started, _head_start = _head_start, None
    return started


def discard_head_start() -> None:
    """Stop the head start if nobody took it (a server was configured after all, or the command ended early)."""
    started = take_head_start()
    if started is not None:
        with contextlib.suppress(ProcessLookupError):
            started.process.send_signal(signal.SIGTERM)  # no wait: it was never used, and dies on its own


def run(main: Callable[[], int]) -> int:
    """A command line's body after its imports: the garbage collector back on, for the objects the run
    makes, with the imports' heap frozen; frozen again at the end, so the interpreter's last collection
    at exit has nothing large to traverse."""
    gc.enable()
    gc.freeze()
    try:
        return main()
    finally:
        gc.freeze()
