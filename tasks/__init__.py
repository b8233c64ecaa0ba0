"""Prefect tasks: thin wrappers that add retries, caching, logging and UI artifacts to ganlib calls.

Importing this package first sets the project's offline-friendly Prefect defaults (no analytics,
no promotional content, ganlib's logger routed into Prefect's logs), unless the environment
already says otherwise. ``prefect.toml`` holds the same settings for the ``prefect`` CLI.
"""

import os

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ganlib",
    # ganlib also logs outside flows (notebooks, tests): no warning that those lines stay local.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}.items():
    os.environ.setdefault(_name, _value)

import logging as _logging  # noqa: E402 (after the environment defaults, on purpose)

# ganlib logs progress at INFO; Prefect forwards the "ganlib" logger (see above) but only what passes its level.
_logging.getLogger("ganlib").setLevel(_logging.INFO)


class _UserErrorsWithoutTraceback(_logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for a ``GanlibError`` (a user mistake
    with a one-line message saying what to do) the traceback is noise, so it is dropped."""

    def filter(self, record: _logging.LogRecord) -> bool:
        from ganlib.errors import GanlibError

        if record.exc_info and isinstance(record.exc_info[1], GanlibError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine"):
    _logging.getLogger(_name).addFilter(_UserErrorsWithoutTraceback())
