"""The prepared store: a dataset in the one form training reads.

A store is a directory ``<out>/_cache/datasets/<dataset>-<key>/`` holding

- ``images.npy``: uint8 (N, C, H, W), 0 = black, 255 = white (open it with ``mmap_mode="r"``);
- ``labels.npy``: int64 (N,) class indices (absent for unlabelled data);
- ``real_grid.png``: 100 real images spread over the dataset, drawn like the sample grids;
- ``manifest.json``: the source and a fingerprint of its files, every transform, count, shape,
  class names and histogram, the images that were skipped and why, and sha256 of both arrays.

``key`` hashes the data spec and the source fingerprint (names, sizes and modification times of
the input files), so a changed spec or changed source files give a new store, and the same spec
finds the existing one at once.

Preparation streams: the source is read and decoded in chunks (in worker processes, one per
core, for image files and for arrays that need resampling) and appended to the arrays on disk,
so memory stays bounded by the chunks in flight, not the dataset's size (see ``bench/prepare.py``
for measurements). It writes to a temporary directory, validates the result against the hashes
taken while writing, and only then renames it into place: a crash or kill never leaves a store
that a later run takes for complete (stale temporary directories are removed by the next run).

This module never imports torch, which alone would take 540 MB of memory.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganlib.config import DataConfig
from ganlib.data import sources
from ganlib.data.imaging import RESAMPLE_NAME, ImageSpec, process_task
from ganlib.data.preview import evenly_spaced, save_image_grid
from ganlib.data.writer import (
    NpyWriter,
    available_cores,
    iter_npy_rows,
    map_ordered,
    read_npy_rows,
    sha256_npy_data,
)
from ganlib.errors import DataError
from ganlib.runs.files import atomic_write_bytes, atomic_write_json, writer_is_gone
from ganlib.runs.paths import CacheDir
from ganlib.runs.storage import writing

STORE_FORMAT = 2
TASK_ROWS = 256  # images per decoding task: large enough to amortise the hop to a worker, small in memory
POOL_MIN_IMAGES = 2048  # below this, starting worker processes costs more than it saves
GRID_FILE = "real_grid.png"
MANIFEST = "manifest.json"  # written last: its presence marks a complete store
# Fields that change how preparation reacts or how training reads, not what the store holds.
_NOT_IN_KEY = ("strict", "download", "resident_limit_mb")


@dataclass(frozen=True)
class PreparedStore:
    path: Path
    manifest: dict[str, Any]
    images: np.ndarray  # uint8 (N, C, H, W), memory-mapped
    labels: np.ndarray | None  # int64 (N,)

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or 0)


def _key(cfg: DataConfig, fingerprint: str) -> str:
    spec = cfg.model_dump(mode="json", exclude=set(_NOT_IN_KEY))
    if spec.get("data_root"):
        spec["data_root"] = str(Path(spec["data_root"]).expanduser().resolve())
    blob = json.dumps({"format": STORE_FORMAT, "spec": spec, "source": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sized(cfg: DataConfig, say: Callable[[str], None] | None = None,
          located: sources.Located | None = None) -> DataConfig:
    """``cfg`` with ``image_size`` 'auto' replaced by the images' own size (``sources.auto_image_size``, no
    device limit: a run's config resolves it first, for its device); ``say`` hears which and why;
    ``located``: the source already found (the image size plays no part in finding it)."""
    if cfg.image_size != "auto":
        return cfg
    size, why = sources.auto_image_size(cfg, located=located)
    if say is not None:
        say(f"dataset: image size auto: {size} px ({why})")
    return cfg.model_copy(update={"image_size": size})


def store_key(cfg: DataConfig, located: sources.Located | None = None) -> str:
    """Hex digest identifying the prepared store of ``cfg`` (spec and source fingerprint); ``located``: the
    source, when the caller has already found it."""
    try:
        located = located or sources.locate(cfg)
        cfg, fingerprint = sized(cfg, located=located), located.fingerprint()
    except DataError:
        fingerprint = "source-not-found"  # e.g. not downloaded yet: no store can exist for it
    return _key(cfg, fingerprint)


def store_path(cfg: DataConfig, out: Path, located: sources.Located | None = None) -> Path:
    """Where the store of ``cfg`` is (or would be): ``<out>/_cache/datasets/<dataset>-<key>/``."""
    return CacheDir.under(out).dataset(f"{cfg.dataset}-{store_key(cfg, located)}")


def trained_store(trained: dict[str, Any], out: Path) -> Path | None:
    """The prepared store a run trained on, named by its ``data/manifest.json`` (``trained``: its dataset and
    key), if that store is still whole under ``out``'s cache and holds the same arrays (sha256); else None.

    Scoring a run against it needs neither its source (moved or deleted since) nor a fresh preparation, and
    scores it against exactly the images it trained on."""
    if not trained.get("dataset") or not trained.get("key") or not trained.get("sha256"):
        return None
    path = CacheDir.under(out).dataset(f"{trained['dataset']}-{trained['key']}")
    manifest = read_store_manifest(path)
    return path if manifest is not None and manifest.get("sha256") == trained["sha256"] else None


def read_store_manifest(store_dir: Path) -> dict[str, Any] | None:
    """A prepared store's ``manifest.json``, or None when the store is not (completely) there."""
    path = Path(store_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def prepared_size(store_dir: Path) -> int | None:
    """The side of a prepared store's images (None when the store is not there): what a run's
    ``data.image_size`` 'auto' means once its images are prepared."""
    manifest = read_store_manifest(store_dir)
    return int(manifest["shape"][1]) if manifest is not None else None


def _remove_stale_temporaries(final: Path) -> None:
    """Delete temporary directories of earlier preparations whose process no longer runs."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        if writer_is_gone(tmp):  # (this process's own is removed by the caller)
            shutil.rmtree(tmp, ignore_errors=True)


def _check_strict(cfg: DataConfig, skipped: list[dict[str, str]], total: int) -> None:
    if cfg.strict and skipped:
        first = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise DataError(f"data.strict: {len(skipped)} of {total} images cannot be used ({first}); fix or "
                        "remove them, or drop --strict to skip them (they are then listed in the manifest)")


def prepare_dataset(cfg: DataConfig, out: Path, log: Callable[[str], None] | None = None, *,
                    workers: int | None = None) -> Path:
    """Build the prepared store for ``cfg`` under ``out`` unless it already exists; return its path.

    ``log``: optional callable taking a message string (progress, skipped images, warnings).
    ``workers``: decoding processes (default: one per available core; 1 decodes in this process).
    Raises ``DataError`` with one line for a missing or unusable source.
    """
    say = log or (lambda message: None)
    if cfg.download:
        sources.download_dataset(cfg, say)
    located = sources.locate(cfg)
    cfg = sized(cfg, say, located)
    key = _key(cfg, located.fingerprint())
    final = CacheDir.under(out).dataset(f"{cfg.dataset}-{key}")
    manifest = read_store_manifest(final)
    if manifest is not None:
        _check_strict(cfg, manifest.get("skipped", []), manifest["count"] + len(manifest.get("skipped", [])))
        say(f"dataset: reusing prepared store {final}")
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with writing(final):  # a full disk or a read-only cache: one line, not retried
            final.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(final)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            manifest = _build(cfg, sources.open_source(cfg, located), key, tmp, workers, say)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MANIFEST).is_file():  # not a concurrent preparation that won
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"dataset: prepared {manifest['count']} images {tuple(manifest['shape'])}"
        + (f", {manifest['num_classes']} classes" if manifest["num_classes"] else ", unlabelled")
        + f" in {manifest['seconds']} s ({manifest['images_per_sec']:.0f} images/s) -> {final}; "
        f"real images: {final / GRID_FILE}")
    return final


def _build(cfg: DataConfig, source: sources.Source, key: str, tmp: Path, workers: int | None,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Stream ``source`` through the transforms into ``tmp``; validate; return the manifest written."""
    t0 = time.perf_counter()
    _check_strict(cfg, source.skipped, source.count + len(source.skipped))
    if source.summary:
        say(f"dataset: {source.summary}")
    for warning in source.warnings:
        say(f"dataset: warning: {warning}")
    capacity = min(source.count, cfg.limit or source.count)
    if capacity == 0:
        why = f" ({source.warnings[0]})" if source.warnings else ""
        raise DataError(f"data.data_root: {cfg.data_root} has no usable images{why}; see --help for "
                        "the layouts")
    spec = ImageSpec(cfg.image_size, cfg.channels, cfg.rgba_background)
    size = cfg.image_size
    if cfg.channels != "auto":
        channels = 1 if cfg.channels == "grayscale" else 3
    else:  # files decode to RGB and collapse to gray at the end if every image was gray
        channels = 3 if source.kind == "files" else (1 if source.native_channels <= 2 else 3)
    trivial = source.kind == "arrays" and source.native_size == (size, size)
    workers = workers if workers is not None else available_cores()
    if trivial or capacity < POOL_MIN_IMAGES:
        workers = 1
    say(f"dataset: preparing {cfg.dataset} ({source.count} images) -> ({channels}, {size}, {size}) "
        f"with {workers} decoding process{'es' if workers > 1 else ''}")

    images = NpyWriter(tmp / "images.npy", capacity, (channels, size, size), np.uint8)
    labels = NpyWriter(tmp / "labels.npy", capacity, (), np.int64) if source.labels is not None else None
    skipped, upscaled, all_gray, done = list(source.skipped), 0, True, len(source.skipped)
    histogram = np.zeros(len(source.class_names or []), dtype=np.int64)
    report_every = max(capacity // 10, 5000)
    next_report = report_every
    results = map_ordered(functools.partial(process_task, spec=spec), source.tasks(TASK_ROWS), workers)
    try:
        for start, result in results:
            ok = np.flatnonzero(result.ok)
            take = min(len(ok), capacity - images.rows)
            cutoff = ok[take] if take < len(ok) else len(result.ok)  # inputs after it are not needed
            skipped += [{"file": source.name(start + i), "reason": reason}
                        for i, reason in result.reasons if i < cutoff]
            images.write(result.images[:take])
            all_gray &= bool(result.gray[:take].all())
            upscaled += int(result.upscaled[:take].sum())
            if labels is not None:
                chunk_labels = source.labels[start + ok[:take]]  # type: ignore[index]
                labels.write(chunk_labels)
                histogram += np.bincount(chunk_labels, minlength=len(histogram))
            done = len(source.skipped) + start + cutoff  # inputs looked at so far
            if images.rows >= next_report and images.rows < capacity:
                rate = images.rows / (time.perf_counter() - t0)
                say(f"dataset: {images.rows}/{capacity} images ({rate:.0f} images/s)")
                next_report += report_every
            if images.rows == capacity:
                break  # enough: closing the results below stops the workers
        sha_images = images.finish()
        sha_labels = labels.finish() if labels is not None else None
    finally:
        results.close()
        images.close()
        if labels is not None:
            labels.close()
    count = images.rows

    if count == 0:
        first = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:2])
        raise DataError(f"data.data_root: none of the {done} images in {cfg.data_root} could be "
                        f"read ({first}); check that they are intact image files")
    _check_strict(cfg, skipped, done)
    if skipped:
        examples = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        say(f"dataset: skipped {len(skipped)} of {done} images that could not be read (listed under "
            f"'skipped' in manifest.json; --strict makes this an error): {examples}"
            + (" ..." if len(skipped) > 3 else ""))
    if upscaled:
        say(f"dataset: warning: {upscaled} images were smaller than {size} px and were upscaled")
    if channels == 3 and cfg.channels == "auto" and source.kind == "files" and all_gray:
        channels, sha_images = 1, _collapse_to_gray(tmp / "images.npy")

    grid_rows = read_npy_rows(tmp / "images.npy", evenly_spaced(count, 100))
    save_image_grid(grid_rows, tmp / GRID_FILE, nrow=10)
    seconds = time.perf_counter() - t0
    names = source.class_names
    manifest = {
        "format": STORE_FORMAT,
        "key": key,
        "dataset": cfg.dataset,
        "spec": json.loads(cfg.model_dump_json()),
        "source": source.info,
        "transforms": {
            "decode": "Pillow; first frame of animations; EXIF orientation applied" if source.kind == "files"
            else "uint8 arrays as stored",
            "channels": {"requested": cfg.channels, "result": "grayscale" if channels == 1 else "rgb",
                         "rgba_background": cfg.rgba_background,
                         "conversions": "palette, 1-bit, 16-bit (/257), CMYK, YCbCr -> RGB; alpha "
                                        "composited; RGB -> gray by ITU-R 601-2 luma"},
            "geometry": f"centred square of side min(W, H) resized to {size}x{size} ({RESAMPLE_NAME}), "
                        "the same as resizing the shorter side then centre-cropping; no resampling "
                        f"when the shorter side is already {size}",
            "upscaled": upscaled,
            "class_filter": cfg.classes,
            "limit": cfg.limit,
            "order": "round-robin over classes" if source.kind == "files" and names else "source order",
        },
        "count": count,
        "shape": [channels, size, size],
        "dtype": "uint8",
        "num_classes": len(names) if names else 0,
        "class_names": names,
        "class_histogram": {str(c): int(n) for c, n in enumerate(histogram)} if names else {},
        "skipped_count": len(skipped),
        "skipped": skipped,
        "warnings": source.warnings + ([f"{upscaled} images upscaled"] if upscaled else []),
        "real_grid": GRID_FILE,
        "sha256": {"images": sha_images, "labels": sha_labels},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "images_per_sec": round(done / max(seconds, 1e-9), 1),
        "workers": workers,
    }
    _validate(tmp, manifest)
    atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks completeness
    return manifest


