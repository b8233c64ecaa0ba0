"""Experiment tracking in MLflow, optional: the one module that touches mlflow (imported lazily).

``track_run(cfg, tags)`` is a context manager around a run's stages (``flows/train.py``). With a tracking URI
(``tracking.mlflow_uri``, else the ``MLFLOW_TRACKING_URI`` environment variable; neither: it does nothing)
it logs to one MLflow run:

- params: the run's resolved config (``config.json``, dotted names), once it exists; a resume that changes a
  resumable setting (``train.steps``) records the new value as a tag ``changed.<name>`` (MLflow params are
  immutable);
- metrics with their step: the training scalars of every log flush (``train/d_loss``, ...) and every row of
  ``metrics/eval.parquet`` (``eval/ema/fd``, ...), read from the run's tables by a background thread as the
  loop and the evaluation write them (the loop writes its table at each checkpoint), and once more at the end;
- at the end of a successful run: the gallery, eval and plot pictures, ``report.html`` and the summary as
  artifacts, and the best checkpoint's generator exported (``ganlib.export``) into ``model/`` and registered
  as a version of the model ``ganlib-<run id>``;
- tags: ``ganlib.run_id`` and what the caller passes (the Prefect flow-run id).

The MLflow run id is kept in ``<run>/mlflow.json``: running the same run id again (a resume, a continue)
logs to the same MLflow run. A tracker that is down, or fails later, never stops training: one warning, then
the run goes on untracked.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import tempfile
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganlib.errors import ConfigError, first_line
from ganlib.runs.files import atomic_write_json
from ganlib.runs.paths import RunDir, read_json_object

if TYPE_CHECKING:
    from ganlib.config import RunConfig

log = logging.getLogger("ganlib")

STATE_FILE = "mlflow.json"  # in the run directory: the MLflow run this run logs to, and what it logged
POLL_S = 2.0  # how often the background thread looks for new rows in the run's tables
ARTIFACT_SUFFIXES = {".png", ".gif", ".html", ".json", ".md", ".svg"}
MAX_ARTIFACT_BYTES = 50 * 2**20
_EVAL_BOOKKEEPING = {"step", "checkpoint", "best", "checkpoint_sha256", "settings_key", "generator", "use_ema",
                     "eval_seed"}


def tracking_uri(cfg: RunConfig) -> str | None:
    """The MLflow tracking URI of a run: ``tracking.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else None (off)."""
    return cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_tracking(cfg: RunConfig) -> None:
    """``ConfigError`` (one line) when ``--mlflow-uri`` asks for tracking and mlflow is not installed. (With only
    the environment variable set, the tracker warns instead: the variable may be there for other tools.)"""
    if cfg.tracking.mlflow_uri and not _installed("mlflow"):
        raise ConfigError(f"tracking.mlflow_uri: tracking in MLflow ({cfg.tracking.mlflow_uri}) needs the mlflow "
                          "package: pip install mlflow (or leave out --mlflow-uri)")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``: a config as MLflow params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)
    return out


def _numbers(row: Mapping[str, Any], skip: set[str]) -> dict[str, float]:
    """The finite numeric values of a table row (bools and NaN left out: MLflow metrics are plain numbers)."""
    out = {}
    for key, value in row.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        value = float(value)
        if math.isfinite(value):
            out[str(key)] = value
    return out


class MlflowTracker:
    """One ganlib run's MLflow run. Every MLflow call goes through ``_call``: the first failure logs one
    warning and turns the tracker off, so a tracker that goes down costs the run nothing else."""

    def __init__(self, cfg: RunConfig, uri: str) -> None:
        self.cfg, self.uri = cfg, uri
        self.run = RunDir(cfg.run_dir)
        self.client: Any = None
        self.run_id: str | None = None
        self.enabled = True
        self._lock = threading.RLock()
        self._state: dict[str, Any] = {}
        self._config_logged: dict[str, Any] = {}

    @property
    def state_path(self) -> Path:
        return self.run.root / STATE_FILE

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # any failure of the tracker (network, server, mlflow's own): never the run's
            self.enabled = False
            log.warning("MLflow tracking at %s is off for the rest of this run (%s failed: %s); training goes on",
                        self.uri, what, first_line(err) or type(err).__name__)
            return None

    # --- start and end ---------------------------------------------------------------------------------------
    def start(self, tags: Mapping[str, str]) -> None:
        """Find or create the MLflow run (resuming the one in ``mlflow.json``) and tag it."""
        self._call("connecting", self._start, tags)

    def _start(self, tags: Mapping[str, str]) -> None:
        if not _installed("mlflow"):
            raise RuntimeError("the mlflow package is not installed (pip install mlflow)")
        # Few and short retries: MLflow's defaults (7 retries, 120 s each) would hold a run for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if self.uri.startswith(("http://", "https://")):  # a quick check first: down means off at once
            urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=5).close()
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        saved = read_json_object(self.state_path)
        run_id = saved.get("run_id") if saved.get("tracking_uri") == self.uri else None
        if run_id is not None:
            try:
                info = self.client.get_run(run_id).info
            except Exception:  # deleted on the server: start a new MLflow run
                run_id = None
            else:
                if info.lifecycle_stage == "deleted":
                    run_id = None
        if run_id is None:
            name = self.cfg.tracking.mlflow_experiment
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=self.cfg.run_id).info.run_id
            saved = {"tracking_uri": self.uri, "run_id": run_id, "experiment_id": experiment_id}
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id, self._state = run_id, saved
        self._save_state()
        history = [*saved.get("prefect_flow_runs", []), tags.get("prefect.flow_run_id")]
        self._state["prefect_flow_runs"] = [h for h in history if h]
        all_tags = {"ganlib.run_id": str(self.cfg.run_id), "ganlib.run_dir": str(self.run.root.resolve()),
                    **tags, "prefect.flow_run_ids": ",".join(self._state["prefect_flow_runs"])[:5000]}
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items() if v])

    def finish(self, status: str = "FINISHED") -> None:
        """A last sync; after a success (``status`` FINISHED) the pictures, report and best generator too; then
        the MLflow run's status (FINISHED, FAILED or KILLED)."""
        self.sync()
        if status == "FINISHED":
            self._call("logging artifacts", self._log_artifacts)
            self._call("registering the best generator", self._register_best)
        if self.run_id is not None:
            self._call("ending the run", self.client.set_terminated, self.run_id, status)

    # --- what is logged --------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Log what is new in the run's config and tables (thread-safe; cheap when nothing changed)."""
        with self._lock:
            if self.run_id is not None:
                self._call("logging metrics", self._sync)

    def _sync(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params, tags, metrics = [], [], []
        config = self.run.read_saved_config()
        if config and config != self._config_logged:  # first seen, or rewritten by a resume
            logged = self.client.get_run(self.run_id).data.params
            for key, value in flatten(config).items():
                value = value[:6000]  # MLflow's limit on a param value
                if key not in logged:
                    params.append(Param(key, value))
                elif logged[key] != value:
                    tags.append(RunTag(f"changed.{key}", value))
        metrics += self._train_metrics(Metric)
        metrics += self._eval_metrics(Metric)
        for i in range(0, max(len(params), len(tags)), 100):  # MLflow takes 100 params per batch at most
            self.client.log_batch(self.run_id, params=params[i: i + 100], tags=tags[i: i + 100])
        self._config_logged = config
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i: i + 1000])
        self._save_state()

    def _train_metrics(self, metric: Any) -> list[Any]:
        table = _read_table(self.run.train_metrics)
        if table is None:
            return []
        last = int(self._state.get("train_step", 0))
        every = self.cfg.train.log_every
        rows = table[(table["step"] > last) & ((table["step"] % every == 0) | (table["step"] == table["step"].max()))]
        stamp = _now_ms()
        out = [metric(f"train/{k}", v, stamp, int(row["step"]))
               for row in rows.to_dict("records") for k, v in _numbers(row, {"step"}).items()]
        if len(rows):
            self._state["train_step"] = int(rows["step"].max())
        return out

    def _eval_metrics(self, metric: Any) -> list[Any]:
        table = _read_table(self.run.eval_metrics)
        if table is None:
            return []
        done = set(self._state.get("eval_rows", []))
        stamp, out = _now_ms(), []
        for row in table.to_dict("records"):
            generator = str(row.get("generator", "ema"))
            key = f"{row['checkpoint']}|{generator}|{row.get('checkpoint_sha256', '')}|{row.get('settings_key', '')}"
            if key in done:
                continue
            done.add(key)
            out += [metric(f"eval/{generator}/{k}", v, stamp, int(row["step"]))
                    for k, v in _numbers(row, _EVAL_BOOKKEEPING).items()]
        self._state["eval_rows"] = sorted(done)
        return out

    def _log_artifacts(self) -> None:
        root = self.run.root
        files = [root / "report.html", root / "summary.json", root / "summary.md", root / "config.json",
                 self.run.data / "real_grid.png"]
        for folder in (self.run.gallery, self.run.plots, self.run.eval):
            files += sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        for path in files:
            if path.is_file() and path.suffix in ARTIFACT_SUFFIXES and path.stat().st_size <= MAX_ARTIFACT_BYTES:
                where = path.parent.relative_to(root).as_posix()
                self.client.log_artifact(self.run_id, str(path), None if where == "." else where)

    def _register_best(self) -> None:
        from ganlib.export import export_generator

        table = _read_table(self.run.eval_metrics)
        if table is None or "best" not in table or not table["best"].any():
            return
        best = table[table["best"]].iloc[-1]
        weights = str(best.get("generator", "ema"))
        checkpoint = self.run.checkpoints / str(best["checkpoint"])
        registered = self._state.get("registered") or {}
        if (registered.get("checkpoint"), registered.get("weights")) == (checkpoint.name, weights):
            return  # a resume that did not find a better checkpoint: that generator is registered already
        formats = ["torchscript"] + (["onnx"] if _installed("onnx") and _installed("onnxruntime") else [])
        with tempfile.TemporaryDirectory() as tmp:
            card = export_generator(checkpoint, Path(tmp), formats, use_ema=weights == "ema",
                                    class_names=self.run.read_manifest().get("class_names"),
                                    sample_seed=self.cfg.gallery_seed + _gallery_noise_offset())
            where = f"model/{checkpoint.stem}-{card['weights']}"  # one folder per version: its source stays put
            for path in card["files"].values():
                self.client.log_artifact(self.run_id, path, where)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{where}"
        name = f"ganlib-{self.cfg.run_id}"
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, description="GAN generators exported by ganlib")
        version = self.client.create_model_version(
            name, source, run_id=self.run_id, description=f"{card['checkpoint']} ({card['weights']} weights), step "
            f"{card['step']}: TorchScript{' and ONNX' if 'onnx' in formats else ''}, model card in the json",
            tags={"checkpoint": card["checkpoint"], "step": str(card["step"]), "weights": card["weights"],
                  "config_sha256": card["config_sha256"]})
        self._state["registered"] = {"name": name, "version": str(version.version), "checkpoint": card["checkpoint"],
                                     "weights": weights}
        self._save_state()
        log.info("MLflow: registered %s version %s (%s)", name, version.version, card["checkpoint"])

    def _save_state(self) -> None:
        if self.run.root.is_dir():
            atomic_write_json(self.state_path, self._state)


