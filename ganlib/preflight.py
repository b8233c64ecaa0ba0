"""Checks that catch user mistakes before any work starts, each raising a one-line ``GanlibError``."""

from __future__ import annotations

import logging
import os

from ganlib.config import RunConfig, check_resumable
from ganlib.data.digits import check_digits_size
from ganlib.data.loader import check_batch_size
from ganlib.data.sources import Located, check_source, find_source, sized_config
from ganlib.errors import RunError
from ganlib.evaluation import dinov2
from ganlib.evaluation.inception import check_weights_file
from ganlib.models import check_image_size
from ganlib.runs.device import resolve_device
from ganlib.runs.files import check_writable_directory
from ganlib.runs.lock import check_not_running, check_under_root
from ganlib.runs.paths import CACHE_DIR_ENV, CacheDir, RunDir

log = logging.getLogger("ganlib")


def check_run(cfg: RunConfig) -> None:
    """Validate what pydantic cannot: the device exists, the data is there, a resumed run matches.

    The source is found (its files listed and stat'ed) once, for its checks, its size and its image count.
    """
    located = find_source(cfg.data)
    cfg = sized_config(cfg, located).resolved()
    check_under_root(cfg.run_dir, cfg.out)  # behind the run-id pattern: nothing escapes the output root
    check_writable_directory(cfg.run_dir, "out")
    _check_shared_cache(cfg)
    check_not_running(cfg.run_dir)
    resolve_device(cfg.device)
    check_image_size(cfg.model.name, cfg.data.image_size)
    if cfg.data.dataset == "digits":
        check_digits_size(cfg.data.image_size)
    located = check_source(cfg.data, located)  # the source exists and looks right; no images are read
    if cfg.eval.inception_weights is not None and cfg.eval.inception != "off":  # before training, not after it
        check_weights_file(cfg.eval.inception_weights, cfg.eval.inception_weights_sha256 or "")
    if cfg.eval.dinov2_weights is not None and cfg.eval.dinov2 != "off":
        dinov2.check_weights_file(cfg.eval.dinov2_weights, cfg.eval.dinov2_weights_sha256 or "")
    count = _known_image_count(cfg, located)
    if count is not None:
        check_batch_size(cfg.train.batch_size, count)
    run = RunDir(cfg.run_dir)
    if run.config.is_file():
        check_resumable(run.read_config(), cfg)


def _check_shared_cache(cfg: RunConfig) -> None:
    """A cache moved by ``GANLIB_CACHE_DIR`` that this process cannot write: a file in the way is an error; a
    read-only one (filled by others, shared read-only) is a warning, as a run that finds all it needs there
    never writes to it, and one that must add to it stops there with one line (``runs.storage.writing``)."""
    cache = CacheDir.under(cfg.out).root
    if not os.environ.get(CACHE_DIR_ENV, "").strip():
        return  # <out>/_cache: checked with the run directory
    try:
        check_writable_directory(cache, CACHE_DIR_ENV, f"set {CACHE_DIR_ENV} to a directory you can write, or unset it")
    except RunError as err:
        if not cache.is_dir():
            raise
        log.warning("%s; a run can use what it already holds (prepared datasets, evaluation networks) but "
                    "cannot add to it", err)


def _known_image_count(cfg: RunConfig, located: Located | None) -> int | None:
    """The dataset's size (or a bound on it) when known without decoding: generated, already prepared, or
    a folder's image files counted (some may turn out unreadable, so the store can only be smaller).
    ``located``: the source as ``check_source`` found it (None for a dataset still to be downloaded)."""
    from ganlib.data.store import read_store_manifest, store_path

    limit = cfg.data.limit or float("inf")
    if cfg.data.dataset == "digits":
        return int(min(cfg.data.num_images, limit))
    manifest = read_store_manifest(store_path(cfg.data, cfg.out, located))
    if manifest is not None:
        return int(manifest["count"])
    if located is not None and cfg.data.dataset in ("folder", "celeba") and not cfg.data.classes:
        return int(min(located.inputs.count, limit))
    return None
