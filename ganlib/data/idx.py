"""Reading IDX files, the format of the original MNIST distribution (gzip-compressed or not).

Two ways in: ``read_idx``/``load_mnist`` read whole files (small, simple), and ``IdxHeader`` with
``iter_idx`` stream the rows of a large file in chunks, so memory stays bounded whatever its size.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ganlib.errors import DataError

_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_COLOUR_IMAGES_MAGIC = 2052  # 0x00000804: unsigned bytes, 4 dimensions (N, H, W, C)


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
        raise DataError(
            f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}; replace it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_labels(path: Path) -> np.ndarray:
    """An IDX labels file (1 dimension of unsigned bytes) as int64 (N,)."""
    return read_idx(path, _LABELS_MAGIC).astype(np.int64)


def find_mnist_files(root: Path, split: str, folder: str = "MNIST") -> tuple[Path, Path]:
    """Locate the (images, labels) IDX pair for ``split`` ('train' or 'test') under ``root``.

    Accepts the files directly in ``root``, or torchvision's layout ``root/<folder>/raw`` (folder:
    MNIST, FashionMNIST or KMNIST, which share the file names), each gzip-compressed or not.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    for where in (root, root / folder / "raw", root / "raw"):
        for ext in ("", ".gz"):
            images = where / f"{prefix}-images-idx3-ubyte{ext}"
            labels = where / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.is_file() and labels.is_file():
                return images, labels
    raise DataError(
        f"{folder} {split} files not found in {root}: expected {prefix}-images-idx3-ubyte.gz and "
        f"{prefix}-labels-idx1-ubyte.gz (or uncompressed) there or in {root}/{folder}/raw")


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
    labels = read_labels(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{images_path} and {labels_path} do not pair up: shapes {images.shape} and {labels.shape}")
    return images[:, None, :, :].copy(), labels, split


# --- streaming ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdxHeader:
    """The header of an IDX file of unsigned bytes: its dimensions and where the data starts."""

    path: Path
    dims: tuple[int, ...]
    offset: int

    @property
    def rows(self) -> int:
        return self.dims[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.dims[1:], dtype=np.int64))


def _open_stream(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def read_idx_header(path: Path, ndims: tuple[int, ...] = (3, 4)) -> IdxHeader:
    """Parse the header of an unsigned-byte IDX file with one of ``ndims`` dimensions.

    Checks what can be checked without reading the data: the magic number, and that the file is
    long enough (the exact size for uncompressed files; the size gzip records in its trailer for
    .gz files).
    """
    path = Path(path)
    try:
        with _open_stream(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(
                    f"{path} is not an IDX file of unsigned bytes (it starts with {head[:4]!r}); "
                    "point data.data_root at an ...-idx3-ubyte images file")
            if head[3] not in ndims:
                raise DataError(
                    f"{path} is an IDX file with {head[3]} dimensions, expected "
                    f"{' or '.join(map(str, ndims))}; images are (N, H, W) or (N, H, W, C)")
            raw = f.read(4 * head[3])
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; replace it with an intact copy") from None
    if len(raw) < 4 * head[3]:
        raise DataError(f"{path} is truncated inside its header; replace it")
    dims = tuple(int.from_bytes(raw[4 * i: 4 * i + 4], "big") for i in range(head[3]))
    header = IdxHeader(path, dims, 4 + 4 * head[3])
    expected = header.offset + header.rows * header.row_bytes
    if path.suffix == ".gz":
        with open(path, "rb") as f:  # gzip's last 4 bytes: the uncompressed size modulo 2**32
            f.seek(-4, 2)
            recorded = int.from_bytes(f.read(4), "little")
        actual, what = recorded, "its gzip trailer records"
        matches = recorded == expected % 2**32
    else:
        actual, what = path.stat().st_size, "it has"
        matches = actual == expected
    if not matches:
        raise DataError(f"{path} is truncated or padded: {what} {actual} bytes, its header says "
                        f"{expected}; replace it with an intact copy")
    return header


def iter_idx(header: IdxHeader, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """The rows of an IDX file in order, as uint8 arrays (n, *dims[1:]) of at most ``rows_per_chunk``."""
    shape, step = header.dims[1:], max(1, rows_per_chunk)
    try:
        with _open_stream(header.path) as f:
            f.read(header.offset)
            for start in range(0, header.rows, step):
                n = min(step, header.rows - start)
                data = f.read(n * header.row_bytes)
                if len(data) != n * header.row_bytes:
                    raise DataError(
                        f"{header.path} is truncated at row {start}; replace it with an intact copy")
                yield np.frombuffer(data, dtype=np.uint8).reshape(n, *shape)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"cannot read IDX file {header.path}: {err}; replace it with an intact copy") from None
