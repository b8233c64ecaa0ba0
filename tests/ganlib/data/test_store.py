import json
import time

import numpy as np
import pytest

from ganlib.config import DataConfig
from ganlib.data.idx import load_mnist
from ganlib.data.store import load_store, prepare_dataset, store_key
from ganlib.errors import DataError


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
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="truncated"):
        load_mnist(tmp_path, "test")
