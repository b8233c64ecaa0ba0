"""What the tasks share: retry policy and artifact keys."""

from __future__ import annotations

import re

from ganlib.errors import ConfigError, DataError, HealthStop, TrainingDiverged

RETRIES = 2


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a bad config or bad data fails the same way every time."""
    try:
        state.result()
    except (ConfigError, DataError, HealthStop, TrainingDiverged):
        return False
    except Exception:
        return True
    return False


def artifact_key(kind: str, run_id: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``kind`` of run ``run_id``."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    return f"{kind}-{slug}"[:100]
