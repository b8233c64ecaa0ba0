"""The GAN pipeline flow: prepare data -> train -> evaluate checkpoints -> render the gallery.

Run it:

    python flows/train.py                                  # embedded digits, defaults, ~5 min on 2 CPU cores
    python flows/train.py --steps 6000 --run-id digits-long
    python flows/train.py --dataset mnist --data-root ../shared/data/mnist --model dcgan
    python flows/train.py --run-id digits-long --steps 9000   # continue that run to 9000 steps
    python flows/train.py --model dcgan --dry-run > run.json   # the resolved config as JSON; nothing runs
    python flows/train.py --config run.json --seed 8

Everything lands in <out>/<run-id>/. Running again with the same --run-id resumes from the newest
checkpoint. Each flag below is a field of RunConfig (ganlib/config.py), which holds its description
and default; --config FILE.json gives any of its fields, and the flags given override them.
--dry-run only resolves the config: it does not look at the data, the device or an existing run.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("train", sys.argv[1:])

import argparse
import re
from typing import Any

from flows.cli import (  # before prefect: importing flows sets the project's Prefect defaults
    RUN_FIELDS,
    RUN_FLAG_NAMES,
    add_config_file,
    add_config_flags,
    add_dry_run,
    cli_parser,
    config_data,
    print_json,
    run_main,
    scores_line,
)

# isort: split
from prefect import flow, runtime
from pydantic import ValidationError

from flows.server import temporary_server
from ganlib.config import RUN_ID_PATTERN, RunConfig, build_config
from ganlib.data.sources import sized_config
from ganlib.preflight import check_run
from ganlib.runs.files import remove_temporary_files
from ganlib.runs.lock import run_lock
from ganlib.runs.paths import RunDir
from ganlib.tracking import check_tracking, track_run
from tasks.evaluate import evaluate_task
from tasks.gallery import gallery_task
from tasks.prepare import prepare_dataset_task
from tasks.train import train_task


def _flow_run_name() -> str:
    """'<dataset>-<model>-<run id>'; a run without an id gets the timestamped one it will use."""
    config = runtime.flow_run.parameters.get("config")
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json")
    try:
        cfg = RunConfig.model_validate(config or {})
    except ValidationError:  # the flow itself reports the bad parameter
        return "invalid-config"
    if cfg.run_id is None:
        return cfg.resolved().run_id  # already '<dataset>-<model>-<timestamp>'
    return f"{cfg.data.dataset}-{cfg.model.name}-{cfg.run_id}"


@flow(name="gan-pipeline", flow_run_name=_flow_run_name, log_prints=True)
def gan_pipeline(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008 (pydantic default shown in the UI)
    """Prepare the dataset, train (resuming if the run exists), evaluate every checkpoint, render the gallery."""
    if config.run_id is None:  # the name the run was given is its id, so a retry finds the same directory
        name = runtime.flow_run.name
        config = config.model_copy(update={"run_id": name}) if name and re.fullmatch(RUN_ID_PATTERN, name) else config
    sized_now = config.data.image_size == "auto"  # a flow run's parameters may say 'auto' (the CLI resolves first)
    config = sized_config(config).resolved()
    if sized_now and config.size_note:
        print(config.size_note)
    check_run(config)
    tags = {"prefect.flow_run_id": str(runtime.flow_run.id), "prefect.flow_run_name": str(runtime.flow_run.name)}
    # the same run id started twice at once is refused; MLflow tracking when asked (--mlflow-uri), else nothing
    with run_lock(config.run_dir), track_run(config, tags):
        remove_temporary_files(config.run_dir)  # left by a killed attempt; nobody else writes here
        store = prepare_dataset_task(config.data, str(config.out))
        saved = RunDir(config.run_dir).saved_config()
        chosen_now = config.model.name == "auto"  # a flow run's parameters name 'auto' (the CLI resolves first)
        config = config.keeping_preset(saved).resolved(*store["shape"][:2])  # 'auto' settings: for these images
        if chosen_now and config.preset_note:
            print(config.preset_note)
        trained = train_task(config, store["store_dir"])
        evaluation = evaluate_task(config, store["store_dir"])
        return gallery_task(config, evaluation["best_checkpoint"], trained)


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(__doc__)
    add_config_file(parser)
    add_config_flags(parser, RUN_FIELDS, RUN_FLAG_NAMES)
    add_dry_run(parser, "the resolved config (what config.json will hold)")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[RunConfig, bool]:
    """The validated config from the command line (``--config FILE.json``, flags on top) and ``--dry-run``."""
    args = build_parser().parse_args(argv)
    return sized_config(build_config(config_data(args, RUN_FIELDS))).resolved(), args.dry_run


def _main(argv: list[str] | None) -> int:
    config, dry_run = parse_config(argv)
    if dry_run:
        notes = (config.size_note, config.preset_note or config.preset_choice())  # what 'auto' took, and why
        for note in filter(None, notes):  # stderr: stdout is the config alone
            print(note, file=sys.stderr)
        return print_json(config)
    check_run(config)  # fail in a second, not after the Prefect server has started
    for note in filter(None, (config.size_note, config.preset_note)):
        print(note)
    check_tracking(config)  # --mlflow-uri without mlflow installed
    with temporary_server():
        summary = gan_pipeline(config)
    best = summary["best"]
    print(f"done: {summary['run_dir']}  best {best['checkpoint']}  {scores_line(best)}  "
          f"gallery {summary['gallery']['grid_5x5']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, on_interrupt="run again with the same --run-id to resume from the last checkpoint")


if __name__ == "__main__":
    sys.exit(launch.run(main))