@contextlib.contextmanager
def track_run(cfg: RunConfig, tags: Mapping[str, str] | None = None) -> Iterator[MlflowTracker | None]:
    """Track the stages run inside this block in MLflow (see the module docstring); yields the tracker, or None
    when tracking is off. New rows of the run's tables are logged every ``POLL_S`` seconds by a thread of its
    own, so training never waits for the tracker."""
    uri = tracking_uri(cfg)
    if uri is None:
        yield None
        return
    check_tracking(cfg)
    tracker = MlflowTracker(cfg, uri)
    tracker.start(tags or {})
    stop = threading.Event()

    def poll() -> None:
        seen: tuple[float, ...] = ()
        while not stop.wait(POLL_S) and tracker.enabled:
            now = tuple(_mtime(p) for p in (tracker.run.config, tracker.run.train_metrics, tracker.run.eval_metrics))
            if now != seen:
                seen = now
                tracker.sync()

    thread = threading.Thread(target=poll, name="mlflow-tracking", daemon=True)
    thread.start()
    status = "FINISHED"
    try:
        yield tracker
    except BaseException as err:
        # Ctrl-C, SIGTERM (a stage that stopped politely carries its signal number): KILLED; else FAILED
        status = "KILLED" if isinstance(err, KeyboardInterrupt) or getattr(err, "signum", None) else "FAILED"
        raise
    finally:
        stop.set()
        thread.join(timeout=60)
        tracker.finish(status)


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _gallery_noise_offset() -> int:
    from ganlib.rendering.gallery import GALLERY_NOISE_OFFSET

    return GALLERY_NOISE_OFFSET


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _read_table(path: Path) -> Any:
    """A parquet table, or None when it is missing or being replaced (the next sync reads it again)."""
    import pandas as pd

    try:
        return pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError):
        return None

