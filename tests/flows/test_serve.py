"""The scheduled path: deployments.toml, prefect.yaml, flows/serve.py and continue-training.

The fast tests check the schedules file (and that prefect.yaml says the same) and the
continue-training config maths. The integration tests (marked slow) run the real thing: a
``prefect server start`` on a free loopback port with its home under tmp, ``flows/serve.py``
serving tiny deployments, runs triggered through the API, and the results read back through the
Prefect client and from disk. Both processes are killed with their process groups at the end,
whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.continue_run import continued_config
from flows.launch import free_port
from flows.serve import CRASH_AUTOMATION, DEFAULT_FILE, load_deployments, main
from ganlib.errors import RunError

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")



# --- the schedules file and prefect.yaml (fast) --------------------------------------------------------


def test_the_repository_schedules_file_is_valid():
    specs = {s.name: s for s in load_deployments(DEFAULT_FILE)}
    assert set(specs) == {"nightly-continue", "weekly-fresh"}
    nightly, weekly = specs["nightly-continue"], specs["weekly-fresh"]
    assert (nightly.flow, nightly.cron, nightly.timezone) == ("continue-training", "0 2 * * *", "UTC")
    assert nightly.parameters["out"] == str(REPO / "artifacts")  # relative to the file
    assert (weekly.flow, weekly.cron) == ("gan-pipeline", "0 3 * * 0")
    assert weekly.parameters["config"]["out"] == str(REPO / "artifacts")
    assert "run_id" not in weekly.parameters["config"]  # a fresh, timestamped run each week


def test_prefect_yaml_holds_the_same_deployments():
    from prefect.flows import load_flow_from_entrypoint

    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    workdir = {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}
    assert project["pull"] == [workdir]  # resolved by `prefect deploy`: the repository root
    yaml_deployments = {d["name"]: d for d in project["deployments"]}
    specs = {s.name: s for s in load_deployments(DEFAULT_FILE)}
    assert set(yaml_deployments) == set(specs)

    def absolute(params: dict, flow: str) -> dict:  # the pull step makes the repo root the working directory
        params = json.loads(json.dumps(params))
        node = params["config"] if flow == "gan-pipeline" else params
        node["out"] = str(REPO / node["out"])
        return params

    for name, spec in specs.items():
        d = yaml_deployments[name]
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        assert flow.name == spec.flow, name
        assert d["schedules"] == [{"cron": spec.cron, "timezone": spec.timezone, "active": not spec.paused}]
        assert absolute(d["parameters"], spec.flow) == spec.parameters, name
        assert (d["description"], d["tags"]) == (spec.description, spec.tags), name
        assert d["enforce_parameter_schema"] is True and d["work_pool"]["name"] == "ganlib"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


GOOD = '[deployments.d]\nflow = "gan-pipeline"\n'


@pytest.mark.parametrize(("text", "problem"), [
    ("[deployments.d\n", "not valid TOML"),
    (GOOD + "[other]\n", "other: unknown key"),
    ("", "deployments: no deployments"),
    (GOOD + 'schedule = "daily"\n', "deployments.d.schedule: unknown key"),
    ('[deployments.d]\nflow = "train"\n', "deployments.d.flow: 'train' is not a flow of this project"),
    ('[deployments.d]\ncron = "0 2 * * *"\n', "deployments.d.flow: None is not a flow of this project"),
    (GOOD + 'cron = "61 * * * *"\n', "deployments.d.cron: '61 * * * *' is not a valid cron expression"),
    (GOOD + 'cron = "0 2 * * *"\ninterval = 3600\n', "deployments.d.interval: give cron or interval, not"),
    (GOOD + 'interval = "fortnight"\n', "deployments.d.interval: 'fortnight' is not a duration"),
    (GOOD + "interval = 5\n", "deployments.d.interval: 5 is shorter than a minute"),
    (GOOD + 'cron = "0 2 * * *"\ntimezone = "Mars/Olympus"\n', "deployments.d.timezone: 'Mars/Olympus'"),
    (GOOD + 'paused = "yes"\n', "deployments.d.paused: 'yes' is not true or false"),
    (GOOD + "tags = 3\n", "deployments.d.tags: must be a list of non-empty strings"),
    (GOOD + "[deployments.d.parameters.config.train]\nlr = -1.0\n",
     "deployments.d.parameters.config.train.lr: Input should be greater than 0 (got -1.0)"),
    (GOOD + "[deployments.d.parameters.config]\nlearning_rate = 1\n",
     "deployments.d.parameters.config.learning_rate: unknown field"),
    (GOOD + "[deployments.d.parameters]\nsteps = 5\n", "deployments.d.parameters.steps: unknown parameter"),
    ('[deployments.d]\nflow = "continue-training"\n', "deployments.d.parameters.run_id: missing"),
    ('[deployments.d]\nflow = "continue-training"\nparameters = { run_id = "r", more_steps = 0 }\n',
     "deployments.d.parameters.more_steps: Input should be greater than or equal to 1 (got 0)"),
    ('[deployments."a b"]\nflow = "gan-pipeline"\n', "deployments.a b: a deployment name is"),
])
def test_a_bad_schedules_file_fails_with_one_line_naming_file_and_key(tmp_path, capsys, text, problem):
    path = _write(tmp_path, text)
    assert main(["--file", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {problem}"), err
    assert err.count("\n") == 1


def test_a_missing_schedules_file_and_an_unknown_only_name(tmp_path, capsys):
    assert main(["--file", str(tmp_path / "nope.toml"), "--check"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nope.toml'}: cannot read it")
    assert main(["--only", "hourly", "--check"]) == 2
    assert capsys.readouterr().err.startswith("error: --only: hourly not in")


def test_check_prints_the_deployments_with_absolute_paths(tmp_path, capsys):
    path = _write(tmp_path, '[deployments.n]\nflow = "continue-training"\ninterval = "6h"\npaused = true\n'
                            '[deployments.n.parameters]\nrun_id = "r1"\nout = "runs"\n')
    assert main(["--file", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("continue-training/n: every 6:00:00 [paused]; parameters ")
    assert f"'out': '{tmp_path / 'runs'}'" in out


def test_dry_run_prints_the_deployments_as_json(capsys):
    assert main(["--dry-run", "--only", "nightly-continue"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    spec = {s.name: s for s in load_deployments(DEFAULT_FILE)}["nightly-continue"]
    assert printed == {"name": "nightly-continue", **spec.model_dump(mode="json")}
    assert (printed["cron"], printed["parameters"]["out"]) == ("0 2 * * *", str(REPO / "artifacts"))


def test_serving_without_a_server_url_is_one_line(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["--only", "weekly-fresh"]) == 2
    assert capsys.readouterr().err.startswith("error: PREFECT_API_URL is not set")


# --- continue-training: the config it runs ---------------------------------------------------------------


def test_continued_config_goes_more_steps_past_the_newest_checkpoint(tiny, tmp_path):
    cfg = tiny(run_id="cont")
    (cfg.run_dir / "checkpoints").mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(cfg.to_json())
    for step in (6, 12):
        (cfg.run_dir / "checkpoints" / f"step_{step:06d}.pt").write_bytes(b"")
    more = continued_config("cont", cfg.out, 5)
    assert more.train.steps == 17 and more.model == cfg.model and more.data == cfg.data
    assert continued_config("cont", cfg.out, 5, device="cpu").device == "cpu"
    with pytest.raises(RunError, match="run 'nope' not found: .* does not exist; start it first"):
        continued_config("nope", cfg.out, 5)
    fresh = continued_config("new1", cfg.out, 7, new_run={"model": {"ngf": 8, "ndf": 8}})
    assert (fresh.run_id, fresh.train.steps, fresh.model.ngf) == ("new1", 7, 8)


def test_continue_run_dry_run_prints_the_config_it_would_run(tiny, tmp_path, capsys):
    from flows.continue_run import main as continue_main

    cfg = tiny(run_id="cont")
    (cfg.run_dir / "checkpoints").mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(cfg.to_json())
    (cfg.run_dir / "checkpoints" / "step_000012.pt").write_bytes(b"")
    assert continue_main(["--run-id", "cont", "--out", str(cfg.out), "--more-steps", "5", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == continued_config("cont", cfg.out, 5).model_dump(mode="json")
    assert printed["train"]["steps"] == 17
    assert continue_main(["--run-id", "nope", "--out", str(cfg.out), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: run 'nope' not found: ")


def test_continue_run_checks_the_run_before_the_server_starts(tiny, tmp_path, capsys, monkeypatch):
    from flows.continue_run import main as continue_main

    def must_not_start():
        raise AssertionError("the server started before the run was checked")

    monkeypatch.setattr("flows.continue_run.temporary_server", must_not_start)
    gone = tmp_path / "imgs"
    cfg = tiny(run_id="cont", data__dataset="folder", data__data_root=str(gone), data__image_size=28)
    (cfg.run_dir / "checkpoints").mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(cfg.to_json())
    assert continue_main(["--run-id", "cont", "--out", str(cfg.out), "--more-steps", "5"]) == 2
    assert capsys.readouterr().err.startswith(f"error: data.data_root: {gone} is not a directory (it does not exist)")


# --- a real Prefect server (integration) -----------------------------------------------------------------


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace_s``."""
    gone = contextlib.suppress(ProcessLookupError, PermissionError, subprocess.TimeoutExpired)
    if proc.poll() is None:
        with gone:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
    with gone:  # stragglers of the group (flow-run subprocesses), and the leader if still alive
        os.killpg(proc.pid, signal.SIGKILL)
    with gone:
        proc.wait(5)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-storage"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # pick up triggered runs within a second
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        with open(self.root / log_name, "wb") as log:
            proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: killed as a whole
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(PREFECT), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=120)

    def settings(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.url})

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """``prefect server start`` on a free loopback port, its home and database under tmp."""
    import httpx

    srv = Server(tmp_path_factory.mktemp("prefect-server"))
    port = srv.url.split(":")[-1].split("/")[0]
    proc = srv.spawn([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui"],
                     "server.log")  # the API is what the tests use; the UI's assets cost seconds to set up
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited ({proc.returncode}):\n{_tail(srv.root / 'server.log')}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 120 s:\n{_tail(srv.root / 'server.log')}")
            time.sleep(0.5)
        with srv.settings():
            yield srv
    finally:
        for p in reversed(srv.procs):
            _stop(p)


@pytest.fixture(scope="module")
def served(server: Server, tiny_settings: dict) -> Iterator[Server]:
    """flows/serve.py serving two tiny deployments of a schedules file written for the test."""
    out = server.root / "out"
    fresh_config = {"run_id": "srv-default", **tiny_settings}
    schedules = server.root / "schedules.toml"
    schedules.write_text(
        '[deployments.tiny-fresh]\nflow = "gan-pipeline"\ninterval = "1w"\npaused = true\ntags = ["test"]\n'
        f"[deployments.tiny-fresh.parameters]\nconfig = {_toml_inline({**fresh_config, 'out': str(out)})}\n"
        '[deployments.tiny-continue]\nflow = "continue-training"\ncron = "0 2 * * *"\npaused = true\n'
        f'[deployments.tiny-continue.parameters]\nrun_id = "srv-default"\nout = "{out}"\nmore_steps = 3\n')
    proc = server.spawn([sys.executable, "flows/serve.py", "--file", str(schedules)], "serve.log")
    # While it starts: the documented one command for the GPU limit (one training at a time).
    limit = server.cli("concurrency-limit", "create", "gpu", "1")
    assert limit.returncode == 0, limit.stdout + limit.stderr
    deadline = time.monotonic() + 90
    with server.client() as client:
        while True:
            try:
                client.read_deployment_by_name("continue-training/tiny-continue")
                client.read_deployment_by_name("gan-pipeline/tiny-fresh")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve.py registered nothing:\n{_tail(server.root / 'serve.log')}")
                time.sleep(0.5)
    server.out = out  # type: ignore[attr-defined]
    yield server


def _toml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def _trigger(srv: Server, deployment: str, parameters: dict[str, Any]):
    with srv.client() as client:
        dep = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(dep.id, parameters=parameters)


def _wait(srv: Server, flow_run_id: uuid.UUID, timeout_s: float = 150):
    deadline = time.monotonic() + timeout_s
    with srv.client() as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                assert run.state.is_completed(), (f"{run.name}: {run.state.name} {run.state.message}\n"
                                                  f"{_tail(srv.root / 'serve.log')}")
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"{run.name} still {run.state.name if run.state else '?'} after {timeout_s} s:\n"
                            f"{_tail(srv.root / 'serve.log')}")
            time.sleep(0.5)


