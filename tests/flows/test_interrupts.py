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

import psutil
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "device": "cpu", "data": {"dataset": "digits", "num_images": 400}, "model": {"name": "mlp", "hidden_dim": 64},
    # Flushes (and checkpoints) only every 2000 steps: a stop served at once lands between them.
    "train": {"steps": 4000, "batch_size": 32, "checkpoint_every": 2000, "log_every": 2000},
    "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100, "ssl_steps": 10},
    "gallery": {"num_samples": 50},
}


def _start(tmp: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    config = tmp / "config.json"
    config.write_text(json.dumps(SETTINGS))
    log = tmp / f"{run_id}.log"
    proc = subprocess.Popen([sys.executable, "flows/train.py", "--config", str(config), "--run-id", run_id,
                             "--out", str(tmp / "out")], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})  # tiny nets
    return proc, log


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("generator", "generator_ema", "discriminator")
            for k, v in state[part].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    proc, log = _start(tmp, "ref")
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    return tmp / "out" / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_exits_politely_and_the_resume_is_exact(reference, tmp_path, signum):
    proc, log = _start(tmp_path, "r")
    deadline = time.monotonic() + 300
    while "training mlp" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(random.Random(signum).uniform(0.2, 1.0))  # a random step of the first 2000
    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 2  # the run and its temporary Prefect server
    proc.send_signal(signum)
    sent = time.monotonic()
    code = proc.wait(timeout=60)
    assert code == 128 + signum and time.monotonic() - sent < 30
    last = log.read_text().strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"interrupted by {name}: checkpointed at step ") and "--run-id r to resume" in last
    stopped_at = int(last.split("checkpointed at step ")[1].split()[0])
    assert 0 < stopped_at < 4000 and stopped_at % 2000  # the step it was on, not the next flush
    assert (tmp_path / "out" / "r" / "checkpoints" / f"step_{stopped_at:06d}.pt").is_file()
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in family):
        assert time.monotonic() - sent < 30, "a process of the run outlived it"
        time.sleep(0.1)

    resumed, log = _start(tmp_path, "r")
    assert resumed.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"resuming run r from step_{stopped_at:06d}.pt" in log.read_text()
    mine, theirs = (_tensors(d / "checkpoints" / "step_004000.pt") for d in (tmp_path / "out" / "r", reference))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
