"""Errors meant for people.

A ``GanlibError`` is a user mistake or an environment problem the user can fix (a bad config
value, a missing dataset file, a corrupt checkpoint). Its message is one line that says what is
wrong and what to do; entry points print it without a traceback and exit with code 2.
Anything else that escapes is a bug and keeps its traceback.
"""

import errno


class GanlibError(Exception):
    """Base class for errors whose message is shown to the user as one line."""


class ConfigError(GanlibError):
    """A configuration value is invalid or inconsistent with another."""


class DataError(GanlibError):
    """A dataset source is missing, unreadable or malformed."""


class CheckpointError(GanlibError):
    """A checkpoint is missing, corrupt, or does not match the run's configuration."""


class RunError(GanlibError):
    """A run directory cannot be used (bad run id, locked by another process, ...)."""


class StorageError(GanlibError, OSError):
    """A file could not be written because its disk or quota is full, or its place is read-only.

    Also an ``OSError`` (its ``errno``, ``strerror`` and ``filename`` are the failed write's), so code that
    cleans up after any failed write still does. Nothing already saved is lost: every file is replaced
    atomically, so the previous version of the one being written is intact. Made by
    ``ganlib.runs.storage.writing``.
    """

    kept = "what was saved before is kept"  # a writer that knows more says what (the previous checkpoint)

    def __str__(self) -> str:
        if self.errno is None:  # rebuilt from its message alone (a data-parallel rank's error.json)
            return super().__str__()
        if self.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"no space left to write {self.filename} ({self.strerror}): free disk space and run again; "
                    f"{self.kept}")
        return (f"cannot write {self.filename} ({self.strerror}): make its directory writable, or choose another "
                f"--out (or GANLIB_CACHE_DIR for the shared cache), and run again; {self.kept}")


class DeviceMemoryError(GanlibError):
    """The GPU (or Apple's MPS) ran out of memory for the run's settings; they must change, so it is not retried."""


class TrainingDiverged(GanlibError):
    """Training produced non-finite losses again and again, even after rolling back."""


class HealthStop(GanlibError):
    """Training was stopped because a health monitor fired and ``train.stop_on_health`` is set."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
