"""ganlib/tracking.py against a real MLflow server (SQLite backend store) started on localhost, not a mock."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.launch import free_port
from flows.train import main  # at collection: prefect's log handlers must not bind to a test's captured stderr
from ganlib.config import build_config, check_resumable
from ganlib.data.store import prepare_dataset
from ganlib.errors import ConfigError
from ganlib.tracking import STATE_FILE, check_tracking, flatten, track_run, tracking_uri
from ganlib.training.loop import train

TINY = {
    "device": "cpu", "data": {"dataset": "digits", "num_images": 400}, "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
    "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 4},
    "eval": {"num_samples": 200, "classifier_steps": 30, "ssl_steps": 10, "batch_size": 100},
    "gallery": {"num_samples": 50},
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free localhost port with a SQLite store and its own artifact folder; its URI."""
    pytest.importorskip("mlflow", reason="pip install mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    executable = Path(sys.executable).with_name("mlflow")
    with open(root / "server.log", "wb") as out:
        server = subprocess.Popen(
            [str(executable), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group started here
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _config(tmp_path, run_id: str, **tracking):
    return build_config({**json.loads(json.dumps(TINY)), "run_id": run_id, "out": str(tmp_path / "out"),
                         "tracking": tracking}).resolved()


def test_tracking_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path, "off")
    assert tracking_uri(cfg) is None
    with track_run(cfg) as tracker:
        assert tracker is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri(cfg) == "http://example:5000"
    assert tracking_uri(_config(tmp_path, "flag", mlflow_uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_tracking_settings_never_block_a_resume(tmp_path):
    saved = _config(tmp_path, "r").model_dump(mode="json")
    del saved["tracking"]  # a run made before tracking existed
    check_resumable(saved, _config(tmp_path, "r", mlflow_uri="http://host:5000", mlflow_experiment="other"))
    check_resumable(_config(tmp_path, "r").model_dump(mode="json"), _config(tmp_path, "r", mlflow_uri="x"))


def test_asking_for_mlflow_without_it_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match="needs the mlflow package: pip install mlflow"):
        check_tracking(_config(tmp_path, "m", mlflow_uri="http://127.0.0.1:1"))
    # The command line says so before any work (no Prefect server, no run directory).
    assert main(["--run-id", "m", "--out", str(tmp_path / "out"), "--mlflow-uri", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: tracking.mlflow_uri: ") and "pip install mlflow" in err
    assert not (tmp_path / "out" / "m").exists()


def test_flatten_gives_dotted_params():
    assert flatten({"train": {"lr": 0.1, "diffaug": ["translation"]}, "seed": 7, "x": None, "b": True}) == {
        "train.lr": "0.1", "train.diffaug": '["translation"]', "seed": "7", "x": "null", "b": "true"}


def test_a_tracker_that_is_down_costs_one_warning_and_nothing_else(tmp_path, caplog):
    pytest.importorskip("mlflow")
    cfg = _config(tmp_path, "down", mlflow_uri=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    store = prepare_dataset(cfg.data, cfg.out)
    with caplog.at_level(logging.WARNING, logger="ganlib"), track_run(cfg) as tracker:
        result = train(cfg, store)
    assert result.final_step == 12 and not tracker.enabled
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "is off for the rest of this run" in warnings[0], warnings
    assert not (cfg.run_dir / STATE_FILE).exists()


@pytest.mark.slow
def test_a_tracker_that_fails_mid_run_stops_tracking_not_the_run(mlflow_server, tmp_path, caplog):
    cfg = _config(tmp_path, "midway", mlflow_uri=mlflow_server)
    store = prepare_dataset(cfg.data, cfg.out)
    with caplog.at_level(logging.WARNING, logger="ganlib"), track_run(cfg) as tracker:
        assert tracker.enabled and tracker.run_id

        def down(*args, **kwargs):
            raise ConnectionError("Connection refused")

        tracker.client.log_batch = down  # the server goes away
        result = train(cfg, store)
        tracker.sync()
        tracker.sync()
    assert result.final_step == 12 and not tracker.enabled
    assert sum("MLflow" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_a_tracked_pipeline_run_and_its_resume(mlflow_server, prefect_harness, tmp_path, capsys):
    from mlflow import MlflowClient

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    args = ["--config", str(config), "--run-id", "tracked", "--out", str(tmp_path / "out"), "--mlflow-uri",
            mlflow_server]
    assert main(args) == 0, capsys.readouterr().err
    run_dir = tmp_path / "out" / "tracked"
    state = json.loads((run_dir / STATE_FILE).read_text())
    client = MlflowClient(mlflow_server)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "12" and run.data.params["model.name"] == "dcgan"
    assert run.data.tags["ganlib.run_id"] == "tracked" and len(run.data.tags["prefect.flow_run_id"]) == 36
    # Every log_every step and the last, once each; the polling thread may also have caught the table at a
    # checkpoint's flush (step 6 or 10) and logged that newest row (CI of 03d3ce1 saw [4, 6, 8, 12]).
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/d_loss")]
    assert {4, 8, 12} <= set(steps) <= {4, 6, 8, 10, 12} and steps == sorted(set(steps)), steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/ema/fd")] == [6, 12]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "gallery", "plots", "model"} <= top
    assert any(a.path.endswith("grid_5x5.png") for a in client.list_artifacts(run.info.run_id, "gallery"))
    best = state["registered"]["checkpoint"]
    (folder,) = client.list_artifacts(run.info.run_id, "model")
    assert {Path(a.path).suffix for a in client.list_artifacts(run.info.run_id, folder.path)} == {".pt", ".onnx",
                                                                                                  ".json"}
    (version,) = client.search_model_versions("name = 'ganlib-tracked'")
    assert version.run_id == run.info.run_id and version.tags["checkpoint"] == best
    assert version.source.endswith(folder.path)

    # A resume logs to the same MLflow run: the new steps, the changed setting, a new version only for a new best.
    assert main([*args, "--steps", "18"]) == 0, capsys.readouterr().err
    again = json.loads((run_dir / STATE_FILE).read_text())
    assert again["run_id"] == state["run_id"] and len(again["prefect_flow_runs"]) == 2
    run = client.get_run(state["run_id"])
    assert run.data.params["train.steps"] == "12" and run.data.tags["changed.train.steps"] == "18"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/d_loss")]  # as above, both attempts
    assert {4, 8, 12, 16, 18} <= set(steps) <= {4, 6, 8, 10, 12, 16, 18} and steps == sorted(set(steps)), steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/ema/fd")] == [6, 12, 18]
    versions = client.search_model_versions("name = 'ganlib-tracked'")
    assert len(versions) == (1 if again["registered"]["checkpoint"] == best else 2)
    assert len(client.search_runs([again["experiment_id"]], "tags.`ganlib.run_id` = 'tracked'")) == 1