def _collapse_to_gray(path: Path) -> str:
    """Rewrite an (N, 3, H, W) store whose channels are all equal as (N, 1, H, W); returns its sha256."""
    gray = path.with_name("images.gray.npy")
    rows = None
    for chunk in iter_npy_rows(path, 4096):
        if rows is None:
            count = int(np.load(path, mmap_mode="r").shape[0])
            rows = NpyWriter(gray, count, (1, *chunk.shape[2:]), np.uint8)
        rows.write(chunk[:, :1])
    assert rows is not None  # the store has at least one image
    digest = rows.finish()
    os.replace(gray, path)
    return digest


def _validate(tmp: Path, manifest: dict[str, Any]) -> None:
    """Check the written arrays against what the manifest says before the store becomes visible."""
    images = np.load(tmp / "images.npy", mmap_mode="r")
    problems = []
    if images.dtype != np.uint8 or list(images.shape) != [manifest["count"], *manifest["shape"]]:
        problems.append(f"images.npy is {images.dtype} {images.shape}")
    if sha256_npy_data(tmp / "images.npy") != manifest["sha256"]["images"]:
        problems.append("images.npy does not match the hash taken while writing")
    if manifest["sha256"]["labels"] is not None:
        labels = np.load(tmp / "labels.npy")
        in_range = labels.min() >= 0 and labels.max() < manifest["num_classes"]
        if labels.shape != (manifest["count"],) or not in_range:
            problems.append(f"labels.npy is {labels.dtype} {labels.shape}")
        if sha256_npy_data(tmp / "labels.npy") != manifest["sha256"]["labels"]:
            problems.append("labels.npy does not match the hash taken while writing")
    if problems:  # the disk lost or changed data between writing and reading back
        raise DataError(f"preparing {manifest['dataset']} failed validation ({'; '.join(problems)}); "
                        f"check the disk under {tmp.parent} and run again")


