"""Re-score an existing run without training: new metrics, other settings, the best checkpoint chosen again.

Run it:

    python flows/evaluate.py --run-id digits-long                         # the run's eval settings, new metrics
    python flows/evaluate.py --run-id digits-long --num-seeds 3           # mean and std over 3 latent seeds
    python flows/evaluate.py --run-id digits-long --select-metric precision --select-generator raw
    python flows/evaluate.py --run-id digits-long --inception on \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth --inception-weights-sha256 HEX
    python flows/evaluate.py --run-id digits-long --rescore --no-gallery  # score everything again, table only

It reads <out>/<run-id>/config.json, applies the evaluation flags, scores every checkpoint (rows
already scored with the same settings are reused unless --rescore), rewrites metrics/eval.parquet
and, unless --no-gallery, renders the gallery of the (possibly new) best checkpoint and rewrites
summary.json, summary.md and report.html. Training settings are not touched. Like
flows/train.py, with no PREFECT_API_URL set it starts a temporary Prefect server; mistakes (no
such run, a bad flag value, a weights file with the wrong sha256) fail first, with one line and
exit code 2.
"""

from __future__ import annotations  # noqa: I001 (tasks is imported before prefect on purpose)

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (sets the project's Prefect defaults before prefect is imported)
from prefect import flow, runtime

from flows.cli import OneLineParser
from ganlib.runs import checkpoint as ckpt
from ganlib.config import RunConfig, build_config
from ganlib.data.sources import check_source
from ganlib.data.store import store_path
from ganlib.errors import GanlibError, RunError
from ganlib.evaluation.inception import check_weights_file
from ganlib.runs.lock import check_not_running, run_lock
from ganlib.runs.paths import RunPaths, resolve_device
from tasks.evaluate import evaluate_task
from tasks.gallery import gallery_task
from tasks.prepare import prepare_dataset_task


def plan_evaluation(run_dir: Path | str, eval_settings: dict[str, Any] | None = None,
                    device: str | None = None) -> RunConfig:
    """The run's config with ``eval_settings`` (fields of ``EvalConfig``) applied, checked before any work.

    Raises a one-line ``GanlibError``: no such run, no checkpoints, an invalid setting, a missing
    dataset, a weights file that is missing or has the wrong sha256, a run that is training now.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise RunError(f"no run at {paths.root} ({paths.config} is missing); check --run-id and --out")
    try:
        saved = json.loads(paths.config.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read {paths.config}: {str(err).splitlines()[0]}") from None
    if not isinstance(saved, dict):
        raise RunError(f"cannot read {paths.config}: not a JSON object")
    # The run may have moved: its directory, not the saved out/run_id, says where it is.
    saved.update({"out": str(paths.root.parent), "run_id": paths.root.name})
    saved["eval"] = {**(saved.get("eval") or {}), **(eval_settings or {})}
    if device is not None:
        saved["device"] = device
    config = build_config(saved)
    if not ckpt.list_checkpoints(paths.checkpoints):
        raise RunError(f"run {config.run_id!r} has no checkpoints in {paths.checkpoints}; train it first")
    resolve_device(config.device)
    if not store_path(config.data, config.out).is_dir():
        check_source(config.data)  # the prepared store is gone: it is rebuilt from the source
    if config.eval.inception_weights is not None and config.eval.inception != "off":
        check_weights_file(config.eval.inception_weights, config.eval.inception_weights_sha256 or "")
    check_not_running(config.run_dir)
    return config


def _train_record(config: RunConfig) -> dict[str, Any]:
    """What the summary says about training: the last summary's record, or the checkpoints' when there is none."""
    paths = RunPaths(config.run_dir)
    if paths.summary.is_file():
        try:
            train = json.loads(paths.summary.read_text()).get("train")
            if isinstance(train, dict) and "final_step" in train:
                return train
        except ValueError:
            pass  # an unreadable summary is rewritten below
    found = ckpt.list_checkpoints(paths.checkpoints)
    last = found[-1][0]
    return {"run_dir": str(paths.root), "final_step": last, "total_steps": last, "resumed_from_step": last,
            "checkpoints": [str(p) for _, p in found], "metrics_path": str(paths.train_metrics), "seconds": 0.0,
            "images_per_sec": 0.0, "stopped_early": False}


def _flow_run_name() -> str:
    return f"evaluate-{Path(runtime.flow_run.parameters.get('run_dir', 'run')).name}"


@flow(name="evaluate-run", flow_run_name=_flow_run_name, log_prints=True)
def evaluate_existing_run(run_dir: str, eval_settings: dict[str, Any] | None = None, device: str | None = None,
                          rescore: bool = False, gallery: bool = True) -> dict[str, Any]:
    """Score every checkpoint of the run in ``run_dir`` with its eval settings updated by ``eval_settings``;
    with ``gallery``, render the best checkpoint's pictures and rewrite the summary and report."""
    config = plan_evaluation(run_dir, eval_settings, device)
    with run_lock(config.run_dir):  # not while the run trains (or another evaluation writes)
        store = prepare_dataset_task(config.data, str(config.out))
        evaluation = evaluate_task(config, store["store_dir"], rescore)
        summary = gallery_task(config, evaluation["best_checkpoint"], _train_record(config)) if gallery else None
    print(f"evaluated {evaluation['num_checkpoints']} checkpoints of {config.run_id}: best "
          f"{Path(evaluation['best_checkpoint']).name} ({evaluation['best_generator']})")
    return {**evaluation, "summary": summary}


# --- command line -------------------------------------------------------------------------------

# flag, EvalConfig field, type, help
FLAGS: list[tuple[str, str, type, str]] = [
    ("--num-samples", "num_samples", int, "generated samples per checkpoint and seed"),
    ("--num-real", "num_real", int, "real reference images (and as many held out); default num-samples"),
    ("--num-seeds", "num_seeds", int, "latent seeds per checkpoint; the table gets mean and <metric>_seed_std"),
    ("--generators", "generators", str, "both (raw and EMA rows) or selected"),
    ("--select-metric", "select_metric", str, "metric choosing the best checkpoint (fd, kid_mean, precision, "
     "recall, coverage, inception_fid, ...)"),
    ("--select-direction", "select_direction", str, "auto (default), min or max"),
    ("--inception", "inception", str, "auto (GPU only), on or off"),
    ("--inception-weights", "inception_weights", str, "torch-fidelity's Inception weights file (offline)"),
    ("--inception-weights-sha256", "inception_weights_sha256", str, "its sha256 (sha256sum FILE)"),
    ("--memorisation", "memorisation", str, "pixels, domain or off"),
    ("--nearest-k", "nearest_k", int, "k of precision/recall/density/coverage (default 3)"),
    ("--batch-size", "batch_size", int, "generation and feature batch"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="the run to evaluate")
    parser.add_argument("--out", default="artifacts", help="output root the run lives in (default artifacts)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the run's)")
    for flag, field, kind, help_text in FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=help_text,
                            metavar=flag[2:].upper().replace("-", "_"))
    parser.add_argument("--select-generator", choices=("ema", "raw"),
                        help="choose the best among the EMA (default) or the raw generator's rows")
    parser.add_argument("--rescore", action="store_true", help="score every checkpoint again, reusing no row")
    parser.add_argument("--no-gallery", action="store_true",
                        help="only the table: do not re-render the gallery, summary and report")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved eval settings and exit")
    return parser.parse_args(argv)


def eval_settings_from(args: argparse.Namespace) -> dict[str, Any]:
    settings = {field: getattr(args, field) for _, field, _, _ in FLAGS if getattr(args, field) is not None}
    if args.select_generator is not None:
        settings["use_ema"] = args.select_generator == "ema"
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = str(Path(args.out) / args.run_id)
    settings = eval_settings_from(args)
    try:
        # Checked here first: a mistake fails in a second, not after the Prefect server has started.
        config = plan_evaluation(run_dir, settings, args.device)
        if args.dry_run:
            print(json.dumps(config.eval.model_dump(mode="json"), indent=2, sort_keys=True))
            return 0
        result = evaluate_existing_run(run_dir, settings, args.device, args.rescore, not args.no_gallery)
    except GanlibError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run again; rows already scored are kept", file=sys.stderr)
        return 130
    print(f"done: {run_dir}  best {Path(result['best_checkpoint']).name} ({result['best_generator']})  "
          f"table {result['eval_table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
