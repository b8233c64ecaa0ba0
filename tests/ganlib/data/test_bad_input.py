"""Every bad input gives one clear line, and nothing half-made is left behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ganlib.config import build_config
from ganlib.data.sources import check_source
from ganlib.data.store import load_store, prepare_dataset, store_path
from ganlib.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it

REPO = Path(__file__).resolve().parents[3]


def cfg(**data):
    return build_config({"data": data}).data


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def nothing_prepared(out: Path) -> bool:
    root = out / "_cache" / "datasets"
    return not root.exists() or not any(root.iterdir())


# --- the source is not there --------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "message"), [
    ("folder", "data.data_root: {p} is not a directory (it does not exist); point --data-root at a "
               "directory of images (flat, or one sub-folder per class)"),
    ("mnist", "data.data_root: {p} is not a directory (it does not exist); point --data-root at the "
              "directory holding the MNIST IDX files"),
    ("npz", "data.data_root: {p} does not exist; point --data-root at a .npz (or .npy) file of uint8 images"),
    ("idx", "data.data_root: {p} does not exist; point --data-root at an IDX images file"),
])
def test_missing_path(tmp_path, dataset, message):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset=dataset, data_root=missing), tmp_path / "out")
    assert one_line(err).startswith(message.format(p=missing))
    assert nothing_prepared(tmp_path / "out")


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        check_source(cfg(dataset="folder", data_root=tmp_path / "empty"))
    assert one_line(err) == (f"data.data_root: {tmp_path / 'empty'} is empty; put images there (.png, .jpg, "
                             ".jpeg, .webp, .bmp, .gif, .tif, .tiff), flat or one sub-folder per class")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "readme.txt").write_text("hi")
    (docs / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset="folder", data_root=docs), tmp_path / "out")
    assert one_line(err).startswith(f"data.data_root: {docs} has no image files (.png, .jpg")
    assert "found 2 other files, e.g. readme.txt" in str(err.value)


def test_torchvision_datasets_offline_name_the_files_and_where_they_go(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    expected = {
        "cifar10": f"data.data_root: CIFAR10 files not found in {root}: expected {root}/cifar-10-batches-py/"
                   "data_batch_1 ... data_batch_5 (or test_batch) (the extracted cifar-10-python.tar.gz); "
                   "put them there, or add --download to fetch them",
        "mnist": f"data.data_root: MNIST files not found in {root}: expected train-images-idx3-ubyte.gz and "
                 "train-labels-idx1-ubyte.gz (or t10k-* for the test split), .gz or uncompressed, in "
                 f"{root} or {root}/MNIST/raw; put them there, or add --download to fetch them",
        "kmnist": f"in {root} or {root}/KMNIST/raw",
        "celeba": f"expected {root}/celeba/img_align_celeba/000001.jpg ...",
    }
    for dataset, message in expected.items():
        with pytest.raises(DataError) as err:
            prepare_dataset(cfg(dataset=dataset, data_root=root), tmp_path / "out")
        assert message in one_line(err)
    assert list(root.iterdir()) == [] and nothing_prepared(tmp_path / "out")


def test_cli_offline_dataset_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    from flows.train import main

    out = tmp_path / "out"
    code = main(["--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: data.data_root: CIFAR10 files not found in ")
    assert err.count("\n") == 1 and not out.exists()


def test_failed_download_leaves_nothing_half_written(tmp_path, monkeypatch):
    import torchvision.datasets as tv

    class Offline:
        def __init__(self, root, train=True, download=False):
            part = Path(root) / "cifar-10-python.tar.gz"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(b"half")  # a partial download
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv, "CIFAR10", Offline)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset="cifar10", data_root=root, download=True), tmp_path / "out")
    assert one_line(err).startswith(
        f"data.download: downloading CIFAR10 into {root} failed (RuntimeError: <urlopen error [Errno -3] "
        "Temporary failure in name resolution>); without a network, put the files there yourself: expected "
        f"{root}/cifar-10-batches-py/data_batch_1")
    assert not root.exists() and nothing_prepared(tmp_path / "out")  # not even the directory it made


def test_successful_download_is_moved_into_place_then_prepared(tmp_path, monkeypatch, make):
    import torchvision.datasets as tv

    class Online:
        def __init__(self, root, train=True, download=False):
            images = np.stack([make.pattern(32, 32, 3, i) for i in range(12)])
            labels = list(range(10)) + [0, 1]
            make.cifar_batch(Path(root) / "cifar-10-batches-py" / "test_batch", images, labels)

    monkeypatch.setattr(tv, "CIFAR10", Online)
    root = tmp_path / "data"
    check_source(cfg(dataset="cifar10", data_root=root, download=True))  # absent is fine with --download
    data = cfg(dataset="cifar10", data_root=root, download=True, split="test")
    path = prepare_dataset(data, tmp_path / "out")
    assert load_store(path).images.shape == (12, 3, 32, 32)  # image size auto: CIFAR-10's own
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]  # no temporary download left


def test_real_download_attempt_offline_fails_cleanly(tmp_path, monkeypatch):
    """torchvision's real download code, unable to connect: a clear line, nothing left.

    Offline by construction, network or not: MNIST's mirrors are pointed at a local port that refuses
    connections (a socket bound to it that never listens, held for the whole test, so no other
    process can take the port), and no proxy is used.
    """
    import socket

    import torchvision.datasets as tv

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused at once
        mirror = f"http://127.0.0.1:{closed.getsockname()[1]}/mnist/"
        monkeypatch.setattr(tv.MNIST, "mirrors", [mirror])
        for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.delenv(proxy, raising=False)
        monkeypatch.setenv("no_proxy", "*")
        monkeypatch.setenv("NO_PROXY", "*")
        root = tmp_path / "data"
        with pytest.raises(DataError) as err:
            prepare_dataset(cfg(dataset="mnist", data_root=root, download=True), tmp_path / "out")
    assert one_line(err).startswith(f"data.download: downloading MNIST into {root} failed (RuntimeError: Error "
                                    f"downloading train-images-idx3-ubyte.gz: Tried {mirror}, got: <urlopen error ")
    assert "without a network, put the files there yourself: expected train-images-idx3" in str(err.value)
    assert not root.exists() and nothing_prepared(tmp_path / "out")


# --- the source is there but broken ---------------------------------------------------------------


def test_unreadable_images_are_skipped_listed_and_counted(tmp_path, class_folder, make, monkeypatch):
    cat = class_folder / "cat"
    good = (cat / "c0.png").read_bytes()
    (cat / "zero.png").write_bytes(b"")
    (cat / "text.png").write_text("not an image")
    (cat / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[60:80] = b"\xff" * 20
    (cat / "corrupt.png").write_bytes(bytes(corrupt))
    locked = make.save(make.pattern(32, 32, 3, 50), cat / "locked.png")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the opener refuse instead
        import ganlib.data.imaging as imaging

        real_open = imaging._open

        def refuse(path):
            if path.endswith("locked.png"):
                raise PermissionError(13, "Permission denied", path)
            return real_open(path)

        monkeypatch.setattr(imaging, "_open", refuse)
    messages = []
    path = prepare_dataset(cfg(dataset="folder", data_root=class_folder, image_size=32), tmp_path / "out",
                           log=messages.append)
    m = json.loads((path / "manifest.json").read_text())
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert m["count"] == 10 and m["skipped_count"] == 5
    assert reasons["cat/zero.png"].startswith("not a readable image")
    assert reasons["cat/text.png"].startswith("not a readable image")
    assert "truncated" in reasons["cat/truncated.png"].lower()
    assert reasons["cat/corrupt.png"] == "OSError: broken data stream when reading image file"
    assert reasons["cat/locked.png"].startswith("PermissionError: [Errno 13] Permission denied")
    said = [msg for msg in messages if "skipped" in msg]
    assert said and said[0].startswith("dataset: skipped 5 of 15 images that could not be read (listed under "
                                       "'skipped' in manifest.json; --strict makes this an error): cat/")
    strict = cfg(dataset="folder", data_root=class_folder, image_size=32, strict=True)
    with pytest.raises(DataError) as err:  # strict: the same store is refused, not silently reused
        prepare_dataset(strict, tmp_path / "out")
    assert one_line(err).startswith("data.strict: 5 of 15 images cannot be used (cat/")
    with pytest.raises(DataError, match="data.strict: 5 of 15"):
        prepare_dataset(strict, tmp_path / "new")
    assert nothing_prepared(tmp_path / "new")


def test_no_readable_image_at_all(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.png", "b.jpg"):
        (root / name).write_bytes(b"\x00" * 10)
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset="folder", data_root=root), tmp_path / "out")
    assert one_line(err).startswith(f"data.data_root: none of the 2 images in {root} could be read (a.png: ")
    assert nothing_prepared(tmp_path / "out")


def test_small_images_are_upscaled_with_a_warning_and_mixed_modes_mix(tmp_path, make):
    root = tmp_path / "mixed"
    make.save(make.pattern(16, 16, 3, 1), root / "small.png")
    make.save(make.pattern(64, 50, 1, 2), root / "gray.jpg")
    make.save(make.pattern(40, 40, 4, 3), root / "rgba.webp")
    make.save(make.pattern(30, 33, 3, 4), root / "palette.gif")
    make.save(make.pattern(28, 28, 3, 5), root / "cmyk.tif", mode="CMYK")
    messages = []
    data = cfg(dataset="folder", data_root=root, image_size=32)
    path = prepare_dataset(data, tmp_path / "out", log=messages.append)
    m = json.loads((path / "manifest.json").read_text())
    assert m["count"] == 5 and m["shape"] == [3, 32, 32] and m["transforms"]["upscaled"] == 3
    assert "dataset: warning: 3 images were smaller than 32 px and were upscaled" in messages


def test_empty_class_folder_is_ignored_with_a_warning_or_refused_when_strict(tmp_path, class_folder):
    (class_folder / "empty_class").mkdir()
    (class_folder / "empty_class" / "readme.txt").write_text("nothing here")
    messages = []
    data = cfg(dataset="folder", data_root=class_folder)
    path = prepare_dataset(data, tmp_path / "out", log=messages.append)
    assert json.loads((path / "manifest.json").read_text())["class_names"] == ["cat", "dog"]
    assert "dataset: warning: class folders without images, ignored: empty_class" in messages
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset="folder", data_root=class_folder, strict=True), tmp_path / "strict")
    assert one_line(err) == (f"data.data_root: class folder 'empty_class' in {class_folder} has no images; "
                             "put images in it or remove it (or drop --strict to ignore empty class folders)")


def test_images_outside_class_folders_are_listed(tmp_path, class_folder, make):
    make.save(make.pattern(32, 32, 3, 1), class_folder / "loose.png")
    path = prepare_dataset(cfg(dataset="folder", data_root=class_folder), tmp_path / "out")
    m = json.loads((path / "manifest.json").read_text())
    assert m["count"] == 10 and m["skipped"][0]["file"] == "loose.png"
    assert m["skipped"][0]["reason"].startswith("outside the class sub-folders")


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((5, 8, 8), np.float32), "are float32, expected uint8 0-255; convert with"),
    (np.zeros((5, 3, 8, 8), np.uint8), "have shape (5, 3, 8, 8), expected (N, H, W) or (N, H, W, C)"),
    (np.zeros((0, 8, 8), np.uint8), "holds no images"),
])
def test_malformed_npz(tmp_path, array, message):
    np.savez(tmp_path / "a.npz", images=array)
    with pytest.raises(DataError) as err:
        check_source(cfg(dataset="npz", data_root=tmp_path / "a.npz"))
    assert message in one_line(err)


def test_npz_without_known_keys_and_not_a_zip(tmp_path):
    np.savez(tmp_path / "a.npz", pixels=np.zeros((2, 8, 8), np.uint8), other=np.zeros(2))
    with pytest.raises(DataError, match=r"has arrays \['pixels', 'other'\] but none named images, x"):
        check_source(cfg(dataset="npz", data_root=tmp_path / "a.npz"))
    (tmp_path / "b.npz").write_text("not a zip")
    with pytest.raises(DataError, match="is not a readable .npz file"):
        check_source(cfg(dataset="npz", data_root=tmp_path / "b.npz"))


def test_truncated_gz_idx_is_caught_before_reading(tmp_path, mnist_dir):
    raw = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 3])
    labels = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / labels).write_bytes((mnist_dir / labels).read_bytes())
    with pytest.raises(DataError) as err:
        check_source(cfg(dataset="mnist", data_root=tmp_path))
    assert one_line(err).startswith(f"{tmp_path}/t10k-images-idx3-ubyte.gz is truncated or padded: its gzip")


def test_idx_labels_that_do_not_pair_up(tmp_path, make):
    make.idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 8, 8), np.uint8))
    make.idx(tmp_path / "x-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="has 3 labels for 4 images"):
        prepare_dataset(cfg(dataset="idx", data_root=tmp_path / "x-images-idx3-ubyte"), tmp_path / "out")


# --- the configuration is wrong --------------------------------------------------------------------


def test_unknown_dataset_name_lists_the_valid_ones(capsys):
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"dataset": "imagenet"}})
    assert one_line(err) == ("invalid config: data.dataset: Input should be 'digits', 'mnist', "
                             "'fashion-mnist', 'kmnist', 'cifar10', 'celeba', 'folder', 'npz' or 'idx' "
                             "(got 'imagenet')")
    from flows.train import main

    assert main(["--dataset", "imagenet", "--out", "/tmp/never-written"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid config: data.dataset: Input should be 'digits'")


def test_resolution_the_model_cannot_make(capsys):
    from flows.train import main

    assert main(["--image-size", "48", "--model", "dcgan", "--out", "/tmp/never-written"]) == 2
    err = capsys.readouterr().err
    assert err == "error: invalid config: data.image_size: Input should be 'auto', 28, 32, 64, 128 or 256 (got 48)\n"


def test_source_needs_a_root_and_classes_need_labels(tmp_path, make):
    with pytest.raises(ConfigError, match="dataset 'folder' needs data_root"):
        build_config({"data": {"dataset": "folder"}})
    with pytest.raises(ConfigError, match="data.classes: give at least one class"):
        build_config({"data": {"classes": ""}})
    make.save(make.pattern(8, 8, 3, 0), tmp_path / "flat" / "a.png")
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg(dataset="folder", data_root=tmp_path / "flat", classes="a"), tmp_path / "out")
    assert one_line(err).startswith("data.classes: folder here has no labels")


# --- interruption --------------------------------------------------------------------------------


KILLER = textwrap.dedent("""
    import os, signal, sys
    import ganlib.data.writer as writer
    from ganlib.config import DataConfig
    from ganlib.data.store import prepare_dataset

    real_write = writer.NpyWriter.write
    def write_then_die(self, rows):
        real_write(self, rows)
        if self.rows >= 32:
            os.kill(os.getpid(), signal.SIGKILL)  # as if the machine went down mid-preparation
    writer.NpyWriter.write = write_then_die
    prepare_dataset(DataConfig(dataset="npz", data_root=sys.argv[1]), sys.argv[2])
