"""Every source prepares into the same store: folders, npz, IDX, CIFAR-10, CelebA, the MNIST family."""

import gzip
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ganlib.config import DataConfig
from ganlib.data.store import load_store, prepare_dataset, store_key
from ganlib.errors import DataError

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it


def prepare(tmp_path, log=None, **spec):
    messages = []
    path = prepare_dataset(DataConfig(**spec), tmp_path / "out", log=messages.append if log is None else log)
    return load_store(path), messages


def test_class_folders_with_mixed_formats_and_sizes(tmp_path, class_folder, make):
    make.save(make.pattern(32, 32, 4, 20), class_folder / "cat" / "extra" / "nested.webp", lossless=True)
    (class_folder / "dog" / "notes.txt").write_text("not an image")
    store, messages = prepare(tmp_path, dataset="folder", data_root=class_folder, image_size=32)
    m = store.manifest
    assert store.images.shape == (11, 3, 32, 32) and m["shape"] == [3, 32, 32]
    assert m["class_names"] == ["cat", "dog"] and m["num_classes"] == 2
    assert m["class_histogram"] == {"0": 7, "1": 4}
    assert store.labels[:8].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]  # round-robin: the first N are balanced
    assert m["source"]["kind"] == "image-folder" and m["source"]["layout"] == "class sub-folders"
    assert m["source"]["files"] == 11 and m["source"]["ignored_non_image_files"] == 1
    assert m["skipped_count"] == 0 and m["transforms"]["channels"]["result"] == "rgb"
    assert (store.path / "real_grid.png").is_file()
    # the first cat image is a 32x32 PNG: no resize, pixels exact (class order: c0.png, c1.png, ...)
    assert np.array_equal(store.images[0].transpose(1, 2, 0), make.pattern(32, 32, 3, 0))
    assert any("prepared 11 images" in msg for msg in messages)


def test_flat_gray_folder_collapses_to_one_channel_with_exact_pixels(tmp_path, make):
    root = tmp_path / "gray"
    arrays = [make.pattern(28, 28, 1, i) for i in range(5)]
    for i, a in enumerate(arrays):
        make.save(a, root / f"{i:02d}.png")
    make.save(np.repeat(arrays[0], 3, axis=2), root / "05_rgb_but_gray.bmp")
    store, _ = prepare(tmp_path, dataset="folder", data_root=root)
    assert store.images.shape == (6, 1, 28, 28) and store.labels is None
    assert store.manifest["num_classes"] == 0 and store.manifest["class_histogram"] == {}
    for i, a in enumerate(arrays):
        assert np.array_equal(store.images[i, 0], a[:, :, 0])
    assert store.manifest["transforms"]["channels"]["result"] == "grayscale"
    assert load_store(store.path).manifest["sha256"]["images"]  # verified after the collapse


def test_channels_and_background_options(tmp_path, make):
    root = tmp_path / "alpha"
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:14, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root.mkdir() or root / "a.png")
    store, _ = prepare(tmp_path, dataset="folder", data_root=root, channels="rgb", rgba_background="black")
    assert store.images.shape == (1, 3, 28, 28)
    assert (store.images[0, :, :14] == np.array([200, 0, 0])[:, None, None]).all()
    assert (store.images[0, :, 14:] == 0).all()
    store, _ = prepare(tmp_path, dataset="folder", data_root=root, channels="grayscale")
    assert store.images.shape == (1, 1, 28, 28) and (store.images[0, 0, 14:] == 255).all()


def test_class_filter_relabels_and_limit_keeps_the_first_readable(tmp_path, class_folder):
    store, _ = prepare(tmp_path, dataset="folder", data_root=class_folder, image_size=32, classes=["dog"])
    assert len(store.images) == 4 and store.manifest["class_names"] == ["dog"]
    assert store.labels.tolist() == [0, 0, 0, 0]
    (class_folder / "cat" / "c0.png").write_bytes(b"broken")
    store, _ = prepare(tmp_path, dataset="folder", data_root=class_folder, image_size=32, limit=5)
    assert len(store.images) == 5 and store.manifest["skipped_count"] == 1
    assert store.manifest["skipped"][0]["file"] == "cat/c0.png"
    with pytest.raises(DataError, match=r"data.classes: unknown class 'cow' for folder; valid: cat, dog"):
        prepare(tmp_path, dataset="folder", data_root=class_folder, classes=["cow"])


