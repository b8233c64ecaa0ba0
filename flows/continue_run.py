"""Continue an existing run for N more steps, then re-evaluate it and refresh its gallery.

The ``continue-training`` flow is what a nightly schedule runs (see ``deployments.toml`` and
``flows/serve.py``). It reads ``<out>/<run_id>/config.json``, sets ``train.steps`` to the newest
checkpoint's step plus ``more_steps`` and runs the ``gan-pipeline`` flow on it as a subflow:
training resumes from that checkpoint (nothing is retrained), every checkpoint is evaluated
(already-scored ones are reused) and the gallery is rendered from the best one.

Run it by hand (temporary Prefect server, like ``flows/train.py``):

    python flows/continue_run.py --run-id digits-nightly --more-steps 500
    python flows/continue_run.py --run-id digits-nightly --out /data/gan-runs --device cuda
    python flows/continue_run.py --run-id digits-nightly --dry-run   # the config it would run, as JSON

The run must exist (start it once with ``flows/train.py --run-id NAME`` or the ``gan-pipeline``
deployment), unless the flow's ``new_run`` parameter gives the settings to start it with: then
the first scheduled run creates it and trains ``more_steps`` steps. ``--dry-run`` prints the
config the pipeline would run with (the run's, with ``train.steps`` moved on) as JSON.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("continue", sys.argv[1:])

from pathlib import Path
from typing import Annotated, Any

from flows.cli import (  # before prefect: importing flows sets the project's Prefect defaults
    add_device_flag,
    add_dry_run,
    add_run_flags,
    cli_parser,
    print_json,
    run_main,
    scores_line,
)

# isort: split
from prefect import flow, runtime
from pydantic import Field

from flows.server import temporary_server
from flows.train import gan_pipeline
from ganlib.config import DEVICE_PATTERN, RUN_ID_PATTERN, RunConfig, build_config, set_dotted
from ganlib.errors import RunError
from ganlib.preflight import check_run
from ganlib.runs.checkpoint import list_checkpoints
from ganlib.runs.paths import RunDir

RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]
MoreSteps = Annotated[int, Field(ge=1, le=10_000_000)]
Device = Annotated[str | None, Field(pattern=DEVICE_PATTERN)]
DEFAULT_MORE_STEPS = 1000
DEFAULT_OUT: Path = RunConfig.model_fields["out"].default


def continued_config(run_id: str, out: Path | str, more_steps: int, device: str | None = None,
                     new_run: RunConfig | dict[str, Any] | None = None) -> RunConfig:
    """The run's saved config with ``train.steps`` = newest checkpoint step + ``more_steps``.

    A run that does not exist yet is started from ``new_run`` (its ``run_id``, ``out`` and
    ``train.steps`` replaced by the arguments) when that is given; without it, ``RunError``.
    """
    paths = RunDir(Path(out) / run_id)
    if paths.config.is_file():
        data = paths.read_config()
    elif new_run is not None:
        data = new_run.model_dump(mode="json") if isinstance(new_run, RunConfig) else dict(new_run)
    else:
        raise RunError(f"run {run_id!r} not found: {paths.config} does not exist; start it first "
                       f"(flows/train.py --run-id {run_id} --out {out}, or the gan-pipeline deployment), "
                       "or give new_run settings to start it")
    checkpoints = list_checkpoints(paths.checkpoints)
    newest = checkpoints[-1][0] if checkpoints else 0
    data["run_id"], data["out"] = run_id, str(out)
    set_dotted(data, "train.steps", newest + more_steps)
    set_dotted(data, "train.epochs", None)
    if device is not None:
        data["device"] = device
    return build_config(data)


def _flow_run_name() -> str:
    params = runtime.flow_run.parameters
    run_id, more = params.get("run_id", "?"), params.get("more_steps", "?")
    # Dataset and model from the run's saved config, or from new_run for a run yet to start.
    saved = RunDir(Path(params.get("out", DEFAULT_OUT)) / str(run_id)).read_saved_config()
    if not saved:
        saved = params.get("new_run")
        saved = saved.model_dump(mode="json") if isinstance(saved, RunConfig) else saved
    try:
        prefix = f"{saved['data']['dataset']}-{saved['model']['name']}-"
    except (KeyError, TypeError):
        prefix = ""
    return f"{prefix}{run_id}-continue+{more}"


@flow(name="continue-training", flow_run_name=_flow_run_name, log_prints=True)
def continue_training(
    run_id: RunId,
    out: Path = DEFAULT_OUT,
    more_steps: MoreSteps = DEFAULT_MORE_STEPS,
    device: Device = None,
    new_run: RunConfig | None = None,
) -> dict[str, Any]:
    """Train run_id more_steps steps beyond its newest checkpoint, re-evaluate it, refresh its gallery.

    Args:
        run_id: The run to continue: <out>/<run_id>/config.json must exist (or give new_run).
        out: Output root holding the run.
        more_steps: Steps to train beyond the run's newest checkpoint.
        device: Override the run's device ('auto', 'cpu', 'cuda[:N]', 'mps'); default: the run's own.
        new_run: Settings to start the run with if it does not exist yet (run_id, out and
            train.steps are replaced); leave empty to require an existing run.
    """
    config = continued_config(run_id, out, more_steps, device, new_run)
    print(f"continuing run {run_id} to step {config.train.steps}")
    return gan_pipeline(config)


# --- command line -------------------------------------------------------------------------------


def _main(argv: list[str] | None) -> int:
    parser = cli_parser(__doc__)
    add_run_flags(parser, "the run to continue")
    parser.add_argument("--more-steps", type=int, default=DEFAULT_MORE_STEPS,
                        help=f"steps beyond the newest checkpoint (default {DEFAULT_MORE_STEPS})")
    add_device_flag(parser)
    add_dry_run(parser, "the config the pipeline would run with")
    args = parser.parse_args(argv)
    if args.more_steps < 1:
        parser.error(f"--more-steps must be at least 1 (got {args.more_steps})")
    config = continued_config(args.run_id, args.out, args.more_steps, args.device)  # fail before Prefect starts
    if args.dry_run:
        return print_json(config)
    check_run(config)  # its data, its device, not running now: in a second, not after the server has started
    with temporary_server():
        summary = continue_training(args.run_id, args.out, args.more_steps, args.device)
    best = summary["best"]
    print(f"done: {summary['run_dir']}  step {summary['train']['final_step']}  best {best['checkpoint']}  "
          f"{scores_line(best)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, on_interrupt="checkpoints are kept; run again to go on from the newest one "
                    "(--more-steps counts from there)")


if __name__ == "__main__":
    sys.exit(launch.run(main))