""")


def test_a_kill_during_preparation_never_leaves_a_store_that_looks_complete(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (700, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images)
    data = cfg(dataset="npz", data_root=tmp_path / "a.npz")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "a.npz"), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    final = store_path(data, out)
    leftovers = list(final.parent.iterdir())
    assert not final.exists() and len(leftovers) == 1 and leftovers[0].name.startswith(f".{final.name}.tmp-")
    assert prepare_dataset(data, out) == final  # rebuilt from scratch, the stale temporary removed
    assert list(final.parent.iterdir()) == [final] and len(load_store(final).images) == 700


def test_preflight_catches_class_and_strict_mistakes_before_any_work(tmp_path, class_folder, make):
    (class_folder / "empty_class").mkdir()
    with pytest.raises(DataError, match="class folder 'empty_class'"):
        check_source(cfg(dataset="folder", data_root=class_folder, strict=True))
    check_source(cfg(dataset="folder", data_root=class_folder, classes="dog"))
    images = np.stack([make.pattern(32, 32, 3, i) for i in range(4)])
    make.cifar_batch(tmp_path / "c" / "cifar-10-batches-py" / "test_batch", images, [0, 1, 2, 3])
    with pytest.raises(DataError, match="unknown class 'cow' for cifar10; valid: airplane"):
        check_source(cfg(dataset="cifar10", data_root=tmp_path / "c", classes="cow"))
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"unknown class '5' for npz; valid: 0, 1 \(or indices 0-1\)"):
        check_source(cfg(dataset="npz", data_root=tmp_path / "a.npz", classes="5"))


def test_a_symlink_cycle_in_a_class_folder_is_walked_once(tmp_path, class_folder):
    (class_folder / "cat" / "loop").symlink_to(class_folder / "cat", target_is_directory=True)
    path = prepare_dataset(cfg(dataset="folder", data_root=class_folder), tmp_path / "out")
    assert json.loads((path / "manifest.json").read_text())["count"] == 10


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(tmp_path, class_folder, make):
    """Issue #22: one such name made preparation fail with UnicodeEncodeError."""
    good = (class_folder / "cat" / "c0.png").read_bytes()
    with open(os.path.join(os.fsencode(class_folder / "cat"), b"bad\xff.png"), "wb") as f:
        f.write(good)
    path = prepare_dataset(cfg(dataset="folder", data_root=class_folder, image_size=32), tmp_path / "out")
    m = json.loads((path / "manifest.json").read_text())
    assert m["count"] == 10 and [s["reason"] for s in m["skipped"]] == [
        "file name is not valid UTF-8; rename the file to use it"]


