"""Stage 4: the sample gallery from the best checkpoint, and the run summary artifact."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from ganlib.config import RunConfig
from ganlib.gallery import make_gallery
from ganlib.report import build_summary, summary_markdown, write_summary
from ganlib.run import RunPaths, resolve_device
from tasks.common import RETRIES, artifact_key, retry_unless_user_error


@task(name="gallery", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def gallery_task(config: RunConfig, best_checkpoint: str, train_record: dict) -> dict:
    """Render the grids and samples; write summary.json/summary.md and publish the summary."""
    seed = config.gallery.seed if config.gallery.seed is not None else config.seed
    gallery = make_gallery(Path(best_checkpoint), RunPaths(config.run_dir).gallery, config.gallery.num_samples,
                           seed, device=resolve_device(config.device), batch_size=config.eval.batch_size)
    table = pd.read_parquet(RunPaths(config.run_dir).eval_metrics)
    summary = build_summary(config, train_record, table, gallery)
    write_summary(summary, config.run_dir)
    create_markdown_artifact(key=artifact_key("summary", config.run_id), markdown=summary_markdown(summary),
                             description=f"Summary of run {config.run_id}")
    return summary
