"""Stage 4: pictures and the run summary.

From the evaluated run: the best checkpoint's gallery, one fixed-noise grid per checkpoint and
their timelapse, the latent interpolation, the plots, ``summary.json``/``summary.md``,
``report.html``, and the summary as a Prefect markdown artifact (keyed per run, so each run's
latest summary replaces the previous version). A few seconds on the CPU for the default run.

``generate_task`` (used by ``flows/generate.py``) exports many samples from one checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ganlib.config import RunConfig
from ganlib.evaluation.evaluate import best_generator
from ganlib.rendering.gallery import export_samples, make_gallery, make_interpolation, render_step_grids, save_timelapse
from ganlib.rendering.plots import plot_run
from ganlib.rendering.report_html import write_report
from ganlib.rendering.summary import build_summary, summary_markdown, write_summary
from ganlib.runs.device import resolve_device
from ganlib.runs.paths import RunDir
from tasks.common import RETRIES, artifact_key, retry_unless_user_error


@task(name="gallery", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def gallery_task(config: RunConfig, best_checkpoint: str, train_record: dict) -> dict:
    """Render the pictures, plots and report; write summary.json/summary.md and publish the summary."""
    paths, device = RunDir(config.run_dir), resolve_device(config.device)
    seed = config.gallery_seed
    manifest = paths.read_manifest()
    evals = paths.read_table(paths.eval_metrics)
    # Render the generator the best row was chosen among (eval.use_ema, unless the run keeps no EMA).
    common = {"device": device, "batch_size": config.eval.batch_size, "use_ema": best_generator(evals) == "ema",
              "class_names": manifest.get("class_names")}
    gallery = make_gallery(Path(best_checkpoint), paths.gallery, config.gallery.num_samples, seed, **common)
    steps = render_step_grids(paths.checkpoints, paths.gallery / "steps", seed, **common)
    gallery["steps"] = [str(p) for _, p in steps]
    gallery["progress_gif"] = str(save_timelapse(steps, paths.gallery / "progress.gif"))
    gallery.update(make_interpolation(Path(best_checkpoint), paths.gallery, seed, **common))
    plots = plot_run(paths.root)
    summary = build_summary(config, train_record, evals, gallery, plots,
                            report=str(paths.report))
    write_summary(summary, config.run_dir)
    write_report(paths.root)  # last: it lists the files above
    create_markdown_artifact(key=artifact_key("summary", config.run_id),
                             markdown=summary_markdown(summary, inline_images=True),
                             description=f"Summary of run {config.run_id}")
    return summary


@task(name="generate", retries=RETRIES, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def generate_task(checkpoint: str, dest: str, num_samples: int, seed: int, fmt: str, device: str,
                  batch_size: int, class_names: list[str] | None = None, use_ema: bool = True,
                  truncation: float | None = None) -> dict:
    """Export ``num_samples`` images of one checkpoint to ``dest`` (npz file or PNG folder)."""
    return export_samples(Path(checkpoint), Path(dest), num_samples, seed, fmt=fmt,
                          device=resolve_device(device), batch_size=batch_size, class_names=class_names,
                          use_ema=use_ema, flag="--batch-size {n}", truncation=truncation)
