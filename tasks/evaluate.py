"""Stage 3: checkpoint evaluation, published as a table artifact."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact

from ganlib.config import RunConfig
from ganlib.evaluation.evaluate import best_checkpoint, best_generator, evaluate_run
from ganlib.runs.paths import RunDir
from tasks.common import RETRIES, artifact_key, retry_unless_user_error

TABLE_COLUMNS = ["step", "checkpoint", "generator", "fd", "kid_mean", "is_mean", "is_std", "precision", "recall",
                 "density", "coverage", "classes_present", "rarest_class_fraction", "ssl_fd", "ssl_kid_mean",
                 "ssl_precision", "ssl_recall", "ssl_coverage", "inception_fid",
                 "inception_kid_mean", "inception_is_mean", "memorisation_fraction", "num_samples", "best"]


def artifact_rows(table: pd.DataFrame) -> list[dict]:
    """The evaluation table as the UI's table artifact: ``TABLE_COLUMNS`` in plain Python values, less the
    columns of a space that did not score (no domain classifier on unlabelled data, Inception skipped)."""
    domain = "fd" in table and bool(table["fd"].notna().any())
    columns = [c for c in TABLE_COLUMNS if c in table and (
        c in ("step", "checkpoint", "generator", "num_samples", "best")
        or (bool(table[c].notna().any()) and (domain or c not in ("classes_present", "rarest_class_fraction"))))]
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in table[columns].to_dict("records")]


@task(name="evaluate", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def evaluate_task(config: RunConfig, store_dir: str, rescore: bool = False) -> dict:
    """Score every checkpoint; returns the table's path, the best checkpoint and its generator."""
    table = evaluate_run(config, Path(store_dir), rescore=rescore)
    rows = artifact_rows(table)
    status = str(table["inception_status"].iloc[0]) if "inception_status" in table else ""
    create_table_artifact(key=artifact_key("eval", config.run_id), table=rows,
                          description=f"Checkpoint evaluation of run {config.run_id}"
                          + (f" (Inception metrics {status})" if status.startswith("skipped") else ""))
    return {"eval_table": str(RunDir(config.run_dir).eval_metrics),
            "best_checkpoint": str(best_checkpoint(table, config.run_dir)),
            "best_generator": best_generator(table),
            "num_checkpoints": int(table["step"].nunique())}
