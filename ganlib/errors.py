"""Errors meant for people.

A ``GanlibError`` is a user mistake or an environment problem the user can fix (a bad config
value, a missing dataset file, a corrupt checkpoint). Its message is one line that says what is
wrong and what to do; entry points print it without a traceback and exit with code 2.
Anything else that escapes is a bug and keeps its traceback.
"""


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


class TrainingDiverged(GanlibError):
    """Training produced non-finite losses again and again, even after rolling back."""


class HealthStop(GanlibError):
    """Training was stopped because a health monitor fired and ``train.stop_on_health`` is set."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