def _task_runs(srv: Server, flow_run_id: uuid.UUID) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with srv.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


@pytest.mark.slow
def test_served_deployment_runs_with_an_override_then_continue_training_resumes_it(served: Server,
                                                                                    tiny_settings: dict):
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from tasks.common import artifact_key

    run_dir = served.out / "srv1"
    override = {"config": {**tiny_settings, "run_id": "srv1", "out": str(served.out)}}  # replaces all of config
    run = _wait(served, _trigger(served, "gan-pipeline/tiny-fresh", override).id)
    assert run.name == "digits-dcgan-srv1"  # dataset, model, run id: readable in the UI's list
    assert run.parameters["config"]["run_id"] == "srv1"

    tasks = _task_runs(served, run.id)
    assert set(tasks) == {"prepare-dataset", "train", "evaluate", "gallery"}
    assert all(t.state.is_completed() for t in tasks.values()), {n: t.state.name for n, t in tasks.items()}
    assert "gpu" in tasks["train"].tags  # held against the 'gpu' concurrency limit ...
    assert not {"gpu"} & (set(tasks["evaluate"].tags) | set(tasks["gallery"].tags))  # ... these are not

    with served.client() as client:
        keys = {artifact_key(k, "srv1"): k for k in ("eval", "summary")}
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))}
        assert artifacts[artifact_key("eval", "srv1")].type == "table"
        assert artifacts[artifact_key("summary", "srv1")].type == "markdown"
        assert all(a.flow_run_id == run.id for a in artifacts.values())
        assert client.read_concurrency_limit_by_tag("gpu").active_slots == []  # released
    for path in ("config.json", "checkpoints/step_000006.pt", "checkpoints/step_000012.pt",
                 "metrics/train.parquet", "metrics/eval.parquet", "gallery/grid_5x5.png", "summary.json"):
        assert (run_dir / path).is_file(), path
    first_checkpoint = (run_dir / "checkpoints" / "step_000012.pt").stat().st_mtime_ns

    # The nightly path: continue the same run 6 steps (a top-level parameter override).
    more = {"run_id": "srv1", "more_steps": 6}
    cont = _wait(served, _trigger(served, "continue-training/tiny-continue", more).id)
    assert cont.name == "digits-dcgan-srv1-continue+6"
    with served.client() as client:
        (child,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[cont.id])))
    assert child.name == "digits-dcgan-srv1" and child.state.is_completed()
    assert {n for n, t in _task_runs(served, child.id).items() if t.state.is_completed()} == \
        {"prepare-dataset", "train", "evaluate", "gallery"}

    import pandas as pd

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["resumed_from_step"] == 12 and summary["train"]["final_step"] == 18
    assert pd.read_parquet(run_dir / "metrics" / "train.parquet")["step"].tolist() == list(range(1, 19))
    assert (run_dir / "checkpoints" / "step_000012.pt").stat().st_mtime_ns == first_checkpoint  # untouched
    assert sorted(set(pd.read_parquet(run_dir / "metrics" / "eval.parquet")["step"])) == [6, 12, 18]  # raw + EMA rows


