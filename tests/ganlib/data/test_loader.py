"""Batches resident on the device or streamed from disk are the same batches, in the same order."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from ganlib.data.loader import BatchOrder, BatchSource
from ganlib.data.store import load_store, prepare_dataset
from ganlib.runs.checkpoint import load_checkpoint
from ganlib.training import loop
from ganlib.training.loop import train


def _store(tmp_path, n=100):
    images = np.random.default_rng(0).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    return np.load(path, mmap_mode="r"), images


@pytest.mark.parametrize("budget_mb", [None, 0])
def test_resident_and_streamed_batches_follow_batch_order_exactly(tmp_path, budget_mb):
    mapped, images = _store(tmp_path)
    source = BatchSource(mapped, torch.device("cpu"), budget_mb)
    assert source.resident == (budget_mb is None) and len(source) == 100
    cpu = torch.device("cpu")
    order, reference = BatchOrder(100, 30, 7, cpu), BatchOrder(100, 30, 7, cpu)
    for _ in range(10):  # three batches an epoch: crosses epoch boundaries
        batch, _ = source.next_batch(order)
        expected = images[reference.next().numpy()]
        assert batch.dtype == torch.uint8 and np.array_equal(batch.numpy(), expected)
    assert order.state_dict() == reference.state_dict()


@pytest.mark.parametrize("budget_mb", [None, 0])
def test_mirrored_batches_show_each_image_once_as_it_is_and_once_flipped_per_epoch(tmp_path, budget_mb):
    """--mirror: the order runs over 2N items; item N + i is image i flipped left-right, and the indices
    returned (for the labels) are store rows."""
    mapped, images = _store(tmp_path, n=20)
    source = BatchSource(mapped, torch.device("cpu"), budget_mb, mirror=True)
    order = BatchOrder(40, 10, 5, torch.device("cpu"))
    seen: list[tuple[int, bool]] = []
    for _ in range(4):  # one epoch of the 40 items
        batch, rows = source.next_batch(order)
        assert rows.max() < 20
        for image, row in zip(batch.numpy(), rows.tolist(), strict=True):
            as_is, flipped = np.array_equal(image, images[row]), np.array_equal(image, images[row][..., ::-1])
            assert as_is != flipped  # random 8x8 images are not symmetric
            seen.append((row, flipped))
    assert sorted(seen) == [(i, f) for i in range(20) for f in (False, True)]


def test_streaming_follows_an_order_that_jumps(tmp_path):
    """A resumed run loads a saved state into its order: the prefetched batch must not be used."""
    mapped, images = _store(tmp_path)
    source = BatchSource(mapped, torch.device("cpu"), 0)
    order = BatchOrder(100, 10, 3, torch.device("cpu"))
    source.next_batch(order)
    order.load_state_dict({"epoch": 4, "position": 7})
    reference = BatchOrder(100, 10, 3, torch.device("cpu"))
    reference.load_state_dict({"epoch": 4, "position": 7})
    assert np.array_equal(source.next_batch(order)[0].numpy(), images[reference.next().numpy()])


def test_the_cuda_budget_counts_memory_this_process_holds_unused(monkeypatch):
    """After a rollback or a retry in the same process the old tensors sit in torch's cache, not in
    mem_get_info's free: counted, the store that fitted still fits. (Simulated: no GPU here.)"""
    from ganlib.data.loader import default_budget_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 600)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 200)
    assert default_budget_bytes(torch.device("cuda")) == (1000 + 600 - 200) // 2


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ganlib-prefetch")]


@pytest.mark.parametrize("budget_mb", [None, 0])
def test_closing_a_source_stops_its_prefetch_thread_and_refuses_more_batches(tmp_path, budget_mb):
    mapped, _ = _store(tmp_path)
    before = _prefetch_threads()
    with BatchSource(mapped, torch.device("cpu"), budget_mb) as source:
        source.next_batch(BatchOrder(100, 10, 3, torch.device("cpu")))
        assert len(_prefetch_threads()) == len(before) + (budget_mb == 0)
    assert _prefetch_threads() == before
    source.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        source.next_batch(BatchOrder(100, 10, 3, torch.device("cpu")))


def test_training_streamed_from_disk_is_bit_identical_to_resident(tiny, monkeypatch):
    resident = tiny(run_id="resident")
    streamed = tiny(run_id="streamed", data__resident_limit_mb=0)
    store = prepare_dataset(resident.data, resident.out)
    assert prepare_dataset(streamed.data, streamed.out) == store  # the budget is not part of the store
    train(resident, store)
    made: list[BatchSource] = []  # held here, so only close() can stop their threads (not garbage collection)

    class Recorded(BatchSource):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(loop, "BatchSource", Recorded)
    before = _prefetch_threads()
    train(streamed, store)
    assert [s.resident for s in made] == [False] and made[0].closed  # train() closes it: a serving process
    assert _prefetch_threads() == before  # trains run after run
    a = pd.read_parquet(resident.run_dir / "metrics" / "train.parquet")
    b = pd.read_parquet(streamed.run_dir / "metrics" / "train.parquet")
    pd.testing.assert_frame_equal(a.drop(columns="images_per_sec"), b.drop(columns="images_per_sec"))
    ga = load_checkpoint(resident.run_dir / "checkpoints" / "step_000012.pt")["generator"]
    gb = load_checkpoint(streamed.run_dir / "checkpoints" / "step_000012.pt")["generator"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert (streamed.run_dir / "data" / "real_grid.png").is_file()
    assert load_store(store).manifest["count"] == 400


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_batches_on_cuda_come_through_pinned_memory(tmp_path):
    mapped, images = _store(tmp_path)
    device = torch.device("cuda")
    source = BatchSource(mapped, device, 0)
    order, reference = BatchOrder(100, 30, 7, device), BatchOrder(100, 30, 7, torch.device("cpu"))
    for _ in range(7):
        batch, _ = source.next_batch(order)
        assert batch.device.type == "cuda"
        assert np.array_equal(batch.cpu().numpy(), images[reference.next().numpy()])
    assert source._pinned is not None and source._pinned.is_pinned()
