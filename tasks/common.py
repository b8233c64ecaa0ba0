"""What the tasks share: retry policy, artifact keys, and stopping politely on SIGTERM and SIGINT."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from collections.abc import Iterator

from ganlib.errors import ConfigError, DataError, DeviceMemoryError, HealthStop, StorageError, TrainingDiverged

RETRIES = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logging.getLogger("ganlib")


class RunInterrupted(Exception):
    """A stage stopped on a signal after saving its work; not retried. ``signum``: the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGTERM (a spot preemption, a cancelled flow run, ``kill``) and the first SIGINT
    (Ctrl-C) only record a stop request, which training polls between steps; a second SIGINT stops at
    once. Installed around the training stage by its task, in the main thread (elsewhere: inactive)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: no more waiting
        if self.signum is None:
            log.warning("%s received: finishing the current step, then checkpointing", signal.Signals(signum).name)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a bad config or bad data fails the same way every time."""
    try:
        state.result()
    except (ConfigError, DataError, DeviceMemoryError, StorageError, HealthStop, TrainingDiverged, RunInterrupted):
        return False
    except Exception:
        return True
    return False


def artifact_key(kind: str, run_id: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``kind`` of run ``run_id``."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    return f"{kind}-{slug}"[:100]
