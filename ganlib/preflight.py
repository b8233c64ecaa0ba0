"""Checks that catch user mistakes before any work starts, each raising a one-line ``GanlibError``."""

from __future__ import annotations

import json

from ganlib.config import RunConfig, config_differences
from ganlib.data.digits import SUPPORTED_IMAGE_SIZES as DIGITS_SIZES
from ganlib.data.sources import check_source
from ganlib.errors import CheckpointError, ConfigError
from ganlib.evaluation.inception import check_weights_file
from ganlib.runs.lock import check_not_running, check_under_root
from ganlib.models import DCGAN_SIZES, RESNET_SIZES
from ganlib.runs.paths import RunPaths, resolve_device


def check_run(cfg: RunConfig) -> None:
    """Validate what pydantic cannot: the device exists, the data is there, a resumed run matches."""
    cfg = cfg.resolved()
    check_under_root(cfg.run_dir, cfg.out)  # behind the run-id pattern: nothing escapes the output root
    check_not_running(cfg.run_dir)
    resolve_device(cfg.device)
    if cfg.model.name == "dcgan" and cfg.data.image_size not in DCGAN_SIZES:
        raise ConfigError(f"data.image_size: dcgan makes {DCGAN_SIZES} px images, not {cfg.data.image_size}")
    if cfg.model.name == "resnet" and cfg.data.image_size not in RESNET_SIZES:
        raise ConfigError(f"data.image_size: resnet makes {RESNET_SIZES} px images, not {cfg.data.image_size}; "
                          "use --image-size 32 or 64, or --model dcgan")
    if cfg.data.dataset == "digits" and cfg.data.image_size not in DIGITS_SIZES:
        raise ConfigError(f"data.image_size: the embedded digits are drawn at {DIGITS_SIZES} px, not "
                          f"{cfg.data.image_size}; use --image-size 64, or a dataset of larger images "
                          "(--dataset folder, celeba)")
    check_source(cfg.data)  # the source exists and looks right; no images are read
    if cfg.eval.inception_weights is not None and cfg.eval.inception != "off":  # before training, not after it
        check_weights_file(cfg.eval.inception_weights, cfg.eval.inception_weights_sha256 or "")
    count = _known_image_count(cfg)
    if count is not None and cfg.train.batch_size > count:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the dataset ({count} images); "
                          f"use --batch-size {count} or less")
    saved = RunPaths(cfg.run_dir).config
    if saved.is_file():
        diffs = config_differences(json.loads(saved.read_text()), cfg.model_dump(mode="json"))
        if diffs:
            raise CheckpointError(
                f"run {cfg.run_id!r} exists with a different config ({'; '.join(diffs)}); "
                "use a new --run-id, or the original settings to resume it")


def _known_image_count(cfg: RunConfig) -> int | None:
    """The dataset's size when it is known without reading the source: generated, or already prepared."""
    from ganlib.data.store import store_path

    limit = cfg.data.limit or float("inf")
    if cfg.data.dataset == "digits":
        return int(min(cfg.data.num_images, limit))
    manifest = store_path(cfg.data, cfg.out) / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["count"])
    return None
