"""Exported generators: a checkpoint's G as TorchScript/ONNX files (``flows/export.py``), and samples from
such a file (``flows/generate.py --model-file``)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ganlib.export import export_generator, sample_exported
from tasks.common import RETRIES, artifact_key, retry_unless_user_error


@task(name="export-generator", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def export_task(checkpoint: str, out_dir: str, formats: list[str], use_ema: bool = True,
                class_names: list[str] | None = None, sample_seed: int | None = None,
                overwrite: bool = False) -> dict:
    """Export one checkpoint's generator; returns its model card and ``files`` {format: path}."""
    record = export_generator(Path(checkpoint), Path(out_dir), formats, use_ema=use_ema, class_names=class_names,
                              sample_seed=sample_seed, overwrite=overwrite)
    lines = [f"- **{fmt}**: `{path}`" for fmt, path in record["files"].items()]
    create_markdown_artifact(
        key=artifact_key("export", record["run_id"] or "run"),
        markdown=f"# Exported generator of {record['run_id']} ({record['checkpoint']}, {record['weights']})\n\n"
        + "\n".join(lines), description=f"Exported generator of run {record['run_id']}")
    return record


@task(name="generate-from-file", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def sample_exported_task(model_file: str, dest: str, num_samples: int, seed: int, batch_size: int = 500,
                         truncation: float | None = None) -> dict:
    """``num_samples`` images from an exported ``.pt``/``.onnx`` generator into ``dest`` (npz)."""
    return sample_exported(Path(model_file), Path(dest), num_samples, seed, batch_size=batch_size,
                           truncation=truncation)