def test_npz_gray_with_labels_rgb_without_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 3, 50)
    np.savez(tmp_path / "g.npz", images=gray, labels=labels)
    store, _ = prepare(tmp_path, dataset="npz", data_root=tmp_path / "g.npz")
    assert store.images.shape == (50, 1, 28, 28) and np.array_equal(store.images[:, 0], gray)
    assert np.array_equal(store.labels, labels) and store.manifest["num_classes"] == 3
    rgb = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", x=rgb)
    store, _ = prepare(tmp_path, dataset="npz", data_root=tmp_path / "c.npz", image_size=32)
    assert store.labels is None and np.array_equal(store.images, rgb.transpose(0, 3, 1, 2))
    np.save(tmp_path / "a.npy", gray)
    store, _ = prepare(tmp_path, dataset="npz", data_root=tmp_path / "a.npy", classes=None, limit=10)
    assert np.array_equal(store.images[:, 0], gray[:10])
    store, _ = prepare(tmp_path, dataset="npz", data_root=tmp_path / "g.npz", image_size=64, classes=["2"])
    assert store.images.shape == ((labels == 2).sum(), 1, 64, 64) and set(store.labels) == {0}


def test_idx_colour_file_with_labels_beside_it(tmp_path, make):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    make.idx(tmp_path / "set-images-idx4-ubyte.gz", images)
    make.idx(tmp_path / "set-labels-idx1-ubyte", rng.integers(0, 4, 30).astype(np.uint8))
    root = tmp_path / "set-images-idx4-ubyte.gz"
    store, _ = prepare(tmp_path, dataset="idx", data_root=root, image_size=32)
    assert np.array_equal(store.images, images.transpose(0, 3, 1, 2)) and store.manifest["num_classes"] == 4
    assert store.manifest["source"]["labels_file"].endswith("set-labels-idx1-ubyte")


