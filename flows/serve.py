"""Serve the GAN pipeline as scheduled Prefect deployments described in ``deployments.toml``.

Needs a running Prefect server and PREFECT_API_URL pointing at it (README: "Scheduled runs on a Prefect server"):

    prefect server start                                # terminal 1, from the repository root
    export PREFECT_API_URL=http://127.0.0.1:4200/api    # terminal 2
    python flows/serve.py                               # serve every deployment of the file

The process stays in the foreground, starts each run as a subprocess when its schedule (or a
manual trigger) comes due, and pauses the schedules when it stops (Ctrl-C). Examples:

    python flows/serve.py --check                   # validate deployments.toml, print it, exit
    python flows/serve.py --dry-run                 # the same, as JSON (absolute paths, seconds)
    python flows/serve.py --only nightly-continue   # serve one deployment of the file
    python flows/serve.py --file my-schedules.toml --limit 2
    prefect deployment run 'continue-training/nightly-continue' --param more_steps=200
    python flows/serve.py --crash-detection-only    # just install the automation (work-pool setups)
    python flows/serve.py --mark-crashed 0b4c...    # a run whose process is gone: Running -> Crashed

The schedules file (TOML) has one table per deployment:

    [deployments.nightly-continue]
    flow = "continue-training"        # or "gan-pipeline"
    cron = "0 2 * * *"                # or: interval = "6h" (s, m, h, d, w; or seconds); neither: manual only
    timezone = "UTC"                  # cron only (IANA name); default UTC
    paused = false                    # register the schedule paused
    description = "..."
    tags = ["ganlib"]                 # deployment tags (the GPU limit uses the train task's "gpu" tag)
    [deployments.nightly-continue.parameters]
    run_id = "digits-nightly"
    more_steps = 1000

Parameters are checked against the flow's signature before anything is registered; relative
paths (``out``, ``config.out``, ``config.data.data_root``, ``new_run...``) are relative to the file.
A bad file fails with one line naming the file, the key and the problem, and exit code 2.

Runs left "Running" by a process that died: serve.py installs an automation (once, by name)
that marks a run of these flows Crashed when its heartbeats stop; --mark-crashed does it by hand.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the imports below run without the garbage collector (flows/launch.py)
    launch.begin("serve", sys.argv[1:])

import datetime as _dt
import inspect
import re
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
)

# flows.* import tasks (the project's Prefect defaults) before prefect itself.
from flows.cli import add_dry_run, cli_parser, print_json, run_main
from flows.continue_run import DEFAULT_OUT, continue_training
from flows.train import gan_pipeline
from ganlib.errors import GanlibError, first_line

if TYPE_CHECKING:
    from prefect import Flow

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the toml package comes with prefect
    tomllib = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO / "deployments.toml"
FLOWS: dict[str, Flow] = {"gan-pipeline": gan_pipeline, "continue-training": continue_training}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CRASH_AUTOMATION = "ganlib: crash runs whose heartbeats stopped"
# Path-valued parameters, as dotted keys inside a deployment's parameters: made absolute against the file.
PATH_KEYS = ("out", "config.out", "config.data.data_root", "new_run.out", "new_run.data.data_root")


class ScheduleFileError(GanlibError):
    """A problem in the schedules file; the message is one line naming the file and the key."""


# --- the schedules file -------------------------------------------------------------------------------


def _parse_interval(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)):
        seconds = float(m.group(1)) * INTERVAL_UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: give seconds or a string like '30m', '6h' or '1d'")
    if seconds < 60:
        raise ValueError(f"{value!r} is shorter than a minute")
    return int(seconds)


def _must(ok: Callable[[Any], Any], problem: str) -> BeforeValidator:
    """A check of a value as read from the file: ``problem`` (``{v!r}``: the value) when ``ok(value)`` is false."""
    def check(v: Any) -> Any:
        if not ok(v):
            raise ValueError(problem.format(v=v))
        return v
    return BeforeValidator(check)


def _is_timezone(v: Any) -> bool:
    try:
        zoneinfo.ZoneInfo(v)
    except (TypeError, ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        return False
    return True


def _cron(v: Any) -> Any:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a cron string such as '0 2 * * *'")
    from prefect.schedules import Cron

    try:
        Cron(v)
    except ValueError as err:
        raise ValueError(f"{v!r} is not a valid cron expression ({first_line(err)})") from None
    return v


FlowName = Annotated[str, _must(FLOWS.__contains__,
                                f"{{v!r}} is not a flow of this project (use {' or '.join(map(repr, FLOWS))})")]


class DeploymentSpec(BaseModel):
    """One ``[deployments.NAME]`` table of the schedules file, validated (``name`` is the table's)."""

    model_config = ConfigDict(extra="forbid")

    flow: FlowName = Field(None, validate_default=True)  # missing: "None is not a flow of this project"
    cron: Annotated[str | None, BeforeValidator(_cron)] = None
    interval: Annotated[int | None, BeforeValidator(_parse_interval)] = None  # seconds
    timezone: Annotated[str, _must(_is_timezone, "{v!r} is not an IANA time zone such as 'Europe/Berlin'")] = "UTC"
    paused: Annotated[bool, _must(lambda v: isinstance(v, bool), "{v!r} is not true or false")] = False
    description: str | None = None
    tags: Annotated[list[str], _must(lambda v: isinstance(v, list) and all(isinstance(t, str) and t for t in v),
                                     "must be a list of non-empty strings")] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)  # checked against the flow's signature
    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"

    def schedule_text(self) -> str:
        if self.cron is not None:
            text = f"cron '{self.cron}' ({self.timezone})"
        elif self.interval is not None:
            text = f"every {_dt.timedelta(seconds=self.interval)}"
        else:
            return "manual only"
        return text + (" [paused]" if self.paused else "")


