"""Shared fixtures: the real MNIST test digits, tiny configs, and one Prefect harness per session."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Under pytest-xdist (the README's `pytest -n 2`) two workers share the two cores: each keeps to one
# OpenMP thread, before torch is imported, and its subprocesses inherit that. Two workers with two threads
# each made the tiny nets' parallel regions wait on descheduled threads (one bf16 test: 8 s -> 62 s).
XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if XDIST_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test set not found at {MNIST_DIR}")
    return MNIST_DIR


# The settings of a run that trains, evaluates and renders in seconds on CPU (no run id, no output root).
TINY_SETTINGS = {
    "device": "cpu",
    "data": {"dataset": "digits", "num_images": 400},
    "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
    # Speed settings by hand: left to auto, a probe would time them, and its choice could differ between runs
    "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 4, "precision": "fp32",
              "channels_last": "on", "threads": 1 if XDIST_WORKER else 2},
    "eval": {"num_samples": 200, "classifier_steps": 30, "ssl_steps": 10, "batch_size": 100},
    "gallery": {"num_samples": 50},
}


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """A fresh copy of ``TINY_SETTINGS`` (for tests that pass a config as plain data)."""
    return copy.deepcopy(TINY_SETTINGS)


def tiny_config(tmp_path: Path, **overrides):
    """A RunConfig that trains, evaluates and renders in seconds on CPU."""
    from ganlib.config import build_config, set_dotted

    data = {"run_id": "tiny", "out": str(tmp_path / "out"), **copy.deepcopy(TINY_SETTINGS)}
    for key, value in overrides.items():
        set_dotted(data, key.replace("__", "."), value)
    return build_config(data)


@pytest.fixture
def tiny(tmp_path):
    return lambda **overrides: tiny_config(tmp_path, **overrides)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache (GANLIB_CACHE_DIR) for every test of this process and its subprocesses, so the tiny runs
    of many tests fit the digits' classifier and encoder once, not once each (about 5 s a run). Tests about
    the cache itself, or that change what is in it, take ``own_cache``."""
    from ganlib.runs.paths import CACHE_DIR_ENV

    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("shared-cache")
        patch.setenv(CACHE_DIR_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def own_cache():
    """``<out>/_cache``, as a user without GANLIB_CACHE_DIR has it: for a whole module
    (``pytestmark = pytest.mark.usefixtures("own_cache")``), and for its module fixtures that ask for it."""
    from ganlib.runs.paths import CACHE_DIR_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(CACHE_DIR_ENV, raising=False)
        yield


@pytest.fixture
def zombie_pid() -> int:
    """The pid of a child that has exited and is not reaped yet: ``kill(pid, 0)`` still succeeds, as it
    does for a killed writer whose parent has not waited for it. Reaped at teardown."""
    import subprocess
    import sys
    import time

    from ganlib.runs.lock import _is_zombie

    child = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and stays unreaped until wait()
    deadline = time.monotonic() + 30
    while not _is_zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _is_zombie(child.pid), "the child did not exit within 30 s"
    yield child.pid
    child.wait()


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    import tasks  # noqa: F401  (project Prefect defaults)

    with prefect_test_harness(server_startup_timeout=120):
        yield
