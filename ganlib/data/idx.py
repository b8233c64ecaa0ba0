"""Reading IDX files, the format of the original MNIST distribution (gzip-compressed or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ganlib.errors import DataError

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; replace it with an intact copy") from None


def read_idx(path: Path, expect_magic: int) -> np.ndarray:
    """An IDX file as a uint8 array of the shape its header declares."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes); replace it")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expect_magic:
        raise DataError(f"{path} has IDX magic {magic}, expected {expect_magic}; is it the right file?")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) + header
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}; replace it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """Locate the (images, labels) IDX pair for ``split`` ('train' or 'test') under ``root``.

    Accepts the files directly in ``root``, or torchvision's layout ``root/MNIST/raw``, each
    gzip-compressed or not.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for ext in ("", ".gz"):
            images = folder / f"{prefix}-images-idx3-ubyte{ext}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.is_file() and labels.is_file():
                return images, labels
    raise DataError(
        f"MNIST {split} files not found in {root}: expected {prefix}-images-idx3-ubyte.gz and "
        f"{prefix}-labels-idx1-ubyte.gz (or uncompressed) there or in {root}/MNIST/raw")


def load_mnist(root: Path, split: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST digits from IDX files: images uint8 (N, 1, 28, 28), labels int64 (N,), and the split read."""
    if not root.is_dir():
        raise DataError(f"data.data_root: {root} is not a directory; point --data-root at the MNIST files")
    if split == "auto":
        try:
            images_path, labels_path = find_mnist_files(root, "train")
            split = "train"
        except DataError:
            images_path, labels_path = find_mnist_files(root, "test")
            split = "test"
    else:
        images_path, labels_path = find_mnist_files(root, split)
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_path} and {labels_path} do not pair up: shapes {images.shape} and {labels.shape}")
    return images[:, None, :, :].copy(), labels, split