DeploymentName = Annotated[str, _must(NAME_PATTERN.match, "a deployment name is letters, digits, '.', '_', '-' "
                                      "(at most 100)")]
DeploymentTable = Annotated[DeploymentSpec,
                            _must(lambda v: isinstance(v, dict), "must be a table ([deployments.NAME])")]


class ScheduleFile(BaseModel):
    """The schedules file: ``[deployments.NAME]`` tables and nothing else."""

    model_config = ConfigDict(extra="forbid")

    deployments: Annotated[dict[DeploymentName, DeploymentTable],
                           _must(bool, "no deployments (add a [deployments.NAME] table)")] = Field(
        default_factory=dict, validate_default=True)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ScheduleFileError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        if tomllib is not None:
            return tomllib.loads(text)
        import toml

        return toml.loads(text)
    except Exception as err:  # tomllib.TOMLDecodeError / toml.TomlDecodeError
        raise ScheduleFileError(f"{path}: not valid TOML ({first_line(err)})") from None


def _problems(err: ValidationError, prefix: str = "", unknown: str = "unknown field") -> str:
    """Pydantic's errors as one line: ``prefix.key: what is wrong; ...``."""
    parts = []
    for e in err.errors():
        keys = [str(x) for x in e["loc"] if x != "[key]"]  # a dict key's own error is the key's
        loc = ".".join([prefix, *keys] if prefix else keys)
        if e["type"] == "extra_forbidden":
            msg = unknown
        elif e["type"] == "value_error":  # a validator's, which shows the value where it helps
            msg = e["msg"].removeprefix("Value error, ")
        else:
            got = e.get("input")
            msg = e["msg"] + ("" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _check_parameters(flow: Flow, params: dict[str, Any], where: str) -> None:
    """Validate ``params`` against ``flow``'s signature (types, constraints, required, unknown names)."""
    hints = get_type_hints(flow.fn, include_extras=True)
    signature = inspect.signature(flow.fn)
    for name in params:
        if name not in signature.parameters:
            raise ScheduleFileError(f"{where}.{name}: unknown parameter of flow {flow.name!r} "
                                    f"(it takes {', '.join(signature.parameters)})")
    for name, p in signature.parameters.items():
        if name not in params:
            if p.default is inspect.Parameter.empty:
                raise ScheduleFileError(f"{where}.{name}: missing (flow {flow.name!r} needs it)")
            continue
        try:
            TypeAdapter(hints[name]).validate_python(params[name])
        except ValidationError as err:
            raise ScheduleFileError(_problems(err, f"{where}.{name}")) from None


def _absolute_paths(flow_name: str, params: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths made absolute against ``base`` (the file's folder); the output root, when not
    given, is ``base/artifacts``, so runs land in the same place whichever directory serves them."""
    if flow_name == "gan-pipeline":
        params.setdefault("config", {}).setdefault("out", str(DEFAULT_OUT))
    else:
        params.setdefault("out", str(DEFAULT_OUT))
    for dotted in PATH_KEYS:
        node: Any = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = str((base / Path(node[leaf]).expanduser()).resolve())
    return params


def load_deployments(path: Path) -> list[DeploymentSpec]:
    """Read and validate the schedules file; ``ScheduleFileError`` (one line) on any problem."""
    path = Path(path)
    try:
        tables = ScheduleFile.model_validate(_read_toml(path)).deployments
    except ValidationError as err:
        unknown = f"unknown key (the file holds [deployments.NAME] tables of {', '.join(DeploymentSpec.model_fields)})"
        raise ScheduleFileError(f"{path}: {_problems(err, unknown=unknown)}") from None
    for name, spec in tables.items():
        spec._name, where = name, f"{path}: deployments.{name}"
        if spec.cron is not None and spec.interval is not None:
            raise ScheduleFileError(f"{where}.interval: give cron or interval, not both")
        if spec.cron is None and "timezone" in spec.model_fields_set:
            raise ScheduleFileError(f"{where}.timezone: only a cron schedule takes a timezone")
        _check_parameters(FLOWS[spec.flow], spec.parameters, f"{where}.parameters")
        spec.parameters = _absolute_paths(spec.flow, spec.parameters, path.resolve().parent)
    return list(tables.values())


# --- Prefect -------------------------------------------------------------------------------------------


def to_runner_deployment(spec: DeploymentSpec):
    """The ``RunnerDeployment`` that ``serve()`` registers for ``spec``."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    schedules = []
    if spec.cron is not None:
        schedules.append(Cron(spec.cron, timezone=spec.timezone, active=not spec.paused))
    elif spec.interval is not None:
        schedules.append(Interval(spec.interval, active=not spec.paused))
    return FLOWS[spec.flow].to_deployment(
        name=spec.name,
        schedules=schedules or None,
        parameters=spec.parameters,
        description=spec.description,
        tags=spec.tags,
        enforce_parameter_schema=True,  # the server rejects bad overrides, naming the field
        # The package is installed (pip install -e .): runs import flows.* from any working directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _require_server() -> str:
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ScheduleFileError("PREFECT_API_URL is not set: start `prefect server start`, then "
                                "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (README: Scheduled runs)")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ScheduleFileError(f"the Prefect server at {url} does not answer ({first_line(problem)}); "
                                "is `prefect server start` running?")
    return url


def ensure_crash_detection() -> tuple[str, int]:
    """Create or update the automation that marks runs of this project's flows Crashed when they
    stop sending heartbeats (their process died: OOM kill, reboot, SIGKILL). Returns (name, seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import get_current_settings

    heartbeat = max(30, get_current_settings().flows.heartbeat_frequency or 0)
    within = 3 * heartbeat
    automation = AutomationCore(
        name=CRASH_AUTOMATION,
        description=f"Runs of {', '.join(FLOWS)} send a heartbeat every {heartbeat} s; a run that sent "
                    f"one and then nothing for {within} s (and did not finish) is marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": list(FLOWS)}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=_dt.timedelta(seconds=within),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, force=True,
                                    message=f"No heartbeat for {within} s: the run's process is gone.")],
    )
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(CRASH_AUTOMATION)
        if existing:
            client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                client.delete_automation(extra.id)
        else:
            client.create_automation(automation)
    return CRASH_AUTOMATION, within


def mark_crashed(flow_run_ids: list[str]) -> int:
    """Force runs that are not finished (Running, Pending, Cancelling, ...) to Crashed; 0 if all went."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    failures = 0
    with get_client(sync_client=True) as client:
        for raw in flow_run_ids:
            try:
                run = client.read_flow_run(uuid.UUID(raw))
            except (ValueError, ObjectNotFound):
                print(f"error: no flow run {raw!r}", file=sys.stderr)
                failures += 1
                continue
            if run.state is not None and run.state.is_final():
                print(f"{run.name} ({run.id}): already {run.state.name}, left alone")
                continue
            client.set_flow_run_state(run.id, Crashed(message="Marked Crashed by hand: its process is gone."),
                                      force=True)
            print(f"{run.name} ({run.id}): {run.state.name if run.state else '?'} -> Crashed")
    return failures


# --- command line ---------------------------------------------------------------------------------------


def _main(argv: list[str] | None) -> int:
    parser = cli_parser(__doc__, prog="python flows/serve.py")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE,
                        help=f"schedules file (default: {DEFAULT_FILE.name} in the repository root)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="serve only this deployment of the file (repeatable)")
    parser.add_argument("--limit", type=int, default=None,
                        help="most runs executing at once (default: no limit; trainings queue on the "
                        "'gpu' concurrency limit anyway)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print the deployments (one line each) and exit (no server needed)")
    add_dry_run(parser, "the deployments that would be served (name, flow, schedule, absolute parameters)")
    parser.add_argument("--no-crash-detection", action="store_true",
                        help="do not install the automation that marks runs whose heartbeats "
                        "stopped as Crashed")
    parser.add_argument("--crash-detection-only", action="store_true",
                        help="install that automation and exit")
    parser.add_argument("--mark-crashed", nargs="+", metavar="FLOW_RUN_ID",
                        help="set these unfinished flow runs (their process is gone) to Crashed and exit")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1 (got {args.limit})")
    if args.dry_run and (args.mark_crashed or args.crash_detection_only):
        parser.error("--dry-run shows what serving would register; it does not go with --mark-crashed or "
                     "--crash-detection-only")
    if args.mark_crashed:
        _require_server()
        return 1 if mark_crashed(args.mark_crashed) else 0
    if args.crash_detection_only:
        _require_server()
        name, within = ensure_crash_detection()
        print(f"automation {name!r}: runs silent for {within} s are marked Crashed")
        return 0
    specs = load_deployments(args.file)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in specs})
        if unknown:
            raise ScheduleFileError(f"--only: {', '.join(unknown)} not in {args.file} "
                                    f"(it has {', '.join(s.name for s in specs)})")
        specs = [s for s in specs if s.name in args.only]
    if args.dry_run:
        return print_json([{"name": s.name, **s.model_dump(mode="json")} for s in specs])
    for spec in specs:
        print(f"{spec.full_name}: {spec.schedule_text()}; parameters {spec.parameters}")
    if args.check:
        return 0
    url = _require_server()
    deployments = [to_runner_deployment(s) for s in specs]
    if not args.no_crash_detection:
        name, within = ensure_crash_detection()
        print(f"crash detection: automation {name!r} (no heartbeat for {within} s -> Crashed)")
    print(f"serving {len(deployments)} deployment(s) on {url}; Ctrl-C stops (and pauses their schedules)",
          flush=True)
    from prefect import serve

    serve(*deployments, limit=args.limit)  # returns on Ctrl-C, the schedules paused
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(launch.run(main))
