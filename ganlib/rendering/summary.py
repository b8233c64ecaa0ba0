"""The run summary: one dict (``summary.json``) and its Markdown rendering (``summary.md``).

The Markdown comes in two forms. ``summary.md`` in the run folder shows its pictures through
relative paths (``gallery/grid_5x5.png``), so a Markdown viewer opened on the folder shows them
and the file stays small. The Prefect summary artifact cannot reach the run folder, so its form
embeds a small gallery and the loss plot as ``data:`` URIs: Prefect's UI renders those (checked
with headless Chromium against ``prefect server start``, Prefect 3.9; see the README's section
"Pictures, plots, the run report and the Prefect UI").
The full page is ``report.html`` (``ganlib.rendering.report_html``).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ganlib.config import RunConfig
from ganlib.runs.files import atomic_write_json, atomic_write_text
from ganlib.runs.paths import RunDir

# Widths of the pictures inlined in the Prefect artifact: a glance, not a download (~100 KB in all).
INLINE_GRID_PX = 300
INLINE_PLOT_PX = 720


def build_summary(cfg: RunConfig, train: dict[str, Any], eval_table: pd.DataFrame,
                  gallery: dict[str, Any], plots: dict[str, str] | None = None,
                  report: str | None = None) -> dict[str, Any]:
    """Plain-value summary of a finished run: config, training, best checkpoint and scores, files.

    ``gallery``: what ``ganlib.rendering.gallery`` made (paths and seeds); ``plots``:
    ``ganlib.rendering.plots.plot_run``'s paths; ``report``: the path of ``report.html``.
    """
    best = eval_table[eval_table["best"]].iloc[-1]
    selection, scores, floors = evaluation_summary(eval_table)
    manifest = RunDir(cfg.run_dir).read_manifest()
    return {
        "run_id": cfg.run_id,
        "run_dir": str(cfg.run_dir),
        "config": cfg.model_dump(mode="json"),
        "data": {k: manifest.get(k) for k in ("dataset", "count", "shape", "class_histogram", "key")},
        "train": train,
        "best": {
            "checkpoint": str(best["checkpoint"]),
            "step": int(best["step"]),
            "fd": float(best["fd"]),  # NaN on unlabelled data (no domain classifier): see ssl_fd
            "is_mean": float(best["is_mean"]),
            "is_std": float(best["is_std"]),
            "classes_present": int(best["classes_present"]),
            "rarest_class_fraction": float(best["rarest_class_fraction"]),
            **scores,
        },
        "selection": selection,
        "spaces": SCORE_SPACES,
        "reference": {
            "real_is": float(best["real_is"]),
            "classifier_holdout_accuracy": float(best["classifier_holdout_accuracy"]),
            "ssl_view_match": _plain(float(best.get("ssl_view_match", float("nan")))),
            "floor": floors,
        },
        "gallery": gallery,
        "plots": plots or {},
        "report": report,
    }


# Which feature space each score of ``best`` (and of eval.parquet) is in, by its name.
SCORE_SPACES = {
    "fd, kid_*, is_*, precision, recall, density, coverage, class_*": "domain-classifier: a CNN trained on the "
    "real images' labels (labelled data only)",
    "ssl_*": "self-supervised: a contrastive encoder trained on the real images without labels (every dataset)",
    "inception_*": "inception-v3: torch-fidelity's ImageNet network (when its weights are there)",
    "dinov2_*": "DINOv2 ViT: Meta's self-supervised ImageNet backbone (when a weights file is given)",
    "memorisation_*": "the space named by memorisation_space",
}

# Scores of the best row reported beside FD/IS (issue #5's metrics), when the table has them.
SUMMARY_SCORES = (
    "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_accuracy",
    "ssl_fd", "ssl_kid_mean", "ssl_kid_std", "ssl_precision", "ssl_recall", "ssl_density", "ssl_coverage",
    "inception_fid", "inception_kid_mean", "inception_kid_std", "inception_is_mean", "inception_is_std",
    "inception_precision", "inception_recall", "inception_density", "inception_coverage",
    "dinov2_fd", "dinov2_kid_mean", "dinov2_kid_std", "dinov2_precision", "dinov2_recall", "dinov2_density",
    "dinov2_coverage", "memorisation_fraction", "memorisation_median_distance", "memorisation_real_median_distance",
)
FLOOR_SCORES = ("fd", "kid_mean", "is_mean", "precision", "recall", "density", "coverage", "ssl_fd", "ssl_kid_mean",
                "ssl_precision", "ssl_recall", "ssl_density", "ssl_coverage", "inception_fid",
                "inception_kid_mean", "inception_is_mean", "inception_precision", "inception_recall",
                "inception_density", "inception_coverage", "dinov2_fd", "dinov2_kid_mean", "dinov2_precision",
                "dinov2_recall", "dinov2_density", "dinov2_coverage")


def _plain(value: Any) -> Any:
    """A JSON value: numbers as Python numbers, NaN (not measured) as None, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return None if value is None else str(value)


