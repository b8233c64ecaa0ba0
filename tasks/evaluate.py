"""Stage 3: checkpoint evaluation, published as a table artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from ganlib.config import RunConfig
from ganlib.evaluate import best_checkpoint, evaluate_run
from tasks.common import RETRIES, artifact_key, retry_unless_user_error

TABLE_COLUMNS = ["step", "checkpoint", "fd", "is_mean", "is_std", "classes_present", "rarest_class_fraction",
                 "num_samples", "best"]


@task(name="evaluate", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def evaluate_task(config: RunConfig, store_dir: str) -> dict:
    """Score every checkpoint; returns the table's path and the best checkpoint."""
    table = evaluate_run(config, Path(store_dir))
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in table[TABLE_COLUMNS].to_dict("records")]  # plain Python values, as artifacts need
    create_table_artifact(key=artifact_key("eval", config.run_id), table=rows,
                          description=f"Checkpoint evaluation of run {config.run_id}")
    return {"eval_table": str(config.run_dir / "metrics" / "eval.parquet"),
            "best_checkpoint": str(best_checkpoint(table, config.run_dir)),
            "num_checkpoints": len(table)}
