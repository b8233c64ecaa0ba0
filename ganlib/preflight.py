"""Checks that catch user mistakes before any work starts, each raising a one-line ``GanlibError``."""

from __future__ import annotations

import json
from pathlib import Path

from ganlib.config import RunConfig, config_differences
from ganlib.data.idx import find_mnist_files
from ganlib.errors import CheckpointError, DataError
from ganlib.models import DCGAN_SIZES
from ganlib.errors import ConfigError
from ganlib.run import RunPaths, resolve_device


def check_run(cfg: RunConfig) -> None:
    """Validate what pydantic cannot: the device exists, the data is there, a resumed run matches."""
    cfg = cfg.resolved()
    resolve_device(cfg.device)
    if cfg.model.name == "dcgan" and cfg.data.image_size not in DCGAN_SIZES:
        raise ConfigError(f"data.image_size: dcgan makes {DCGAN_SIZES} px images, not {cfg.data.image_size}")
    if cfg.data.dataset == "mnist":
        root = Path(cfg.data.data_root)  # type: ignore[arg-type]
        if not root.is_dir():
            raise DataError(f"data.data_root: {root} is not a directory; point --data-root at the MNIST IDX files")
        if cfg.data.split == "auto":
            try:
                find_mnist_files(root, "train")
            except DataError:
                find_mnist_files(root, "test")
        else:
            find_mnist_files(root, cfg.data.split)
    saved = RunPaths(cfg.run_dir).config
    if saved.is_file():
        diffs = config_differences(json.loads(saved.read_text()), cfg.model_dump(mode="json"))
        if diffs:
            raise CheckpointError(
                f"run {cfg.run_id!r} exists with a different config ({'; '.join(diffs)}); "
                "use a new --run-id, or the original settings to resume it")
