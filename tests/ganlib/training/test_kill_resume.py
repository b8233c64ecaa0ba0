"""SIGKILL a training subprocess at a random step; resuming must match an uninterrupted run bit for bit.

Unlike the in-process resume test in ``test_train.py`` (a shorter first run that ends cleanly), the
first attempt here dies at an arbitrary moment: inside a step, while writing the metrics table, a
checkpoint or its checksum, holding the run lock. The kill point is drawn from a seeded RNG; the
seed is random per test run (to explore) and printed in every assertion message (to reproduce):
``KILL_RESUME_SEED=<seed> pytest tests/ganlib/test_kill_resume.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from ganlib.data.store import prepare_dataset
from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint
from ganlib.runs.lock import LOCK_NAME, run_lock
from ganlib.training.loop import train

STEPS, CHECKPOINT_EVERY = 40, 5

# Trains the run of argv[1] on the store argv[2] with argv[3] torch threads under the run lock,
# printing "step N" after every step (log_every is 1).
CHILD = r"""
import sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))  # as many as the test process: the same float reductions
from ganlib.config import RunConfig
from ganlib.runs.lock import run_lock
from ganlib.training.loop import train
cfg = RunConfig.model_validate_json(sys.argv[1])
with run_lock(cfg.run_dir):
    train(cfg, Path(sys.argv[2]), on_progress=lambda r: print(f"step {r['step']}", flush=True))
print("done", flush=True)
"""


def _equal_state(a: dict, b: dict) -> bool:
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tiny):
    seed = int(os.environ.get("KILL_RESUME_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    kill_at = rng.randint(1, STEPS - 4)  # the step the child must have reached ...
    extra_s = rng.uniform(0.0, 0.06)  # ... plus up to about one step more, to land anywhere inside
    where = f"seed {seed}: killed after step {kill_at} + {extra_s * 1000:.0f} ms"

    overrides = {"train__steps": STEPS, "train__checkpoint_every": CHECKPOINT_EVERY, "train__log_every": 1}
    cfg = tiny(run_id="killed", **overrides)
    store = prepare_dataset(cfg.data, cfg.out)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json(), str(store), str(torch.get_num_threads())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reached = 0
        while reached < kill_at:
            line = child.stdout.readline()
            assert line, f"{where}: the child ended before step {kill_at}: {child.stderr.read()[-2000:]}"
            if line.startswith("step "):
                reached = int(line.split()[1])
        time.sleep(extra_s)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)  # reaped: a zombie would still look alive to the lock
    assert child.returncode == -signal.SIGKILL, f"{where}: the child was not killed (rc {child.returncode})"
    assert (cfg.run_dir / LOCK_NAME).exists(), f"{where}: a SIGKILLed run leaves its lock behind"
    on_disk = [s for s, _ in list_checkpoints(cfg.run_dir / "checkpoints")]

    with run_lock(cfg.run_dir):  # recovers the dead child's lock
        resumed = train(cfg, store)
    assert not (cfg.run_dir / LOCK_NAME).exists(), where
    assert resumed.final_step == STEPS, where
    assert resumed.resumed_from_step == (max(on_disk) if on_disk else 0), f"{where}: checkpoints {on_disk}"
    assert resumed.resumed_from_step % CHECKPOINT_EVERY == 0, where

    reference = tiny(run_id="uninterrupted", **overrides)
    train(reference, store)

    name = f"step_{STEPS:06d}.pt"
    a = load_checkpoint(reference.run_dir / "checkpoints" / name)
    b = load_checkpoint(cfg.run_dir / "checkpoints" / name)
    for key in ("generator", "discriminator", "opt_g", "opt_d", "data"):
        assert _equal_state(a[key], b[key]), f"{where}: final {key} state differs from the uninterrupted run"
    assert [s for s, _ in list_checkpoints(cfg.run_dir / "checkpoints")] == list(
        range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)), where

    killed = pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")
    assert killed["step"].tolist() == list(range(1, STEPS + 1)), f"{where}: steps {killed['step'].tolist()}"
    whole = pd.read_parquet(reference.run_dir / "metrics" / "train.parquet")
    pd.testing.assert_frame_equal(killed.drop(columns="images_per_sec"), whole.drop(columns="images_per_sec"),
                                  obj=f"train.parquet ({where})")
