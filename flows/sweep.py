"""Sweeps: the whole pipeline over a grid of configurations, compared in one table.

Run it:

    python flows/sweep.py --grid train.lr=1e-4,2e-4 train.loss=ns,hinge seed=1,2 --sweep-id lr-loss
    python flows/sweep.py --grid train.lr=1e-4,2e-4 --steps 2000 --runner processes --workers 2
    python flows/sweep.py --grid seed=1,2,3,4 --runner dask --dask-address tcp://10.0.0.5:8786
    python flows/sweep.py --grid train.lr=1e-4,2e-4 --dry-run     # the members and their settings, as JSON

Every member is an ordinary pipeline run (prepare -> train -> evaluate -> gallery, a subflow) in
<out>/<sweep-id>/<member-id>/, the member id derived from the sweep id and its settings. Members run
in parallel on the task runner given by --runner: threads (default) or processes on this machine,
or a Dask cluster (--dask-address; without it a local Dask cluster of --workers processes).
A failed member does not stop the others: it is recorded in the table with its error. Running
the same --sweep-id again reuses finished members (their summary.json matches) and retries the rest.

The sweep writes <out>/<sweep-id>/sweep.parquet (one row per member: settings, status, error, best
scores), sweep.png and sweep.md, and publishes the Markdown as the artifact sweep-<sweep-id>.
Base settings come from the same flags as flows/train.py (or --config FILE.json). --dry-run checks
every member's config and prints the plan as JSON: sweep id and directory, runner, and each
member's run id and grid settings (the base config is what flows/train.py --dry-run prints for the
same flags).
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("sweep", sys.argv[1:])

import argparse
import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
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
)

# isort: split
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.server import start_owned_server, temporary_server
from ganlib.config import RunConfig, build_config
from ganlib.errors import first_line
from ganlib.sweep import (
    completed_summary,
    expand_grid,
    member_record,
    parse_grid,
    plot_sweep,
    sweep_markdown,
    sweep_table,
    write_markdown,
    write_table,
)
from tasks.common import artifact_key
from tasks.prepare import prepare_dataset_task

RUNNERS = ("threads", "processes", "dask")


@task(name="sweep-member", task_run_name="member-{config.run_id}")
def sweep_member_task(config: RunConfig) -> dict[str, Any]:
    """One member: the whole pipeline as a subflow, or its summary if it already finished."""
    # Imported here: a task sent to another process (processes, Dask) is pickled by value, and a flow
    # pickled along with it would lose the module its annotations (RunConfig) are resolved in.
    from flows.train import gan_pipeline

    done = completed_summary(config)
    if done is not None:
        get_run_logger().info("member %s already finished; reusing it", config.run_id)
        return {**member_record(done), "status": "reused"}
    return {**member_record(gan_pipeline(config)), "status": "completed"}


def _flow_run_name() -> str:
    return f"sweep-{runtime.flow_run.parameters.get('sweep_id') or 'unnamed'}"


@flow(name="gan-sweep", flow_run_name=_flow_run_name, log_prints=True)
def gan_sweep(
    grid: dict[str, list[Any]],
    sweep_id: str,
    base: RunConfig = RunConfig(),  # noqa: B008 (pydantic default shown in the UI)
) -> dict[str, Any]:
    """Run the pipeline for every combination of grid values on top of base; compare them in one table.

    Args:
        grid: Dotted config fields and the values to try, e.g. {"train.lr": [1e-4, 2e-4], "seed": [1, 2]}.
        sweep_id: Name of the sweep; members go to <base.out>/<sweep_id>/. Reusing it reuses finished members.
        base: The settings every member starts from (its run_id is ignored).
    """
    members = expand_grid(base, grid, sweep_id)
    sweep_dir = Path(base.out) / sweep_id
    print(f"sweep {sweep_id}: {len(members)} members in {sweep_dir}")
    # Each distinct dataset is prepared once, before the members run (they then hit the task's cache).
    for data in {json.dumps(m.config.data.model_dump(mode="json"), sort_keys=True): m.config.data
                 for m in members}.values():
        prepare_dataset_task(data, str(sweep_dir))

    futures = [sweep_member_task.submit(m.config) for m in members]
    outcomes = []
    for member, future in zip(members, futures):
        future.wait()
        if future.state.is_completed():
            outcomes.append(future.result())
            continue
        error = future.result(raise_on_failure=False)
        message = first_line(error)
        print(f"member {member.run_id} failed: {message}")
        outcomes.append({"status": "failed", "error": message})

    keys = list(grid)
    table = sweep_table(members, outcomes)
    table_path = write_table(table, sweep_dir / "sweep.parquet")
    plot_path = plot_sweep(table, keys, sweep_dir / "sweep.png")
    markdown = sweep_markdown(table, keys, sweep_id, table_path)
    write_markdown(markdown, sweep_dir / "sweep.md")
    create_markdown_artifact(key=artifact_key("sweep", sweep_id), markdown=markdown,
                             description=f"Sweep {sweep_id}: every member's settings, status and best scores")
    failed = int((table["status"] == "failed").sum())
    return {"sweep_dir": str(sweep_dir), "table": str(table_path), "plot": str(plot_path),
            "members": len(members), "failed": failed,
            "rows": json.loads(table.to_json(orient="records"))}


@contextlib.contextmanager
def api_for_worker_processes(kind: str) -> Iterator[None]:
    """Members running in other processes (``processes``, ``dask``) must report to the sweep's Prefect
    API. Without ``PREFECT_API_URL`` each of them would start a temporary server of its own, so one is
    started here instead and its address passed to them through the environment."""
    if kind == "threads" or PREFECT_API_URL.value():
        yield
        return
    server = start_owned_server()
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by process-pool and Dask worker processes
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
            APILogHandler().flush()  # send the last log lines while the server is still there
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def task_runner(kind: str, workers: int, dask_address: str | None = None):
    """The Prefect task runner for ``--runner``: threads or processes here, or a Dask cluster."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    # One thread per worker: each member's training uses torch's own threads.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[RunConfig, dict[str, list[str]], argparse.Namespace]:
    parser = cli_parser(__doc__)
    parser.add_argument("--grid", nargs="+", required=True, metavar="FIELD=V1,V2",
                        help="config fields and values to cross, e.g. train.lr=1e-4,2e-4 train.loss=ns,hinge seed=1,2")
    parser.add_argument("--sweep-id", default=None,
                        help="name of the sweep (default sweep-<timestamp>); reusing one reuses finished members")
    parser.add_argument("--runner", choices=RUNNERS, default="threads",
                        help="where members run: threads (default) or processes here, or dask")
    parser.add_argument("--workers", type=int, default=2, help="members running at once (default 2)")
    parser.add_argument("--dask-address", default=None,
                        help="scheduler of an existing Dask cluster (tcp://HOST:8786); default: a local cluster")
    add_config_file(parser)
    fields = [f for f in RUN_FIELDS if f != "run_id"]  # the sweep names its members
    add_config_flags(parser, fields, RUN_FLAG_NAMES)
    add_dry_run(parser, "the plan (the sweep's directory and runner, each member's run id and settings)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1 (got {args.workers})")
    if args.dask_address and args.runner != "dask":
        parser.error("--dask-address needs --runner dask")

    data = config_data(args, fields)
    data.pop("run_id", None)
    args.sweep_id = args.sweep_id or "sweep-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return build_config(data), parse_grid(args.grid), args


def _main(argv: list[str] | None) -> int:
    base, grid, args = parse_args(argv)
    members = expand_grid(base, grid, args.sweep_id)  # every member valid before any server starts
    if args.dry_run:
        return print_json({
            "sweep_id": args.sweep_id, "sweep_dir": str(Path(base.out) / args.sweep_id), "runner": args.runner,
            "workers": args.workers, "members": [{"run_id": m.run_id, "settings": m.settings} for m in members],
        })
    runner = task_runner(args.runner, args.workers, args.dask_address)
    with api_for_worker_processes(args.runner):
        with temporary_server():
            result = gan_sweep.with_options(task_runner=runner)(grid, args.sweep_id, base)
    print(f"done: {result['table']}  {result['members']} members, {result['failed']} failed  "
          f"plot {result['plot']}")
    return 1 if result["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, on_interrupt="run again with the same --sweep-id to reuse the finished members")


if __name__ == "__main__":
    sys.exit(launch.run(main))