@pytest.mark.slow
def test_the_server_rejects_a_bad_parameter_naming_the_field(served: Server):
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as caught:
        _trigger(served, "gan-pipeline/tiny-fresh", {"config": {"train": {"lr": -1.0}}})
    assert caught.value.response.status_code == 409
    assert "Validation failed for field 'config.train.lr'" in caught.value.response.text

    # The README's command line, with a bad top-level parameter.
    cli = served.cli("deployment", "run", "continue-training/tiny-continue", "--param", "more_steps=0")
    assert cli.returncode != 0
    assert "Validation failed for field 'more_steps'" in " ".join((cli.stdout + cli.stderr).split())


@pytest.mark.slow
def test_crash_detection_automation_and_marking_a_dead_run_crashed(served: Server, capsys):
    from prefect import flow
    from prefect.states import Running

    with served.client() as client:
        (automation,) = client.read_automations_by_name(CRASH_AUTOMATION)
        assert automation.trigger.within.total_seconds() == 180  # 3 x heartbeat_frequency in prefect.toml
        assert automation.actions[0].type == "change-flow-run-state"

        @flow(name="orphan")
        def orphan() -> None:
            pass

        left_running = client.create_flow_run(orphan, state=Running())  # as if its process had been killed

    assert main(["--mark-crashed", str(left_running.id)]) == 0
    with served.client() as client:
        assert client.read_flow_run(left_running.id).state.type.value == "CRASHED"
    assert main(["--mark-crashed", str(left_running.id)]) == 0  # a finished run is left alone
    assert "already Crashed, left alone" in capsys.readouterr().out
