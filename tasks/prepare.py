"""Stage 1: dataset preparation, cached on the dataset spec."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from ganlib.config import DataConfig
from ganlib.data.store import MANIFEST, prepare_dataset, read_store_manifest, store_path
from tasks.common import RETRIES, retry_unless_user_error


def _cache_key(context, parameters) -> str | None:
    """The store's identity while it exists on disk; no caching (so it is rebuilt) once it is gone."""
    path = store_path(parameters["data"], Path(parameters["out"]))
    manifest = read_store_manifest(path)
    if manifest is None:
        return None
    return f"ganlib-store-{manifest['key']}-{(path / MANIFEST).stat().st_mtime_ns}"


@task(name="prepare-dataset", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error,
      cache_key_fn=_cache_key, persist_result=True)
def prepare_dataset_task(data: DataConfig, out: str) -> dict:
    """Build (or find) the prepared store; returns its path and manifest summary."""
    logger = get_run_logger()
    path = prepare_dataset(data, Path(out), log=logger.info)
    manifest = read_store_manifest(path)
    return {"store_dir": str(path), "count": manifest["count"], "shape": manifest["shape"],
            "num_classes": manifest["num_classes"], "key": manifest["key"]}
