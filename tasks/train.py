"""Stage 2: training. No cache: resume from the run's newest checkpoint is what makes retries cheap."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from ganlib.config import RunConfig
from ganlib.train import train
from tasks.common import RETRIES, retry_unless_user_error


@task(name="train", tags=["gpu"], retries=RETRIES, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error)
def train_task(config: RunConfig, store_dir: str) -> dict:
    """Train or resume the run; returns steps, checkpoint paths and speed (plain values)."""
    return train(config, Path(store_dir)).to_dict()
