import json
import os
import time

import numpy as np
import pytest

from ganlib.config import DataConfig
from ganlib.data.idx import load_mnist
from ganlib.data.store import load_store, prepare_dataset, store_key, store_path
from ganlib.errors import DataError, StorageError

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it


def test_digits_store_and_manifest(tmp_path):
    cfg = DataConfig(num_images=300)
    path = prepare_dataset(cfg, tmp_path)
    store = load_store(path)
    assert store.images.shape == (300, 1, 28, 28) and store.images.dtype == np.uint8
    assert store.labels.shape == (300,)
    m = json.loads((path / "manifest.json").read_text())
    assert m["count"] == 300 and m["shape"] == [1, 28, 28] and m["num_classes"] == 10
    assert sum(m["class_histogram"].values()) == 300
    assert set(m["sha256"]) == {"images", "labels"}
    assert m["spec"]["dataset"] == "digits"


def test_second_preparation_reuses_the_store_quickly(tmp_path):
    cfg = DataConfig(num_images=2000)
    first = prepare_dataset(cfg, tmp_path)
    t0 = time.perf_counter()
    second = prepare_dataset(cfg, tmp_path)
    assert second == first
    assert time.perf_counter() - t0 < 0.1


def test_different_spec_different_store(tmp_path):
    assert store_key(DataConfig(num_images=300)) != store_key(DataConfig(num_images=400))
    assert store_key(DataConfig(num_images=300)) != store_key(DataConfig(num_images=300, seed=8))


def test_interrupted_preparation_leaves_no_complete_looking_store(tmp_path, monkeypatch):
    import ganlib.data.store as store_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(DataConfig(num_images=300), tmp_path)
    root = tmp_path / "_cache" / "datasets"
    assert list(root.iterdir()) == []


def test_a_full_disk_during_preparation_is_one_line_and_leaves_no_store(tmp_path, monkeypatch):
    import errno

    from ganlib.data.writer import NpyWriter

    real_write = NpyWriter.write

    def fills_up(self, rows):
        if self.rows > 0:  # the second chunk no longer fits
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, rows)

    monkeypatch.setattr(NpyWriter, "write", fills_up)
    monkeypatch.setattr("ganlib.data.store.TASK_ROWS", 100)
    cfg = DataConfig(num_images=300)
    with pytest.raises(StorageError, match=r"^no space left to write .*_cache/datasets/digits-\w+ \(No space left on "
                                           r"device\): free disk space and run again"):
        prepare_dataset(cfg, tmp_path, workers=1)
    assert list((tmp_path / "_cache" / "datasets").iterdir()) == []  # the half-written arrays are gone
    monkeypatch.undo()
    assert load_store(prepare_dataset(cfg, tmp_path)).images.shape == (300, 1, 28, 28)  # space freed: it prepares


def test_a_dead_preparations_temporary_is_removed_and_a_live_ones_kept(tmp_path, zombie_pid):
    """Temporaries are named by their preparing process: one whose process is gone (or killed and not yet
    reaped by its parent) is removed by the next preparation of that store; another live one is not."""
    cfg = DataConfig(num_images=300)
    final = store_path(cfg, tmp_path)
    final.parent.mkdir(parents=True)
    unreaped, live = (final.with_name(f".{final.name}.tmp-{pid}") for pid in (zombie_pid, os.getppid()))
    for tmp in (unreaped, live):
        (tmp / "images.npy").parent.mkdir()
        (tmp / "images.npy").write_bytes(b"partial")
    assert prepare_dataset(cfg, tmp_path) == final
    assert sorted(final.parent.iterdir()) == sorted([final, live])


def test_tampered_store_is_detected(tmp_path):
    path = prepare_dataset(DataConfig(num_images=300), tmp_path)
    images = np.load(path / "images.npy")
    images[0, 0, 0, 0] ^= 1
    np.save(path / "images.npy", images)
    with pytest.raises(DataError, match="checksum"):
        load_store(path)


def test_real_mnist_idx(tmp_path, mnist_dir):
    images, labels, split = load_mnist(mnist_dir)
    assert split == "test" and images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).min() > 800
    path = prepare_dataset(DataConfig(dataset="mnist", data_root=mnist_dir, limit=1000), tmp_path)
    store = load_store(path)
    assert np.array_equal(store.images, images[:1000])  # no resize needed: pixels survive exactly


def test_mnist_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path, "test")


def test_truncated_idx_is_reported(tmp_path, mnist_dir):
    import gzip

    raw = gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:5000])
    labels = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / labels).write_bytes((mnist_dir / labels).read_bytes())
    with pytest.raises(DataError, match="truncated"):
        load_mnist(tmp_path, "test")


def test_manifest_records_source_transforms_and_grid(tmp_path, mnist_dir):
    from PIL import Image

    cfg = DataConfig(dataset="mnist", data_root=mnist_dir, limit=300, image_size=32)
    path = prepare_dataset(cfg, tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    assert m["source"]["kind"] == "mnist-idx" and m["source"]["files"] == 2
    assert len(m["source"]["fingerprint"]) == 64
    assert m["transforms"]["upscaled"] == 300 and "lanczos" in m["transforms"]["geometry"]
    assert m["class_names"] == [str(i) for i in range(10)] and sum(m["class_histogram"].values()) == 300
    grid = Image.open(path / "real_grid.png")
    assert grid.mode == "L" and grid.size == ((10 * 34 + 2) * 3,) * 2  # 10x10 cells of 32+2 px, enlarged 3x
    assert m["real_grid"] == "real_grid.png" and m["skipped"] == [] and m["count"] == 300


def test_store_arrays_open_memory_mapped(tmp_path):
    path = prepare_dataset(DataConfig(num_images=200), tmp_path)
    images = np.load(path / "images.npy", mmap_mode="r")
    assert isinstance(load_store(path).images, np.memmap) and images.shape == (200, 1, 28, 28)
    assert np.load(path / "labels.npy", mmap_mode="r").dtype == np.int64


def test_digits_class_filter(tmp_path):
    store = load_store(prepare_dataset(DataConfig(num_images=300, classes=["3", "7"]), tmp_path))
    assert len(store.images) == 60 and store.manifest["class_names"] == ["3", "7"]
    assert set(store.labels) == {0, 1}
