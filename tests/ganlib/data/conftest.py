"""Builders for the datasets the data tests prepare: image folders, npz, IDX and CIFAR-10 files."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def pattern(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """A uint8 (h, w, c) image with structure (gradients) and noise, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (k + 3) + y * (seed % 7 + 1) + 40 * k) % 256 for k in range(c)], axis=-1)
    return ((base + rng.integers(0, 32, (h, w, c))) % 256).astype(np.uint8)


def save(array: np.ndarray, path: Path, mode: str | None = None, **kwargs) -> Path:
    """Save a (h, w, c) uint8 array as an image file; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **kwargs)
    return path


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_cifar_batch(path: Path, images_hwc: np.ndarray, labels: list[int]) -> Path:
    """A CIFAR-10 python batch as torchvision reads it: {'data': uint8 (n, 3072) CHW, 'labels': [...]}."""
    data = images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                     "filenames": [f"img_{i}.png" for i in range(len(labels))]}, f, protocol=2)
    return path


@pytest.fixture
def class_folder(tmp_path):
    """A folder with class sub-folders 'cat' (6 PNG, 32x32) and 'dog' (4 JPEG, 40x48); returns its path."""
    root = tmp_path / "pets"
    for i in range(6):
        save(pattern(32, 32, 3, i), root / "cat" / f"c{i}.png")
    for i in range(4):
        save(pattern(48, 40, 3, 10 + i), root / "dog" / f"d{i}.jpg", quality=95)
    return root


@pytest.fixture
def make():
    """The builders above, for test modules (importlib import mode cannot import conftest)."""
    return SimpleNamespace(pattern=pattern, save=save, idx=write_idx, cifar_batch=write_cifar_batch)
