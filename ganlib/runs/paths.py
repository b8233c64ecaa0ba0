"""Where a run's files live, and how they are read: ``RunDir`` for ``<out>/<run-id>/``, ``CacheDir`` for
``<out>/_cache/`` (or the directory ``GANLIB_CACHE_DIR`` names). Every reader and writer of a run's files
goes through these two, so a name or a layout changes in one place.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganlib.errors import RunError, first_line
from ganlib.runs.files import atomic_path, atomic_write_json

if TYPE_CHECKING:
    import pandas as pd

    from ganlib.config import RunConfig

log = logging.getLogger("ganlib")

CHECKPOINT_PREFIX = "step_"


def checkpoint_name(step: int) -> str:
    """``step_NNNNNN.pt``: the file name of the checkpoint at ``step``."""
    return f"{CHECKPOINT_PREFIX}{step:06d}.pt"


@dataclass(frozen=True)
class RunDir:
    """The layout of ``<out>/<run-id>/`` (see the README's table), with readers for what it holds."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- paths -------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.parquet"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.parquet"

    @property
    def health_metrics(self) -> Path:
        return self.metrics / "health.parquet"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_markdown(self) -> Path:
        return self.root / "summary.md"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # --- readers -----------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict; ``RunError`` (one line) when there is no run here or it is unreadable."""
        if not self.config.is_file():
            raise RunError(f"no run at {self.root} ({self.config} is missing); check --run-id and --out")
        try:
            data = json.loads(self.config.read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"cannot read {self.config}: {first_line(err)}") from None
        if not isinstance(data, dict):
            raise RunError(f"cannot read {self.config}: not a JSON object")
        return data

    def saved_config(self) -> dict[str, Any] | None:
        """``read_config()`` where the run has a config.json, else None (a run not started yet)."""
        return self.read_config() if self.config.is_file() else None

    def load_config(self, **overrides: Any) -> RunConfig:
        """The run's validated config, placed where the run is now (``out`` and ``run_id`` from this
        directory, so a moved run still works), with top-level ``overrides`` applied."""
        from ganlib.config import build_config  # here: runs/ is below the config in the layering

        data = {**self.read_config(), "out": str(self.root.parent), "run_id": self.root.name, **overrides}
        return build_config(data)

    def read_saved_config(self) -> dict[str, Any]:
        """``config.json`` as a dict, or ``{}`` when missing or unreadable (for reports; ``read_config`` raises)."""
        return read_json_object(self.config)

    def read_manifest(self) -> dict[str, Any]:
        """``data/manifest.json`` (the prepared dataset's description), or ``{}`` before training wrote it."""
        return read_json_object(self.manifest)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json``, or ``{}`` before the gallery stage wrote it."""
        return read_json_object(self.summary)

    def read_table(self, path: Path, fix: str = "move it aside and run again") -> pd.DataFrame | None:
        """One of the run's parquet tables, or None when it does not exist (yet). An unreadable one (truncated
        by a full disk or a copy, or not permitted) is a one-line ``RunError`` that ends in ``fix``."""
        try:
            return _read_parquet(path)
        except (OSError, ValueError) as err:
            raise RunError(f"{path} is unreadable ({_why_unreadable(err)}); {fix}") from None

    def read_table_or_set_aside(self, path: Path, then: str) -> pd.DataFrame | None:
        """``read_table``, where a corrupt table must not make the run impossible to go on: it is moved to
        ``metrics/corrupt/`` (kept, never overwritten) with a warning that ends in ``then``, and None returned.
        One that cannot be read for another reason (permissions) is ``read_table``'s one line: not moved."""
        try:
            return _read_parquet(path)
        except (OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno:
                raise RunError(f"{path} is unreadable ({_why_unreadable(err)}); make it readable and run "
                               "again") from None
            aside = self.metrics / "corrupt"
            aside.mkdir(exist_ok=True)
            name, n = Path(path).name, 1
            while (aside / name).exists():  # an earlier corrupt copy stays
                n += 1
                name = f"{Path(path).stem}.{n}{Path(path).suffix}"
            Path(path).replace(aside / name)
            log.warning("%s is unreadable (%s); moved it to %s, and %s", path, _why_unreadable(err),
                        aside / name, then)
            return None

    def read_train_rows(self, up_to_step: int) -> list[dict[str, Any]]:
        """The rows of ``metrics/train.parquet`` up to ``up_to_step`` (a resume redoes the ones after it).
        An unreadable table is set aside and starts again here (``read_table_or_set_aside``)."""
        then = f"the training table restarts at step {up_to_step + 1}"
        table = self.read_table_or_set_aside(self.train_metrics, then)
        return [] if table is None else [r for r in table.to_dict("records") if r["step"] <= up_to_step]

    def read_health_rows(self) -> list[dict[str, Any]]:
        table = self.read_table_or_set_aside(self.health_metrics, "the health events restart here")
        return [] if table is None else table.to_dict("records")

    # --- writers -----------------------------------------------------------------------------------
    def write_run_files(self, cfg: RunConfig, manifest: dict[str, Any]) -> None:
        """``config.json`` and ``data/manifest.json``: what the run is and what it trains on."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config, cfg.model_dump(mode="json"))
        atomic_write_json(self.manifest, manifest)

    def write_train_rows(self, rows: list[dict[str, Any]]) -> None:
        write_table(rows, self.train_metrics)

    def write_health_rows(self, rows: list[dict[str, Any]]) -> None:
        write_table(rows, self.health_metrics)


CACHE_DIR_ENV = "GANLIB_CACHE_DIR"


@dataclass(frozen=True)
class CacheDir:
    """``<out>/_cache/``: what runs share, each entry named by a key of what made it.

    The environment variable ``GANLIB_CACHE_DIR`` moves it: every output root then shares one cache
    (prepared datasets, evaluation networks, reference statistics), as ``TORCH_HOME`` does for torch.
    """

    root: Path

    @classmethod
    def under(cls, out: Path | str) -> CacheDir:
        shared = os.environ.get(CACHE_DIR_ENV, "").strip()
        return cls(Path(shared).expanduser() if shared else Path(out) / "_cache")

    def dataset(self, name: str) -> Path:
        """A prepared store: ``datasets/<dataset>-<key>/`` (``images.npy``, ``labels.npy``, ``manifest.json``)."""
        return self.root / "datasets" / name

    def classifier(self, name: str) -> Path:
        """A trained domain classifier: ``classifiers/<name>``."""
        return self.root / "classifiers" / name

    def ssl_encoder(self, name: str) -> Path:
        """A trained self-supervised (contrastive) encoder: ``ssl-encoders/<name>``."""
        return self.root / "ssl-encoders" / name

    def eval_reference(self, name: str) -> Path:
        """Cached real-image statistics of one feature space: ``eval-reference/<name>``."""
        return self.root / "eval-reference" / name


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` as a parquet table at ``path``, atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def _read_parquet(path: Path) -> pd.DataFrame | None:
    """The table at ``path``, or None when there is none; pyarrow's errors as they come (ArrowInvalid is a
    ValueError, a truncated file an OSError without an errno)."""
    import pandas as pd

    return pd.read_parquet(path) if Path(path).is_file() else None


def _why_unreadable(err: OSError | ValueError) -> str:
    if isinstance(err, OSError) and err.errno:
        return err.strerror or os.strerror(err.errno)
    return "not a whole parquet file: corrupt or truncated"


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when it is missing or unreadable (what a report can live with)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