def load_store(path: Path, verify: bool = True) -> PreparedStore:
    """Open a prepared store; with ``verify``, check the arrays against the manifest's sha256.

    ``images`` is memory-mapped (nothing is read until used); ``labels`` is in memory or None.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        labels_file = path / "labels.npy"
        labels = np.load(labels_file) if labels_file.is_file() else None
    except (OSError, ValueError) as err:
        raise DataError(f"prepared store {path} is unreadable ({err}); delete that directory to "
                        "rebuild it") from None
    if verify:
        # Streamed reads, not the memory map: hashing through the map would pull the whole store
        # into this process's resident memory.
        if sha256_npy_data(path / "images.npy") != manifest["sha256"]["images"] or (
            labels is not None and sha256_npy_data(labels_file) != manifest["sha256"]["labels"]
        ):
            raise DataError(f"prepared store {path} does not match its manifest checksum; delete it "
                            "to rebuild")
    return PreparedStore(path=path, manifest=manifest, images=images, labels=labels)


def _describe_data(manifest: dict[str, Any]) -> str:
    names = manifest.get("class_names") or []
    classes = (f"{len(names)} classes ({', '.join(map(str, names[:5]))}{' ...' if len(names) > 5 else ''})"
               if names else "unlabelled")
    return f"{manifest.get('count')} images {'x'.join(map(str, manifest.get('shape') or []))}, {classes}"


def check_same_data(trained: dict[str, Any], store: PreparedStore, run_id: str, doing: str) -> str | None:
    """Whether ``store`` holds the images a run trained on (``trained``: the run's ``data/manifest.json``).

    A different count, image shape or class list is a ``DataError`` (one line): the files in data_root
    changed since the run started, and its models cannot go on with them (a resume would fail on the
    weights, or draw empty batches; scores would compare against other data). The same count, shape and
    classes with other pixels returns a warning line: ``doing`` (e.g. 'training') goes ahead on the new
    images. None where they are the same, or the run recorded none (not trained yet).
    """
    if not trained.get("sha256") or trained.get("sha256") == store.manifest.get("sha256"):
        return None
    now = store.manifest
    if [trained.get(k) for k in ("count", "shape", "class_names")] != [now.get(k) for k in ("count", "shape",
                                                                                            "class_names")]:
        raise DataError(f"run {run_id!r} trained on {_describe_data(trained)}, but its data now prepares to "
                        f"{_describe_data(now)}: the files in data_root changed since; put the original images "
                        f"back to go on {doing} it, or start a new --run-id")
    return (f"run {run_id!r}: the prepared images differ from those it trained on (the same count, size and "
            f"classes; files in data_root changed since): {doing} it on the new ones")


def copy_real_grid(store_dir: Path, dest_dir: Path) -> None:
    """Copy the store's ``real_grid.png`` into ``dest_dir`` (a run's ``data/``), if the store has one."""
    grid = Path(store_dir) / GRID_FILE
    if grid.is_file():
        atomic_write_bytes(Path(dest_dir) / GRID_FILE, grid.read_bytes())