def evaluation_summary(eval_table: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """From an evaluation table: how the best row was chosen, its further scores (with seed spreads,
    the sample count, the feature spaces and the Inception status), and the real-vs-real floors.

    Tables written before these columns existed give what they have (empty dicts at worst).
    """
    best = eval_table[eval_table["best"]].iloc[-1]
    selection = {key: _plain(best[f"select_{key}"]) for key in ("metric", "direction", "generator", "note")
                 if f"select_{key}" in best}
    if "generator" in best:
        selection["best_generator"] = str(best["generator"])
    scores: dict[str, Any] = {}
    for key in SUMMARY_SCORES:
        for name in (key, f"{key}_seed_std"):
            if name in best:
                scores[name] = _plain(best[name])
    for key in ("generator", "num_samples", "num_seeds", "num_real", "feature_space", "feature_spaces",
                "inception_status", "dinov2_status", "memorisation_space", "memorisation_png"):
        if key in best:
            scores[key] = _plain(best[key])
    floors = {key: _plain(best[f"{key}_floor"]) for key in FLOOR_SCORES if f"{key}_floor" in best}
    if floors and "floor_num_samples" in best:
        floors["num_samples"] = _plain(best["floor_num_samples"])
    return selection, scores, floors


def _missing(value: Any) -> bool:
    """Not measured: None (summary.json) or NaN (the table's own value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, digits: int = 3) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def _percent(value: Any, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}%"


def _metrics_lines(summary: dict[str, Any]) -> list[str]:
    """The further metrics of the best checkpoint and their floors, as Markdown (empty for old summaries)."""
    best, floor = summary["best"], (summary["reference"].get("floor") or {})
    if "precision" not in best:
        return []
    rows = [("domain classifier", "fd", "kid_mean", "is_mean", "precision", "recall", "density", "coverage"),
            ("self-supervised", "ssl_fd", "ssl_kid_mean", "", "ssl_precision", "ssl_recall", "ssl_density",
             "ssl_coverage"),
            ("Inception-v3", "inception_fid", "inception_kid_mean", "inception_is_mean", "inception_precision",
             "inception_recall", "inception_density", "inception_coverage"),
            ("DINOv2", "dinov2_fd", "dinov2_kid_mean", "", "dinov2_precision", "dinov2_recall", "dinov2_density",
             "dinov2_coverage")]
    lines = ["| space | FD | KID | IS | precision | recall | density | coverage |", "|---|---|---|---|---|---|---|---|"]
    for label, *keys in rows:
        if all(_missing(best.get(k)) and _missing(floor.get(k)) for k in keys):
            continue  # a space that was not computed (the Inception status below says why)
        cells = [f"{_num(best.get(k), 4 if 'kid' in k else 3)} (floor {_num(floor.get(k), 4 if 'kid' in k else 3)})"
                 if k else "–" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    selection = summary.get("selection") or {}
    lines += [
        "",
        f"Floors: {floor.get('num_samples', '?')} held-out real images scored against the reference; no generator "
        f"can expect to beat them at these sample counts. Inception: {best.get('inception_status', '–')}.",
        "",
        "Spaces: the domain classifier's features need class labels; the self-supervised encoder's are learned "
        "from the real images alone, so every dataset has them (read them for unlabelled data).",
        "",
        f"Memorisation ({best.get('memorisation_space', '–')}): {_num(best.get('memorisation_fraction'), 3)} of the "
        "samples are closer to a training image than the median held-out real image is (about 0.5 is healthy; "
        "far above means near-copies)" + (f"; closest pairs: `{best['memorisation_png']}`" if
                                          best.get("memorisation_png") else "") + ".",
        "",
        f"Chosen by {selection.get('metric', 'fd')} ({selection.get('direction', 'min')}) among the "
        f"{selection.get('generator', 'ema')} generator's rows"
        + (f"; {selection['note']}" if selection.get("note") else "") + ".",
        "",
    ]
    return lines


def inline_png(path: Path, max_width: int) -> str:
    """A ``data:image/png;base64,...`` URI of an image file, shrunk to at most ``max_width`` pixels wide.

    Shrinking uses a box filter (an average), which keeps the enlarged cells of a grid clean.
    """
    with Image.open(path) as im:
        picture = im.convert("RGB") if im.mode not in ("L", "RGB", "RGBA") else im.copy()
    if picture.width > max_width:
        height = round(picture.height * max_width / picture.width)
        picture = picture.resize((max_width, height), Image.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(path: str | None, alt: str, run_dir: Path, inline: bool, max_width: int) -> str:
    """A Markdown image: inlined as a data URI, or a path relative to the run folder."""
    if not path or not Path(path).is_file():
        return f"*{alt}: not made*"
    if inline:
        return f"![{alt}]({inline_png(Path(path), max_width)})"
    try:
        rel = Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        rel = str(path)
    return f"![{alt}]({rel})"


def _training_line(train: dict[str, Any]) -> str:
    if train["resumed_from_step"] and train["final_step"] == train["resumed_from_step"]:
        return f"Training: already at step {train['final_step']}; nothing to train in this attempt."
    return (f"Training: {train['seconds']:.0f} s at {train['images_per_sec']:.0f} images/s"
            + (f", resumed from step {train['resumed_from_step']}" if train["resumed_from_step"] else "") + ".")


def _best_lines(best: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """The best checkpoint's headline table and its reference line: the classifier's scores on labelled data,
    the self-supervised space's alone on unlabelled data (no classifier: its columns would all be dashes)."""
    unlabelled = (best["feature_space"] == "none" if best.get("feature_space") is not None
                  else _missing(best["fd"]) and not best["classes_present"])  # summaries before the column
    if unlabelled and not _missing(best.get("ssl_fd")):  # else (nothing scored) the table's dashes, as before
        floor = ref.get("floor") or {}
        view = ref.get("ssl_view_match")
        return [
            "| checkpoint | step | FD (self-supervised space) | precision | recall | coverage |",
            "|---|---|---|---|---|---|",
            f"| `{best['checkpoint']}` | {best['step']} | "
            + " | ".join(_num(best.get(k)) for k in ("ssl_fd", "ssl_precision", "ssl_recall", "ssl_coverage")) + " |",
            "",
            "No class labels, so no domain classifier: the self-supervised space scores this run (an encoder "
            "trained on the real images alone" + ("" if _missing(view) else f", view match {_percent(view)}")
            + f"); held-out real images score FD {_num(floor.get('ssl_fd'))} there.",
        ]
    return [
        "| checkpoint | step | FD (classifier space) | FD (self-supervised space) | classifier IS | classes present "
        "| rarest class |",
        "|---|---|---|---|---|---|---|",
        f"| `{best['checkpoint']}` | {best['step']} | {_num(best['fd'])} | {_num(best.get('ssl_fd'))} "
        f"| {_num(best['is_mean'])} ± {_num(best['is_std'])} | {best['classes_present']} "
        f"| {_percent(best['rarest_class_fraction'])} |",
        "",
        f"Reference: real images score IS {_num(ref['real_is'])}; the classifier's held-out accuracy is "
        f"{_percent(ref['classifier_holdout_accuracy'], 2)}.",
    ]


def summary_markdown(summary: dict[str, Any], inline_images: bool = False) -> str:
    """The summary as Markdown. ``inline_images``: embed the small gallery and the loss plot as
    ``data:`` URIs (for the Prefect artifact) instead of referring to the files (for ``summary.md``)."""
    cfg, best, ref, train = summary["config"], summary["best"], summary["reference"], summary["train"]
    gallery, plots = summary["gallery"], summary.get("plots") or {}
    run_dir = Path(summary["run_dir"])
    report = summary.get("report")
    lines = [
        f"# GAN run `{summary['run_id']}`",
        "",
        f"**{cfg['model']['name']}** on **{cfg['data']['dataset']}** "
        f"({summary['data']['count']} images, shape {summary['data']['shape']}), "
        f"{train['final_step']} steps of batch {cfg['train']['batch_size']}, lr {cfg['train']['lr']}, "
        f"seed {cfg['seed']}.",
        "",
        "## Best checkpoint",
        "",
        *_best_lines(best, ref),
        "",
        *_metrics_lines(summary),
        _training_line(train),
        "",
        "## Pictures",
        "",
        f"Samples of the best checkpoint (step {best['step']}, fixed latents):",
        "",
        _picture(gallery.get("grid_5x5"), "best samples, 5x5", run_dir, inline_images, INLINE_GRID_PX),
        "",
        "Losses and D(x) / D(G(z)) over training:",
        "",
        _picture(plots.get("training"), "training curves", run_dir, inline_images, INLINE_PLOT_PX),
        "",
    ]
    if report:
        shown = Path(report).resolve() if inline_images else Path(report).name
        lines += ["The full report (all plots, the timelapse, interpolation, eval table, health events): "
                  f"open `{shown}` in a browser.", ""]
    lines += [
        "## Files",
        "",
        f"- run directory: `{run_dir}`",
        f"- gallery: `{gallery['grid_5x5']}`, `{gallery['grid_10x10']}`",
        f"- samples: `{gallery['samples']}` ({gallery['num_samples']} images, seed {gallery['seed']})",
    ]
    if gallery.get("progress_gif"):
        lines.append(f"- timelapse: `{gallery['progress_gif']}` (from `{run_dir / 'gallery' / 'steps'}`)")
    if gallery.get("interpolation_png"):
        lines.append(f"- interpolation: `{gallery['interpolation_png']}`, "
                     f"`{gallery.get('interpolation_gif')}`")
    if plots:
        lines.append("- plots: " + ", ".join(f"`{p}`" for p in plots.values()))
    if report:
        lines.append(f"- report: `{report}`")
    lines += [
        f"- tables: `{run_dir / 'metrics' / 'train.parquet'}`, `{run_dir / 'metrics' / 'eval.parquet'}`",
        f"- config: `{run_dir / 'config.json'}`; checkpoints: `{run_dir / 'checkpoints'}`",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` (pictures by relative path) into ``run_dir``."""
    paths = RunDir(Path(run_dir))
    atomic_write_json(paths.summary, summary)
    atomic_write_text(paths.summary_markdown, summary_markdown(summary))
    return paths.summary, paths.summary_markdown