def test_cifar10_batch_in_torchvision_layout(tmp_path, make):
    images = np.stack([make.pattern(32, 32, 3, i) for i in range(40)])
    labels = [i % 10 for i in range(40)]
    make.cifar_batch(tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1", images, labels)
    store, messages = prepare(tmp_path, dataset="cifar10", data_root=tmp_path / "cifar", image_size=32)
    assert np.array_equal(store.images, images.transpose(0, 3, 1, 2))  # CHW order in the file, exact
    assert store.labels.tolist() == labels and store.manifest["class_names"][3] == "cat"
    assert any("only data_batch_1" in m for m in messages)
    store, _ = prepare(tmp_path, dataset="cifar10", data_root=tmp_path / "cifar", classes=["cat", "dog"])
    assert store.images.shape == (8, 3, 32, 32) and store.manifest["class_names"] == ["cat", "dog"]  # auto: 32


def test_cifar_batch_that_is_not_a_plain_pickle_is_refused(tmp_path):
    import pickle

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": os.system}, f)  # would call a function if unpickled without restriction
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch.*posix.system is not allowed"):
        prepare(tmp_path, dataset="cifar10", data_root=tmp_path)


def test_celeba_layout_split_and_no_labels(tmp_path, make):
    base = tmp_path / "celeba" / "celeba"
    for i in range(1, 7):
        make.save(make.pattern(218, 178, 3, i), base / "img_align_celeba" / f"{i:06d}.jpg", quality=90)
    partition = "".join(f"{i:06d}.jpg {0 if i <= 4 else 2}\n" for i in range(1, 7))  # 4 train, 2 test
    (base / "list_eval_partition.txt").write_text(partition)
    store, _ = prepare(tmp_path, dataset="celeba", data_root=tmp_path / "celeba", image_size=64)
    assert store.images.shape == (6, 3, 64, 64) and store.labels is None
    store, _ = prepare(tmp_path, dataset="celeba", data_root=tmp_path / "celeba", image_size=64, split="test")
    assert len(store.images) == 2


def test_fashion_mnist_in_torchvision_layout(tmp_path, mnist_dir):
    raw = tmp_path / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # decompressed, as torchvision does
        (raw / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    store, _ = prepare(tmp_path, dataset="fashion-mnist", data_root=tmp_path / "fm", limit=500,
                       classes=["Bag", "0"])
    assert store.manifest["class_names"] == ["T-shirt/top", "Bag"] and set(store.labels) == {0, 1}
    source = store.manifest["source"]
    assert source["kind"] == "fashion-mnist-idx" and source["split"] == "test"


def test_fingerprint_follows_the_source_files(tmp_path, class_folder, make):
    cfg = DataConfig(dataset="folder", data_root=class_folder)
    first = store_key(cfg)
    assert store_key(cfg) == first
    make.save(make.pattern(32, 32, 3, 99), class_folder / "cat" / "new.png")
    second = store_key(cfg)
    assert second != first
    path = class_folder / "cat" / "c1.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert store_key(cfg) != second
    assert store_key(cfg.model_copy(update={"strict": True, "resident_limit_mb": 5})) == store_key(cfg)


def test_a_folders_fingerprint_is_its_files_relative_names_sizes_and_times_in_order(tmp_path):
    """The definition, spelled out: a change to it renames every user's prepared store (rebuilt at next run)."""
    import hashlib

    from ganlib.data.sources import locate

    files = {"cat/b.png": b"12345", "cat/deep/a.jpg": b"1", "dog/c.png": b"123"}
    t0 = 1_700_000_000_000_000_000
    for i, (rel, data) in enumerate(files.items()):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
        os.utime(tmp_path / rel, ns=(0, t0 + i))
    lines = "".join(f"{rel}\0{len(data)}\0{t0 + i}\n" for i, (rel, data) in enumerate(files.items()))
    located = locate(DataConfig(dataset="folder", data_root=tmp_path))
    assert located.fingerprint() == hashlib.sha256(lines.encode()).hexdigest()
    assert (located.inputs.count, located.inputs.bytes) == (3, 9)


def test_worker_processes_give_the_same_store(tmp_path, class_folder, monkeypatch, make):
    import ganlib.data.store as store_mod

    for i in range(40):
        make.save(make.pattern(36, 36, 3, 100 + i), class_folder / "bird" / f"b{i}.png")
    (class_folder / "bird" / "b7.png").write_bytes(b"")
    monkeypatch.setattr(store_mod, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(store_mod, "TASK_ROWS", 8)
    one = prepare_dataset(DataConfig(dataset="folder", data_root=class_folder, image_size=32), tmp_path / "a",
                          workers=1)
    two = prepare_dataset(DataConfig(dataset="folder", data_root=class_folder, image_size=32), tmp_path / "b",
                          workers=2)
    a, b = json.loads((one / "manifest.json").read_text()), json.loads((two / "manifest.json").read_text())
    assert a["sha256"] == b["sha256"] and a["skipped"] == b["skipped"] and b["workers"] == 2
    limited = prepare_dataset(DataConfig(dataset="folder", data_root=class_folder, image_size=32, limit=13),
                              tmp_path / "c", workers=2)
    assert np.array_equal(load_store(limited).images, load_store(one).images[:13])


def test_moved_source_is_a_new_store_and_the_old_one_stays(tmp_path, class_folder):
    store, _ = prepare(tmp_path, dataset="folder", data_root=class_folder, image_size=32)
    moved = shutil.copytree(class_folder, tmp_path / "moved")
    again, _ = prepare(tmp_path, dataset="folder", data_root=moved, image_size=32)
    assert again.path != store.path and store.path.is_dir()
    assert np.array_equal(again.images, store.images)


# --- data.image_size auto: the images' own size --------------------------------------------------------


@pytest.mark.parametrize(("sides", "on_gpu", "size"), [
    ([64] * 5, False, 64),  # the emoji case: 64-px images train at 64
    ([20, 24, 26], False, 28),  # smaller than every size: the smallest
    ([40, 48, 100], False, 32),  # the median shorter side (48) decides, not the largest image
    ([300, 400, 500], False, 64),  # a CPU stops at 64
    ([300, 400, 500], True, 256),  # a GPU takes the largest not above them
    ([130, 140, 150], True, 128),
])
def test_auto_size_of_a_folder_is_the_largest_not_above_its_images(tmp_path, make, sides, on_gpu, size):
    from ganlib.data.sources import auto_image_size

    for i, side in enumerate(sides):  # landscape: the shorter side is the height
        make.save(make.pattern(side, side + 7, 3, i), tmp_path / "imgs" / f"{i}.png")
    got, why = auto_image_size(DataConfig(dataset="folder", data_root=tmp_path / "imgs"), lambda: on_gpu)
    assert got == size
    assert f"the median shorter side of {len(sides)} of its {len(sides)} images" in why
    assert ("--image-size 256 trains at their size" in why) == (sides[0] == 300 and not on_gpu)


def test_auto_size_of_arrays_named_datasets_and_unreadable_files(tmp_path, make):
    from ganlib.data.sources import SIZE_SAMPLE, auto_image_size

    def size(**spec):
        return auto_image_size(DataConfig(**spec), lambda: False)

    np.save(tmp_path / "a.npy", np.zeros((4, 40, 36, 3), np.uint8))
    assert size(dataset="npz", data_root=tmp_path / "a.npy") == (32, "its arrays are 40x36 px")
    make.idx(tmp_path / "s-images-idx3-ubyte", np.zeros((3, 64, 64), np.uint8))
    assert size(dataset="idx", data_root=tmp_path / "s-images-idx3-ubyte") == (64, "its IDX header says 64x64 px")
    assert size(dataset="digits")[0] == 28 and size(dataset="mnist", data_root=tmp_path)[0] == 28
    assert size(dataset="cifar10", data_root=tmp_path)[0] == 32  # known: nothing to read, nor to download first
    assert size(dataset="celeba", data_root=tmp_path)[0] == 64  # 178 px: 128, but a CPU stops at 64
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not a png")
    assert size(dataset="folder", data_root=bad) == (64, "none of 3 sampled files could be opened; 64 px by default")
    many = tmp_path / "many"  # a sample, evenly spread: the last files count too
    for i in range(SIZE_SAMPLE * 2):
        make.save(make.pattern(8 if i < SIZE_SAMPLE else 70, 8 if i < SIZE_SAMPLE else 70, 1, 0), many / f"{i:03d}.png")
    got, why = size(dataset="folder", data_root=many)
    assert "of 64 of its 128 images" in why and got == 32  # 32 of each side sampled: median 39


def test_auto_size_reads_a_huge_images_header_without_pillows_warning(tmp_path, make, monkeypatch):
    import warnings

    from PIL import Image

    from ganlib.data.sources import auto_image_size

    for i in range(3):
        make.save(make.pattern(64, 64, 3, i), tmp_path / "imgs" / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 64x64 is then "a decompression bomb" to Pillow
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DecompressionBombWarning printed during every CLI run's size check
        assert auto_image_size(DataConfig(dataset="folder", data_root=tmp_path / "imgs"), lambda: False)[0] == 64


def test_prepare_with_auto_size_trains_at_the_images_size(tmp_path, make):
    for i in range(6):
        make.save(make.pattern(64, 64, 3, i), tmp_path / "emoji" / f"{i}.png")
    store, messages = prepare(tmp_path, dataset="folder", data_root=tmp_path / "emoji")
    assert store.images.shape == (6, 3, 64, 64) and store.manifest["spec"]["image_size"] == 64
    assert "dataset: image size auto: 64 px (the median shorter side of 6 of its 6 images)" in messages
    assert store_key(DataConfig(dataset="folder", data_root=tmp_path / "emoji")) == \
        store_key(DataConfig(dataset="folder", data_root=tmp_path / "emoji", image_size=64))
