"""The run summary: one dict (``summary.json``) and its Markdown rendering (``summary.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ganlib.config import RunConfig
from ganlib.io import atomic_write_json, atomic_write_text
from ganlib.run import RunPaths


def build_summary(cfg: RunConfig, train: dict[str, Any], eval_table: pd.DataFrame,
                  gallery: dict[str, Any]) -> dict[str, Any]:
    """Plain-value summary of a finished run: config, training, best checkpoint and scores, files."""
    best = eval_table[eval_table["best"]].iloc[-1]
    manifest_path = RunPaths(cfg.run_dir).data / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return {
        "run_id": cfg.run_id,
        "run_dir": str(cfg.run_dir),
        "config": cfg.model_dump(mode="json"),
        "data": {k: manifest.get(k) for k in ("dataset", "count", "shape", "class_histogram", "key")},
        "train": train,
        "best": {
            "checkpoint": str(best["checkpoint"]),
            "step": int(best["step"]),
            "fd": float(best["fd"]),
            "is_mean": float(best["is_mean"]),
            "is_std": float(best["is_std"]),
            "classes_present": int(best["classes_present"]),
            "rarest_class_fraction": float(best["rarest_class_fraction"]),
        },
        "reference": {
            "real_is": float(best["real_is"]),
            "classifier_holdout_accuracy": float(best["classifier_holdout_accuracy"]),
        },
        "gallery": gallery,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    cfg, best, ref, train = summary["config"], summary["best"], summary["reference"], summary["train"]
    run_dir = Path(summary["run_dir"])
    lines = [
        f"# GAN run `{summary['run_id']}`",
        "",
        f"**{cfg['model']['name']}** on **{cfg['data']['dataset']}** "
        f"({summary['data']['count']} images, shape {summary['data']['shape']}), "
        f"{train['final_step']} steps of batch {cfg['train']['batch_size']}, lr {cfg['train']['lr']}, seed {cfg['seed']}.",
        "",
        "## Best checkpoint (lowest Fréchet distance in the domain classifier's features)",
        "",
        "| checkpoint | step | FD | classifier IS | classes present | rarest class |",
        "|---|---|---|---|---|---|",
        f"| `{best['checkpoint']}` | {best['step']} | {best['fd']:.3f} | {best['is_mean']:.3f} ± {best['is_std']:.3f} "
        f"| {best['classes_present']} | {100 * best['rarest_class_fraction']:.1f}% |",
        "",
        f"Reference: real images score IS {ref['real_is']:.3f}; the classifier's held-out accuracy is "
        f"{100 * ref['classifier_holdout_accuracy']:.2f}%.",
        "",
        f"Training: {train['seconds']:.0f} s at {train['images_per_sec']:.0f} images/s"
        + (f", resumed from step {train['resumed_from_step']}" if train["resumed_from_step"] else "") + ".",
        "",
        "## Files",
        "",
        f"- run directory: `{run_dir}`",
        f"- gallery: `{summary['gallery']['grid_5x5']}`, `{summary['gallery']['grid_10x10']}`",
        f"- samples: `{summary['gallery']['samples']}` ({summary['gallery']['num_samples']} images, seed {summary['gallery']['seed']})",
        f"- tables: `{run_dir / 'metrics' / 'train.parquet'}`, `{run_dir / 'metrics' / 'eval.parquet'}`",
        f"- config: `{run_dir / 'config.json'}`; checkpoints: `{run_dir / 'checkpoints'}`",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    paths = RunPaths(Path(run_dir))
    atomic_write_json(paths.summary, summary)
    md = paths.root / "summary.md"
    atomic_write_text(md, summary_markdown(summary))
    return paths.summary, md
