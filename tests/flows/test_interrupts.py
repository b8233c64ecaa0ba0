"""Stopping a run politely: SIGTERM (preemption, a cancelled flow run, kill) and SIGINT (Ctrl-C) make
training finish its step, checkpoint it, and exit 143 / 130 with one line saying how to resume; no
process of the run outlives it; the resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "device": "cpu", "data": {"dataset": "digits", "num_images": 400}, "model": {"name": "mlp", "hidden_dim": 64},
    # Flushes (and checkpoints) only every 1000 steps: a stop served at once lands between them (the stop is
    # sent at most a second into training, a few hundred steps at most on a fast CPU).
    "train": {"steps": 2000, "batch_size": 32, "checkpoint_every": 1000, "log_every": 1000,
              "precision": "fp32"},  # by hand: auto would time a probe, which may choose otherwise run to run
    "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100, "ssl_steps": 10},
    "gallery": {"num_samples": 50},
}


@pytest.fixture(scope="module")
def out(tmp_path_factory, own_cache) -> Path:
    """One output root for every run of the module: after the first run, the others reuse its prepared
    dataset, evaluation networks and reference statistics (``<out>/_cache``), as a user's runs do."""
    return tmp_path_factory.mktemp("out")


def _start(tmp: Path, run_id: str, out: Path, settings: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """``python flows/train.py`` on ``settings`` (default ``SETTINGS``), its output in ``tmp/<run_id>.log``."""
    config = tmp / f"{run_id}.json"
    config.write_text(json.dumps(SETTINGS if settings is None else settings))
    log = tmp / f"{run_id}.log"
    proc = subprocess.Popen([sys.executable, "flows/train.py", "--config", str(config), "--run-id", run_id,
                             "--out", str(out)], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})  # tiny nets
    return proc, log


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("generator", "generator_ema", "discriminator")
            for k, v in state[part].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, out):
    proc, log = _start(tmp_path_factory.mktemp("reference"), "ref", out)
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    return out / "ref"


@pytest.mark.slow
@pytest.mark.stress  # the stress tier: pytest -m stress
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_exits_politely_and_the_resume_is_exact(reference, out, tmp_path, signum):
    run_id = f"r{int(signum)}"
    proc, log = _start(tmp_path, run_id, out)
    deadline = time.monotonic() + 300
    while "training mlp" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(random.Random(signum).uniform(0.2, 1.0))  # a random step of the first 1000
    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 2  # the run and its temporary Prefect server
    proc.send_signal(signum)
    sent = time.monotonic()
    code = proc.wait(timeout=60)
    assert code == 128 + signum and time.monotonic() - sent < 30
    last = log.read_text().strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"interrupted by {name}: checkpointed at step ") and f"--run-id {run_id} to resume" in last
    stopped_at = int(last.split("checkpointed at step ")[1].split()[0])
    assert 0 < stopped_at < 2000 and stopped_at % 1000  # the step it was on, not the next flush
    assert (out / run_id / "checkpoints" / f"step_{stopped_at:06d}.pt").is_file()
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in family):
        assert time.monotonic() - sent < 30, "a process of the run outlived it"
        time.sleep(0.1)

    resumed, log = _start(tmp_path, run_id, out)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"resuming run {run_id} from step_{stopped_at:06d}.pt" in log.read_text()
    mine, theirs = (_tensors(d / "checkpoints" / "step_002000.pt") for d in (out / run_id, reference))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# --- data-parallel: the launcher forwards the stop to its ranks -----------------------------------------

DDP_SETTINGS = {
    **SETTINGS, "dist": {"nproc_per_node": 2},
    # No DiffAugment: the runs compared must be one sample path. The ranks agree on a stop at a flush
    # (every 20 steps), so it lands between the checkpoints at 150 and 300 (the stop is sent at most a
    # second after step 20: 2 ranks on 2 cores make about 20 steps a second).
    "train": {**SETTINGS["train"], "steps": 300, "checkpoint_every": 150, "log_every": 20, "diffaug": []},
}


def _descendants(pid: int) -> list[int]:
    """Linux, without psutil: every process below ``pid`` (parent links read from /proc/*/stat)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (/proc/<pid>/stat's state field)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _launched_by(pid: int) -> list[int]:
    """Processes whose environment names ``pid`` as their launcher (torchrun and its ranks), wherever they are."""
    marker = f"GANLIB_LAUNCHER_PID={pid}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes() and _running(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, out):
    proc, log = _start(tmp_path_factory.mktemp("ddp-reference"), "ddp-ref", out, DDP_SETTINGS)
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    return out / "ddp-ref"


@pytest.mark.slow
@pytest.mark.stress  # the stress tier: pytest -m stress
def test_sigterm_stops_every_rank_at_one_checkpointed_step_and_the_resume_is_exact(ddp_reference, out, tmp_path):
    """Issue #22: under torchrun the stop was not forwarded; the ranks were killed and the steps since the
    last checkpoint lost."""
    proc, log = _start(tmp_path, "ddp", out, DDP_SETTINGS)
    deadline = time.monotonic() + 300
    while "step 20/300" not in log.read_text():  # the ranks are training
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(random.Random(3).uniform(0.0, 1.0))
    family = _descendants(proc.pid)
    assert len(family) >= 4  # the Prefect server, torchrun and its two ranks (and the server's own children)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(timeout=60)
    assert code == 143 and time.monotonic() - sent < 30, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM: checkpointed at step ") and "--run-id ddp to resume" in last, last
    stopped_at = int(last.split("checkpointed at step ")[1].split()[0])
    assert 0 < stopped_at < 300 and stopped_at % 20 == 0 and stopped_at % 150  # a flush, not a checkpoint
    assert (out / "ddp" / "checkpoints" / f"step_{stopped_at:06d}.pt").is_file()
    while [pid for pid in family if _running(pid)] or _launched_by(proc.pid):
        assert time.monotonic() - sent < 30, f"processes of the run outlived it: {_launched_by(proc.pid)}"
        time.sleep(0.1)

    resumed, log = _start(tmp_path, "ddp", out, DDP_SETTINGS)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"resuming run ddp from step_{stopped_at:06d}.pt" in log.read_text()
    mine, theirs = (_tensors(d / "checkpoints" / "step_000300.pt") for d in (out / "ddp", ddp_reference))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    tables = [pd.read_parquet(d / "metrics" / "train.parquet").drop(columns="images_per_sec")
              for d in (out / "ddp", ddp_reference)]
    pd.testing.assert_frame_equal(*tables)  # every step once, the same values
