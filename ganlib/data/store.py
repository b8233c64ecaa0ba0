"""The prepared store: a dataset in the one form training reads.

A store is a directory ``<out>/_cache/datasets/<dataset>-<key>/`` holding

- ``images.npy``: uint8 (N, C, H, W), 0 = black, 255 = white;
- ``labels.npy``: int64 (N,) class indices (absent for unlabelled data);
- ``manifest.json``: the source spec, count, shape, class histogram and sha256 of both arrays.

``key`` hashes the data spec and a fingerprint of the source files, so a changed spec or changed
source files give a new store, and the same spec finds the existing one at once. A store is built
in a temporary directory and renamed into place only when complete, so a crash never leaves a store
that looks finished.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ganlib.config import DataConfig
from ganlib.data import digits, idx
from ganlib.errors import DataError
from ganlib.io import atomic_write_json, sha256_bytes

STORE_FORMAT = 1
DIGITS_VERSION = 1  # bump when the digit generator's output changes, to invalidate old stores


@dataclass(frozen=True)
class PreparedStore:
    path: Path
    manifest: dict[str, Any]
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray | None  # int64 (N,)

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or 0)


def _source_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What identifies the source's content cheaply: generator version, or files' sizes and mtimes."""
    if cfg.dataset == "digits":
        return {"generator_version": DIGITS_VERSION}
    root = Path(cfg.data_root).resolve()  # type: ignore[arg-type]
    files = sorted(p for p in root.rglob("*idx*-ubyte*") if p.is_file()) if root.is_dir() else []
    return {"root": str(root), "files": [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def store_key(cfg: DataConfig) -> str:
    """Hex digest identifying the prepared store of ``cfg``."""
    spec = cfg.model_dump(mode="json")
    if spec.get("data_root"):
        spec["data_root"] = str(Path(spec["data_root"]).resolve())
    blob = json.dumps({"format": STORE_FORMAT, "spec": spec, "source": _source_fingerprint(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def store_path(cfg: DataConfig, out: Path) -> Path:
    return Path(out) / "_cache" / "datasets" / f"{cfg.dataset}-{store_key(cfg)}"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 images (N, C, S, S) to (N, C, size, size), antialiased bilinear."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear",
                        antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def _load_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if cfg.dataset == "digits":
        images, labels = digits.generate_digits(cfg.num_images, seed=cfg.seed, image_size=cfg.image_size)
        return images, labels, {"kind": "digits", "seed": cfg.seed, "generator_version": DIGITS_VERSION}
    if cfg.dataset == "mnist":
        root = Path(cfg.data_root)  # type: ignore[arg-type]
        images, labels, split = idx.load_mnist(root, cfg.split)
        return _resize(images, cfg.image_size), labels, {"kind": "mnist-idx", "root": str(root.resolve()), "split": split}
    raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; choose one of digits, mnist")


def prepare_dataset(cfg: DataConfig, out: Path, log=None) -> Path:
    """Build the prepared store for ``cfg`` under ``out`` unless it already exists; return its path.

    ``log``: optional callable taking a message string.
    """
    final = store_path(cfg, out)
    if (final / "manifest.json").is_file():
        if log:
            log(f"dataset: reusing prepared store {final}")
        return final
    t0 = time.perf_counter()
    images, labels, source = _load_source(cfg)
    if cfg.limit is not None:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    if len(images) == 0:
        raise DataError(f"dataset {cfg.dataset!r} produced no images; check data.data_root and data.limit")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1
    histogram = np.bincount(labels, minlength=num_classes)
    manifest = {
        "format": STORE_FORMAT,
        "key": store_key(cfg),
        "dataset": cfg.dataset,
        "spec": json.loads(cfg.model_dump_json()),
        "source": source,
        "count": int(len(images)),
        "shape": list(images.shape[1:]),
        "dtype": "uint8",
        "num_classes": num_classes,
        "class_histogram": {str(c): int(n) for c, n in enumerate(histogram)},
        "sha256": {"images": sha256_bytes(images.data), "labels": sha256_bytes(labels.data)},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        atomic_write_json(tmp / "manifest.json", manifest)  # last: its presence marks completeness
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # not a concurrent preparation that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"dataset: prepared {len(images)} images {tuple(images.shape[1:])} in {manifest['seconds']} s -> {final}")
    return final


def load_store(path: Path, verify: bool = True) -> PreparedStore:
    """Open a prepared store; with ``verify``, check the arrays against the manifest's sha256."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        labels_file = path / "labels.npy"
        labels = np.load(labels_file) if labels_file.is_file() else None
    except (OSError, ValueError) as err:
        raise DataError(f"prepared store {path} is unreadable ({err}); delete that directory to rebuild it") from None
    if verify:
        if sha256_bytes(np.ascontiguousarray(images).data) != manifest["sha256"]["images"] or (
            labels is not None and sha256_bytes(labels.data) != manifest["sha256"]["labels"]
        ):
            raise DataError(f"prepared store {path} does not match its manifest checksum; delete it to rebuild")
    return PreparedStore(path=path, manifest=manifest, images=images, labels=labels)
