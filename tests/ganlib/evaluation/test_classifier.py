"""Tests for ganlib.evaluation.classifier: the domain classifier, its training, inference and storage."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from ganlib.errors import CheckpointError
from ganlib.evaluation.classifier import (
    DomainClassifier,
    classify,
    load_classifier,
    save_classifier,
    train_classifier,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
MNIST_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    assert magic == expected_magic, f"{path}: magic {magic}, expected {expected_magic}"
    ndim = data[3]  # low byte of the magic is the number of dimensions
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The real MNIST test set: uint8 images (10000, 1, 28, 28) and int64 labels (10000,)."""
    if not (MNIST_IMAGES.is_file() and MNIST_LABELS.is_file()):
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    images = _read_idx(MNIST_IMAGES, 2051)
    labels = _read_idx(MNIST_LABELS, 2049)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _toy_dataset(n: int = 240, num_classes: int = 4, channels: int = 1, size: int = 28, seed: int = 0):
    """Images whose class is the quadrant holding a bright square: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 40, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    half = size // 2
    for i, label in enumerate(labels.tolist()):
        r, c = (label // 2) * half, (label % 2) * half
        images[i, :, r + 3 : r + half - 3, c + 3 : c + half - 3] = 220
    return images, labels


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


# --- model --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64, 128])
def test_model_output_shapes(channels: int, size: int) -> None:
    model = DomainClassifier(channels, size, num_classes=7, feature_dim=32).eval()
    x = torch.rand(5, channels, size, size) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (5, 7)
        assert model.features(x).shape == (5, 32)
        feats, logits = model.features_and_logits(x)
    assert feats.shape == (5, 32) and logits.shape == (5, 7)
    assert (feats >= 0).all()


def test_features_and_logits_consistent_with_forward_and_features() -> None:
    torch.manual_seed(0)
    model = DomainClassifier(3, 32, num_classes=5).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        feats, logits = model.features_and_logits(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        torch.testing.assert_close(feats, model.features(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 2, "image_size": 28, "num_classes": 10}, "in_channels must be one of"),
        ({"in_channels": 1, "image_size": 30, "num_classes": 10}, "image_size must be one of"),
        ({"in_channels": 1, "image_size": 28, "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"in_channels": 1, "image_size": 28, "num_classes": 10, "feature_dim": 0}, "feature_dim"),
    ],
)
def test_model_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DomainClassifier(**kwargs)


def test_model_rejects_wrong_input_shape() -> None:
    model = DomainClassifier(1, 28, 10).eval()
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))


# --- training -----------------------------------------------------------------------------


def test_train_on_toy_data_reports_info_and_logs() -> None:
    images, labels = _toy_dataset()
    logs: list[dict] = []
    model, info = train_classifier(images, labels, 4, num_steps=150, batch_size=32, on_log=logs.append)
    assert set(info) == {"holdout_accuracy", "train_steps", "num_train", "num_holdout", "seconds"}
    assert type(info["holdout_accuracy"]) is float and type(info["seconds"]) is float
    assert (info["train_steps"], info["num_train"], info["num_holdout"]) == (150, 216, 24)
    assert info["holdout_accuracy"] == 1.0
    assert not model.training
    assert [entry["step"] for entry in logs] == [100, 150]
    assert all(isinstance(entry["loss"], float) and entry["num_steps"] == 150 for entry in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    images, labels = _toy_dataset(n=100)
    rng_before = torch.get_rng_state()
    model_a, info_a = train_classifier(images, labels, 4, num_steps=6, batch_size=16, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)
    model_b, info_b = train_classifier(images, labels, 4, num_steps=6, batch_size=16, seed=3)
    model_c, _ = train_classifier(images, labels, 4, num_steps=6, batch_size=16, seed=4)
    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert info_a["holdout_accuracy"] == info_b["holdout_accuracy"]
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_training_works_without_augmentation_and_with_rgb_64() -> None:
    images, labels = _toy_dataset(n=60, channels=3, size=64)
    model, info = train_classifier(images, labels, 4, num_steps=3, batch_size=8, augment=False)
    assert (model.in_channels, model.image_size, model.num_classes) == (3, 64, 4)
    assert info["num_holdout"] == 6


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"images": torch.zeros(10, 1, 28, 28)}, "images must be a uint8 tensor"),
        ({"labels": torch.zeros(9, dtype=torch.int64)}, r"labels must be a tensor of shape \(10,\)"),
        ({"labels": torch.full((10,), 4)}, r"labels must lie in \[0, 3\]"),
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
        ({"images": torch.zeros(10, 2, 28, 28, dtype=torch.uint8)}, "channels"),
        ({"images": torch.zeros(10, 1, 30, 30, dtype=torch.uint8)}, "side in"),
        ({"holdout_fraction": 1.0}, r"holdout_fraction must be in \(0, 1\)"),
        ({"lr": -1.0}, "lr must be a positive"),
    ],
)
def test_train_rejects_bad_arguments(change: dict, match: str) -> None:
    kwargs = {
        "images": torch.zeros(10, 1, 28, 28, dtype=torch.uint8),
        "labels": torch.zeros(10, dtype=torch.int64),
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        train_classifier(kwargs.pop("images"), kwargs.pop("labels"), 4, **kwargs)


@pytest.mark.slow
def test_training_on_real_mnist_reaches_high_accuracy(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = mnist
    model, info = train_classifier(images[:5000], labels[:5000], 10, num_steps=400, seed=0)
    assert info["num_holdout"] == 500
    assert info["holdout_accuracy"] > 0.95, info

    # Digits the classifier never saw (neither trained on nor held out) are also recognised,
    # and features/probabilities come back as documented.
    feats, probs = classify(model, _to_float(images[5000:7000]))
    assert feats.shape == (2000, 128) and probs.shape == (2000, 10)
    accuracy = float((probs.argmax(1) == labels[5000:7000]).float().mean())
    assert accuracy > 0.95


# --- classify -----------------------------------------------------------------------------


def test_classify_shapes_dtypes_and_batching() -> None:
    torch.manual_seed(0)
    model = DomainClassifier(1, 28, 6, feature_dim=24).eval()
    x = torch.rand(23, 1, 28, 28) * 2 - 1
    feats, probs = classify(model, x, batch_size=1000)
    assert feats.shape == (23, 24) and probs.shape == (23, 6)
    assert feats.dtype == torch.float32 and probs.dtype == torch.float32
    assert feats.device.type == "cpu" and probs.device.type == "cpu"
    torch.testing.assert_close(probs.sum(1), torch.ones(23))
    feats_small, probs_small = classify(model, x, batch_size=5)
    torch.testing.assert_close(feats_small, feats, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs_small, probs, rtol=1e-5, atol=1e-6)
    assert model.training is False


def test_classify_rejects_model_in_train_mode() -> None:
    model = DomainClassifier(1, 28, 3)
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        classify(model, torch.zeros(2, 1, 28, 28))


def test_classify_empty_and_rejects_uint8() -> None:
    model = DomainClassifier(1, 28, 3, feature_dim=8).eval()
    feats, probs = classify(model, torch.zeros(0, 1, 28, 28))
    assert feats.shape == (0, 8) and probs.shape == (0, 3)
    with pytest.raises(ValueError, match="x.float\\(\\) / 127.5 - 1"):
        classify(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_and_classify_on_gpu() -> None:
    images, labels = _toy_dataset()
    model, info = train_classifier(images, labels, 4, num_steps=100, batch_size=32, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert info["holdout_accuracy"] == 1.0
    feats, probs = classify(model, _to_float(images))
    assert feats.device.type == "cpu" and probs.shape == (240, 4)


# --- save / load --------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    images, labels = _toy_dataset(n=80)
    model, info = train_classifier(images, labels, 4, num_steps=5, batch_size=16)
    path = tmp_path / "sub" / "classifier.pt"
    meta = {"dataset": "toy", "info": info, "classes": ["a", "b", "c", "d"]}
    save_classifier(model, meta, path)
    assert path.is_file()
    assert not path.with_suffix(".pt.tmp").exists()

    loaded, loaded_meta = load_classifier(path, "cpu")
    assert loaded_meta == meta
    assert not loaded.training
    x = _to_float(images)
    feats, probs = classify(model, x)
    feats2, probs2 = classify(loaded, x)
    assert torch.equal(feats, feats2) and torch.equal(probs, probs2)


def test_save_rejects_non_plain_meta(tmp_path: Path) -> None:
    model = DomainClassifier(1, 28, 3)
    with pytest.raises(ValueError, match="meta"):
        save_classifier(model, {"path": Path("x")}, tmp_path / "c.pt")
    assert not any(tmp_path.iterdir())


def _assert_one_line_checkpoint_error(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message


def test_load_corrupt_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    path.write_bytes(b"this is not a torch file\n" * 10)
    with pytest.raises(CheckpointError, match="delete it") as excinfo:
        load_classifier(path, "cpu")
    _assert_one_line_checkpoint_error(excinfo, path)


def test_load_truncated_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    save_classifier(DomainClassifier(1, 28, 3), {}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="delete it") as excinfo:
        load_classifier(path, "cpu")
    _assert_one_line_checkpoint_error(excinfo, path)


def test_load_foreign_torch_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "generator.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a ganlib domain classifier") as excinfo:
        load_classifier(path, "cpu")
    _assert_one_line_checkpoint_error(excinfo, path)


def test_load_missing_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="not found") as excinfo:
        load_classifier(path, "cpu")
    _assert_one_line_checkpoint_error(excinfo, path)
