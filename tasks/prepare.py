"""Stage 1: dataset preparation, cached on the dataset spec."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from ganlib.config import DataConfig
from ganlib.data.store import prepare_dataset, store_path
from tasks.common import RETRIES, retry_unless_user_error


def _cache_key(context, parameters) -> str | None:
    """The store's identity while it exists on disk; no caching (so it is rebuilt) once it is gone."""
    manifest = store_path(parameters["data"], Path(parameters["out"])) / "manifest.json"
    if not manifest.is_file():
        return None
    return f"ganlib-store-{json.loads(manifest.read_text())['key']}-{manifest.stat().st_mtime_ns}"


@task(name="prepare-dataset", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error,
      cache_key_fn=_cache_key, persist_result=True)
def prepare_dataset_task(data: DataConfig, out: str) -> dict:
    """Build (or find) the prepared store; returns its path and manifest summary."""
    logger = get_run_logger()
    path = prepare_dataset(data, Path(out), log=logger.info)
    manifest = json.loads((path / "manifest.json").read_text())
    return {"store_dir": str(path), "count": manifest["count"], "shape": manifest["shape"],
            "num_classes": manifest["num_classes"], "key": manifest["key"]}
