"""Re-score an existing run without training: new metrics, other settings, the best checkpoint chosen again.

Run it:

    python flows/evaluate.py --run-id digits-long                         # the run's eval settings, new metrics
    python flows/evaluate.py --run-id digits-long --num-seeds 3           # mean and std over 3 latent seeds
    python flows/evaluate.py --run-id digits-long --select-metric precision --select-generator raw
    python flows/evaluate.py --run-id digits-long --inception on \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth --inception-weights-sha256 HEX
    python flows/evaluate.py --run-id digits-long --dinov2 on \\
        --dinov2-weights dinov2_vits14_pretrain.pth --dinov2-weights-sha256 HEX --select-metric dinov2_fd
    python flows/evaluate.py --run-id digits-long --rescore --no-gallery  # score everything again, table only
    python flows/evaluate.py --run-id digits-long --num-seeds 3 --dry-run # the config it would use, as JSON

It reads <out>/<run-id>/config.json, applies the evaluation flags, scores every checkpoint (rows
already scored with the same settings are reused unless --rescore), rewrites metrics/eval.parquet
and, unless --no-gallery, renders the gallery of the (possibly new) best checkpoint and rewrites
summary.json, summary.md and report.html. Training settings are not touched. Like
flows/train.py, with no PREFECT_API_URL set it starts a temporary Prefect server; mistakes (no
such run, a bad flag value, a weights file with the wrong sha256) fail first, with one line and
exit code 2. The eval flags default to the run's own settings (config.json), not to the config's
defaults shown by flows/train.py --help. --dry-run makes the same checks and prints the run's
config with the eval flags applied (what the evaluation will use) as JSON.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("evaluate", sys.argv[1:])

import argparse
from pathlib import Path
from typing import Any

from flows.cli import (  # before prefect: importing flows sets the project's Prefect defaults
    add_config_flags,
    add_device_flag,
    add_dry_run,
    add_run_flags,
    cli_parser,
    given_fields,
    print_json,
    run_main,
)

# isort: split
from prefect import flow, runtime

from flows.server import temporary_server
from ganlib.config import RunConfig
from ganlib.data.sources import check_source, find_source
from ganlib.data.store import store_path, trained_store
from ganlib.errors import RunError
from ganlib.evaluation import dinov2
from ganlib.evaluation.inception import check_weights_file
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.device import resolve_device
from ganlib.runs.lock import check_not_running, run_lock
from ganlib.runs.paths import RunDir
from tasks.evaluate import evaluate_task
from tasks.gallery import gallery_task
from tasks.prepare import prepare_dataset_task


def plan_evaluation(run_dir: Path | str, eval_settings: dict[str, Any] | None = None,
                    device: str | None = None, data_root: str | None = None) -> RunConfig:
    """The run's config with ``eval_settings`` (fields of ``EvalConfig``) applied, checked before any work.
    ``data_root``: where the run's images are now, if they moved (used only if its prepared store is gone).

    Raises a one-line ``GanlibError``: no such run, no checkpoints, an invalid setting, a missing
    dataset, a weights file that is missing or has the wrong sha256, a run that is training now.
    """
    paths = RunDir(Path(run_dir))
    saved = paths.read_config()
    overrides: dict[str, Any] = {"eval": {**(saved.get("eval") or {}), **(eval_settings or {})}}
    if device is not None:
        overrides["device"] = device
    if data_root is not None:
        overrides["data"] = {**(saved.get("data") or {}), "data_root": data_root}
    config = paths.load_config(**overrides)  # placed where the run is now: it may have moved
    if not ckpt.list_checkpoints(paths.checkpoints):
        raise RunError(f"run {config.run_id!r} has no checkpoints in {paths.checkpoints}; train it first")
    resolve_device(config.device)
    if trained_store(paths.read_manifest(), config.out) is None:  # else it is scored on that: no source needed
        located = find_source(config.data)  # once, for the store's key and, if need be, the source's check
        if not store_path(config.data, config.out, located).is_dir():
            check_source(config.data, located)  # the prepared store is gone: it is rebuilt from the source
    if config.eval.inception_weights is not None and config.eval.inception != "off":
        check_weights_file(config.eval.inception_weights, config.eval.inception_weights_sha256 or "")
    if config.eval.dinov2_weights is not None and config.eval.dinov2 != "off":
        dinov2.check_weights_file(config.eval.dinov2_weights, config.eval.dinov2_weights_sha256 or "")
    check_not_running(config.run_dir)
    return config


def _train_record(config: RunConfig) -> dict[str, Any]:
    """What the summary says about training: the last summary's record, or the checkpoints' when there is none."""
    paths = RunDir(config.run_dir)
    train = paths.read_summary().get("train")  # {} when missing or unreadable: it is rewritten
    if isinstance(train, dict) and "final_step" in train:
        return train
    found = ckpt.list_checkpoints(paths.checkpoints)
    last = found[-1][0]
    return {"run_dir": str(paths.root), "final_step": last, "total_steps": last, "resumed_from_step": last,
            "checkpoints": [str(p) for _, p in found], "metrics_path": str(paths.train_metrics), "seconds": 0.0,
            "images_per_sec": 0.0, "stopped_early": False}


def _flow_run_name() -> str:
    return f"evaluate-{Path(runtime.flow_run.parameters.get('run_dir', 'run')).name}"


@flow(name="evaluate-run", flow_run_name=_flow_run_name, log_prints=True)
def evaluate_existing_run(run_dir: str, eval_settings: dict[str, Any] | None = None, device: str | None = None,
                          rescore: bool = False, gallery: bool = True, data_root: str | None = None) -> dict[str, Any]:
    """Score every checkpoint of the run in ``run_dir`` with its eval settings updated by ``eval_settings``;
    with ``gallery``, render the best checkpoint's pictures and rewrite the summary and report.

    The run is scored against the prepared images it trained on while they are in the cache (its source may
    have moved, changed or gone since); otherwise they are prepared again from its ``data_root`` (or the
    ``data_root`` given, where they are now) and checked to be the same."""
    config = plan_evaluation(run_dir, eval_settings, device, data_root)
    with run_lock(config.run_dir):  # not while the run trains (or another evaluation writes)
        kept = trained_store(RunDir(config.run_dir).read_manifest(), config.out)
        if kept is not None:
            print(f"scoring against the prepared images it trained on: {kept}")
        store_dir = str(kept) if kept is not None else prepare_dataset_task(config.data, str(config.out))["store_dir"]
        evaluation = evaluate_task(config, store_dir, rescore)
        summary = gallery_task(config, evaluation["best_checkpoint"], _train_record(config)) if gallery else None
    print(f"evaluated {evaluation['num_checkpoints']} checkpoints of {config.run_id}: best "
          f"{Path(evaluation['best_checkpoint']).name} ({evaluation['best_generator']})")
    return {**evaluation, "summary": summary}


# --- command line -------------------------------------------------------------------------------

# The EvalConfig fields the command line sets, each a flag of the field's own name (--num-seeds).
EVAL_FIELDS = ("eval.num_samples", "eval.num_real", "eval.num_seeds", "eval.generators", "eval.select_metric",
               "eval.select_direction", "eval.inception", "eval.inception_weights", "eval.inception_weights_sha256",
               "eval.dinov2", "eval.dinov2_weights", "eval.dinov2_weights_sha256", "eval.memorisation",
               "eval.nearest_k", "eval.batch_size", "eval.ssl_space", "eval.ssl_steps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli_parser(__doc__)
    add_run_flags(parser, "the run to evaluate")
    add_device_flag(parser)
    add_config_flags(parser, EVAL_FIELDS, default_text="(default: the run's)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="where the run's images are now, if they moved; needed only when its prepared copy "
                        "is gone from the cache (default: the run's data.data_root)")
    parser.add_argument("--select-generator", choices=("ema", "raw"),
                        help="choose the best among the EMA or the raw generator's rows (eval.use_ema; default: "
                        "the run's)")
    parser.add_argument("--rescore", action="store_true", help="score every checkpoint again, reusing no row")
    parser.add_argument("--no-gallery", action="store_true",
                        help="only the table: do not re-render the gallery, summary and report")
    add_dry_run(parser, "the run's config with the eval flags applied")
    return parser.parse_args(argv)


def eval_settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The EvalConfig fields given on the command line: ``{"num_seeds": 3, "use_ema": False}``."""
    settings = {dotted.removeprefix("eval."): value for dotted, value in given_fields(args, EVAL_FIELDS).items()}
    if args.select_generator is not None:
        settings["use_ema"] = args.select_generator == "ema"
    return settings


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    run_dir = str(Path(args.out) / args.run_id)
    settings = eval_settings_from(args)
    # Checked here first: a mistake fails in a second, not after the Prefect server has started.
    config = plan_evaluation(run_dir, settings, args.device, args.data_root)
    if args.dry_run:
        return print_json(config)
    with temporary_server():
        result = evaluate_existing_run(run_dir, settings, args.device, args.rescore, not args.no_gallery,
                                       args.data_root)
    print(f"done: {run_dir}  best {Path(result['best_checkpoint']).name} ({result['best_generator']})  "
          f"table {result['eval_table']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, on_interrupt="run again; rows already scored are kept")


if __name__ == "__main__":
    sys.exit(launch.run(main))
