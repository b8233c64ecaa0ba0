import os
import pickle

import pytest
import torch

from ganlib.errors import CheckpointError, StorageError
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
    with pytest.raises(StorageError, match=r"No space left.*; step_000001.pt as it was before is intact$"):
        ckpt.save_checkpoint(path, _state(2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line_not_retried_and_the_previous_checkpoint_still_loads(tmp_path):
    """For real: the temporary file the checkpoint goes through is a link to /dev/full (every write ENOSPC)."""
    ckpt.save_checkpoint(tmp_path / "step_000001.pt", _state(1))
    (tmp_path / f".step_000002.tmp-{os.getpid()}.pt").symlink_to("/dev/full")
    with pytest.raises(StorageError) as caught:
        ckpt.save_checkpoint(tmp_path / "step_000002.pt", _state(2))
    assert str(caught.value) == (f"no space left to write {tmp_path / 'step_000002.pt'} (No space left on device): "
                                 "free disk space and run again; the previous checkpoint step_000001.pt is intact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001.pt", "step_000001.pt.sha256"]
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step_000001.pt" and state["step"] == 1


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


def test_a_run_saved_with_more_gpus_visible_resumes_where_fewer_are(monkeypatch):
    """A checkpoint holds one CUDA RNG state per visible GPU; resuming with fewer (CUDA_VISIBLE_DEVICES, a
    smaller node) restores those that exist instead of failing on an index. (Simulated: no GPU here.)"""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((device, state)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("indexes every saved GPU"))
    state = {**ckpt.capture_rng_state(), "cuda": [torch.full((16,), 1, dtype=torch.uint8),
                                                   torch.full((16,), 2, dtype=torch.uint8)]}
    ckpt.restore_rng_state(state)
    assert [(device, int(s[0])) for device, s in restored] == [(0, 1)]


def test_training_backends_switch_cuda_on_for_the_block_and_leave_the_process_as_it_was():
    """The pipeline evaluates in the process it trained in: TF32 and the autotuner must not outlive training."""
    from ganlib.runs.device import training_backends

    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.backends.cudnn.benchmark)
    before = flags()
    with training_backends("bf16", torch.device("cuda")):  # only sets flags: no GPU needed
        assert flags() == (True, True, True)
    assert flags() == before
    with training_backends("fp32", torch.device("cuda")):
        assert flags()[2] and flags()[:2] == before[:2]
    with training_backends("bf16", torch.device("cpu")):
        assert flags() == before
    assert flags() == before


def test_a_failed_first_write_says_there_is_no_previous_checkpoint_and_leaves_no_checksum(tmp_path, monkeypatch):
    def disk_full(target, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write_bytes", disk_full)  # the checksum (small) fits, the checkpoint not
    with pytest.raises(StorageError, match=r"No space left on device\): .*; no checkpoint of this run has been"):
        ckpt.save_checkpoint(tmp_path / "step_000005.pt", _state(5))
    assert list(tmp_path.iterdir()) == []


def test_a_checksum_that_does_not_fit_names_the_checkpoint(tmp_path, monkeypatch):
    def disk_full(target, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write_text", disk_full)  # the checksum, written first, fails
    with pytest.raises(StorageError) as caught:
        ckpt.save_checkpoint(tmp_path / "step_000005.pt", _state(5))
    assert str(caught.value).startswith(f"no space left to write {tmp_path / 'step_000005.pt'} (")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_old_checksum_so_the_old_file_still_verifies(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path / "step_000001.pt", _state(1))
    ckpt.save_checkpoint(tmp_path / "step_000002.pt", _state(2))
    monkeypatch.setattr(ckpt, "atomic_write_bytes", lambda target, data: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(StorageError, match=r"; step_000002.pt as it was before is intact$"):
        ckpt.save_checkpoint(tmp_path / "step_000002.pt", {**_state(2), "extra": 1})
    assert ckpt.load_checkpoint(tmp_path / "step_000002.pt")["step"] == 2  # still verifies
    with pytest.raises(StorageError, match=r"; the previous checkpoint step_000002.pt is intact$"):
        ckpt.save_checkpoint(tmp_path / "step_000003.pt", _state(3))
    assert not (tmp_path / "step_000003.pt.sha256").exists()


def test_a_checkpoint_without_its_checksum_is_loaded_with_a_warning_and_gets_one(tmp_path, caplog):
    ckpt.save_checkpoint(tmp_path / "step_000001.pt", _state(1))
    ckpt.save_checkpoint(tmp_path / "step_000002.pt", _state(2))
    (tmp_path / "step_000002.pt.sha256").unlink()
    with caplog.at_level("WARNING", logger="ganlib"):
        path, state = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step_000002.pt" and state["step"] == 2
    assert "had no checksum file: it was loaded unverified" in caplog.text
    assert (tmp_path / "step_000002.pt.sha256").is_file() and ckpt.load_checkpoint(path)["step"] == 2