def test_a_class_folder_whose_name_is_not_utf8_is_not_taken_and_said_once(tmp_path, class_folder):
    """It was kept as a class of 0 images, each of its files blamed for the folder's name."""
    bad = os.path.join(os.fsencode(class_folder), b"bird\xff")
    os.mkdir(bad)
    with open(os.path.join(bad, b"b0.png"), "wb") as f:
        f.write((class_folder / "cat" / "c0.png").read_bytes())
    path = prepare_dataset(cfg(dataset="folder", data_root=class_folder, image_size=32), tmp_path / "out")
    m = json.loads((path / "manifest.json").read_text())
    assert m["count"] == 10 and m["class_names"] == ["cat", "dog"] and m["skipped"] == []
    assert m["source"]["not_taken"] == [{"path": "bird\ufffd", "reason": "a folder whose name is not valid UTF-8; "
                                         "rename it to use its images"}]


def test_cli_a_batch_larger_than_a_folder_fails_before_any_work(tmp_path, capsys, make, monkeypatch):
    """Issue #22: 3 images with --batch-size 32 failed only after the server started and the store was made."""
    import flows.train
    from flows.train import main

    monkeypatch.setattr(flows.train, "gan_pipeline", lambda *a, **k: pytest.fail("the pipeline must not start"))
    root = tmp_path / "three"
    for i in range(3):
        make.save(make.pattern(32, 32, 3, i), root / f"{i}.png")
    out = tmp_path / "out"
    code = main(["--dataset", "folder", "--data-root", str(root), "--image-size", "32", "--batch-size", "32",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == ("error: train.batch_size: 32 is larger than the dataset (3 images); "
                                 "use --batch-size 3 or less\n")
    assert not out.exists()


@pytest.mark.parametrize("image_size", ["auto", 32])
def test_the_preflight_finds_a_folder_once(tmp_path, class_folder, monkeypatch, image_size):
    """Each finding lists and stats every file: the preflight's source check, image size auto, the store's key
    and the batch-size check share one (it was three, four with image size auto)."""
    from ganlib.data import sources
    from ganlib.preflight import check_run

    found = []
    real = sources._locate_folder
    monkeypatch.setattr(sources, "_locate_folder", lambda *a: found.append(1) or real(*a))
    run = build_config({"data": {"dataset": "folder", "data_root": str(class_folder), "image_size": image_size},
                        "train": {"batch_size": 8}, "out": str(tmp_path / "out"), "run_id": "once"})
    check_run(run)
    assert len(found) == 1
    prepare_dataset(run.data if image_size == 32 else run.data.model_copy(update={"image_size": 32}), run.out)
    found.clear()
    check_run(run)  # the prepared store's count, keyed by the same finding
    assert len(found) == 1
    with pytest.raises(ConfigError, match="larger than the dataset"):
        check_run(run.model_copy(update={"train": run.train.model_copy(update={"batch_size": 64})}))


def test_cli_one_image_says_to_add_images_not_to_lower_the_batch(tmp_path, capsys, make, monkeypatch):
    """'use --batch-size 1 or less' sent the user to a value the config refuses (a batch holds at least 2)."""
    import flows.train
    from flows.train import main

    monkeypatch.setattr(flows.train, "gan_pipeline", lambda *a, **k: pytest.fail("the pipeline must not start"))
    make.save(make.pattern(32, 32, 3, 0), tmp_path / "one" / "0.png")
    code = main(["--dataset", "folder", "--data-root", str(tmp_path / "one"), "--image-size", "32",
                 "--batch-size", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: train.batch_size: the dataset has 1 usable image(s); a GAN needs at "
                                        "least 2") and err.count("\n") == 1


def test_a_file_that_is_listed_but_cannot_be_read_is_one_line(tmp_path, class_folder, monkeypatch):
    """A folder with read but no execute permission lists its files and cannot stat them (root ignores modes,
    so the stat is made to fail here)."""
    from ganlib.config import DataConfig
    from ganlib.data import sources

    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith("c1.png"):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(sources.os, "stat", stat)
    with pytest.raises(DataError, match=r"cannot read .*c1.png: Permission denied; make the images and their "
                                        r"folders readable \(e.g. chmod -R a\+rX DIR\)"):
        sources.locate(DataConfig(dataset="folder", data_root=class_folder))


@pytest.mark.parametrize("root", ["", "  "])
def test_an_empty_data_root_is_refused_not_read_as_this_directory(root):
    """An unset $DATA in --data-root "$DATA" would have trained on whatever images sit in the current directory."""
    with pytest.raises(ConfigError, match=r"data.data_root: is empty; give the directory or file of the images"):
        build_config({"data": {"dataset": "folder", "data_root": root}})


def test_images_beside_sub_folders_without_images_are_a_flat_folder(tmp_path, make):
    """A macOS zip leaves __MACOSX/ (hidden ._ files only) beside the images; a notes/ folder holds text. Every
    sub-folder counted as a class, the images were 'stray' and the error said 'no image files; found 0 other'."""
    from ganlib.config import DataConfig
    from ganlib.data.sources import locate, open_source

    root = tmp_path / "unzipped"
    for i in range(6):
        make.save(make.pattern(32, 32, 3, i), root / f"{i}.png")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._0.png").write_bytes(b"\0\5\26\7")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("where the images came from")
    cfg = DataConfig(dataset="folder", data_root=root)
    located = locate(cfg)
    source = open_source(cfg, located)
    assert located.extra["layout"] == "flat" and source.count == 6 and source.labels is None
    assert "__MACOSX (a sub-folder without images, beside images at the top level: the folder is read as flat)" \
        in source.summary and "notes (" in source.summary
