import os
import pickle

import pytest
import torch

from ganlib.errors import CheckpointError
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.files import atomic_write_bytes


def _state(step):
    return {"step": step, "weights": torch.arange(10.0) * step, "config": {"a": 1}}


def test_round_trip_and_checksum(tmp_path):
    path = tmp_path / ckpt.checkpoint_name(5)
    ckpt.save_checkpoint(path, _state(5))
    assert path.with_name(path.name + ".sha256").is_file()
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 5 and torch.equal(state["weights"], torch.arange(10.0) * 5)


def test_no_temporary_files_left_behind(tmp_path):
    ckpt.save_checkpoint(tmp_path / "step_000001.pt", _state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001.pt", "step_000001.pt.sha256"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "step_000001.pt"
    ckpt.save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        ckpt.save_checkpoint(path, _state(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_truncated_newest_checkpoint_is_moved_aside_and_previous_used(tmp_path):
    ckpt.save_checkpoint(tmp_path / "step_000001.pt", _state(1))
    ckpt.save_checkpoint(tmp_path / "step_000002.pt", _state(2))
    newest = tmp_path / "step_000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step_000001.pt" and state["step"] == 1
    assert (tmp_path / "corrupt" / "step_000002.pt").is_file()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "step_000003.pt"
    atomic_write_bytes(path, pickle.dumps({"format": 1, "payload": Evil()}))
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_malicious_torch_save_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "step_000004.pt"
    torch.save({"format": 1, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
