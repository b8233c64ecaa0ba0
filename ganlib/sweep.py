"""Sweeps: one base configuration crossed with a grid of settings, and the table that compares them.

A grid maps dotted config fields to the values to try (``{"train.lr": [1e-4, 2e-4], "seed": [1, 2]}``);
its members are the Cartesian product, in the grid's order. Each member is an ordinary run,
``<out>/<sweep id>/<member id>/``, whose id is derived from the sweep id and the member's settings
alone, so running a sweep again finds its members where they were. The orchestration (which member
runs where) is the sweep flow's (``flows/sweep.py``); here is what it needs, without Prefect.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ganlib.config import RUN_ID_PATTERN, RunConfig, build_config, config_differences, set_dotted
from ganlib.errors import ConfigError
from ganlib.runs.files import atomic_path, atomic_write_text
from ganlib.runs.paths import RunDir

NOT_SWEPT = ("run_id", "out")  # the sweep decides these
STATUSES = ("completed", "reused", "failed")
SCORES = ("fd", "is_mean", "classes_present")  # shown in the plot and the Markdown summary when present


@dataclass(frozen=True)
class SweepMember:
    run_id: str
    settings: dict[str, Any]  # dotted field -> validated value
    config: RunConfig


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["train.lr=1e-4,2e-4", "seed=1,2"]`` -> ``{"train.lr": ["1e-4", "2e-4"], "seed": ["1", "2"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not parts:
            raise ConfigError(f"--grid: {item!r} is not FIELD=VALUE[,VALUE...]; e.g. train.lr=1e-4,2e-4")
        if key in grid:
            raise ConfigError(f"--grid: {key} is given twice; list all its values once: {key}=A,B")
        grid[key] = parts
    if not grid:
        raise ConfigError("--grid: give at least one FIELD=VALUE[,VALUE...], e.g. train.lr=1e-4,2e-4")
    return grid


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.") or "x"


def member_id(sweep_id: str, settings: dict[str, Any]) -> str:
    """``<sweep id>-<values>-<hash>``: readable, unique per settings, a valid run id (at most 80 characters)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    values = "_".join(_slug(v) for v in settings.values())
    room = 80 - len(sweep_id) - len(digest) - 2
    return f"{sweep_id}-{values[:room].strip('_.-') or 'x'}-{digest}" if room > 0 else f"{sweep_id[:71]}-{digest}"


def expand_grid(base: RunConfig, grid: dict[str, list[Any]], sweep_id: str) -> list[SweepMember]:
    """The members of the sweep: ``base`` with each combination of ``grid`` values, validated.

    Members write under ``<base.out>/<sweep_id>/``. A value that is not valid for its field raises
    ``ConfigError`` naming the member (before anything runs)."""
    if not re.fullmatch(RUN_ID_PATTERN, sweep_id) or len(sweep_id) > 60:
        raise ConfigError(f"sweep id {sweep_id!r}: use letters, digits, '.', '_', '-' (at most 60 characters, "
                          "starting with a letter or digit)")
    for key in grid:
        if key in NOT_SWEPT:
            raise ConfigError(f"--grid: {key} is set by the sweep (members are <out>/<sweep id>/<member id>)")
        if not grid[key]:
            raise ConfigError(f"--grid: {key} has no values")
    base_data = base.model_dump(mode="json")
    members, seen = [], set()
    for combination in itertools.product(*grid.values()):
        data = json.loads(json.dumps(base_data))
        for key, value in zip(grid, combination):
            set_dotted(data, key, value)
        data["out"], data["run_id"] = str(Path(base.out) / sweep_id), sweep_id  # a placeholder id to validate
        try:
            config = build_config(data)
        except ConfigError as err:
            shown = ", ".join(f"{k}={v}" for k, v in zip(grid, combination))
            raise ConfigError(f"sweep member {shown}: {err}") from None
        settings = {key: _get(config.model_dump(mode="json"), key) for key in grid}
        run_id = member_id(sweep_id, settings)
        if run_id in seen:
            continue  # e.g. 1e-4 and 0.0001: the same member
        seen.add(run_id)
        members.append(SweepMember(run_id, settings, config.model_copy(update={"run_id": run_id})))
    return members


def completed_summary(config: RunConfig) -> dict[str, Any] | None:
    """The run's ``summary.json`` if the run finished with this config (nothing left to do), else None."""
    summary = RunDir(config.run_dir).read_summary()
    if not summary:
        return None
    train = summary.get("train") or {}
    finished = train.get("final_step") is not None and train.get("final_step") == train.get("total_steps")
    saved, current = summary.get("config") or {}, config.model_dump(mode="json")
    # config_differences lets a resume change the length; a member asked to train longer is not finished.
    length = all((saved.get("train") or {}).get(k) == current["train"][k] for k in ("steps", "epochs"))
    return summary if finished and length and not config_differences(saved, current) else None


def member_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The plain values a sweep keeps of a member's summary: where it is, training, best scores."""
    train, best = summary.get("train") or {}, summary.get("best") or {}
    record = {"run_dir": summary.get("run_dir"), "final_step": train.get("final_step"),
              "train_seconds": train.get("seconds"), "best_checkpoint": best.get("checkpoint"),
              "best_step": best.get("step")}
    record.update({k: v for k, v in best.items()
                   if k not in ("checkpoint", "step") and isinstance(v, int | float | str | bool)})
    return record


def sweep_table(members: list[SweepMember], outcomes: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per member: ``run_id``, its settings (one column per grid field), ``status``
    (completed, reused or failed), ``error`` and the ``member_record`` values."""
    rows = []
    for member, outcome in zip(members, outcomes, strict=True):
        scores = {k: v for k, v in outcome.items() if k not in ("status", "error")}
        rows.append({"run_id": member.run_id, **member.settings, "status": outcome.get("status", "failed"),
                     "error": outcome.get("error"), **scores})
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        table.to_parquet(tmp, index=False)
    return Path(path)


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_slug(row[k])}" for k in keys)


def plot_sweep(table: pd.DataFrame, keys: list[str], path: Path) -> Path:
    """Horizontal bars of each score in ``SCORES`` per member (failed members marked), as PNG."""
    metrics = [m for m in SCORES if m in table.columns] or ["final_step"]
    height = max(2.5, 0.45 * len(table) + 1.2)
    fig = Figure(figsize=(4.2 * len(metrics) + 2.5, height))
    labels = [_label(row, keys) for _, row in table.iterrows()]
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        values = pd.to_numeric(table.get(metric), errors="coerce") if metric in table else pd.Series(
            [math.nan] * len(table))
        ok = table["status"] != "failed"
        ax.barh(range(len(table)), values.where(ok, 0.0).fillna(0.0), color=["tab:blue" if s else "0.85" for s in ok])
        for y, (good, value) in enumerate(zip(ok, values)):
            if not good:
                ax.text(0, y, " failed", va="center", color="tab:red")
            elif math.isfinite(value):
                ax.text(value, y, f" {value:.3g}", va="center", fontsize=8)
        ax.set_yticks(range(len(table)), labels if i == 0 else [""] * len(table))
        ax.invert_yaxis()
        ax.set_title(metric + (" (lower is better)" if metric == "fd" else ""))
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def sweep_markdown(table: pd.DataFrame, keys: list[str], sweep_id: str, table_path: Path) -> str:
    """The sweep as Markdown: counts, then one row per member (settings, status, scores, error)."""
    counts = table["status"].value_counts().to_dict()
    lines = [f"# Sweep `{sweep_id}`", "",
             f"{len(table)} members: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + ".", "",
             f"Table: `{table_path}`", ""]
    scores = [m for m in SCORES if m in table.columns]
    header = ["member", *keys, "status", *scores, "error"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["run_id"], *(str(row[k]) for k in keys), row["status"]]
        cells += [f"{row[m]:.4g}" if isinstance(row[m], int | float) and math.isfinite(row[m]) else "" for m in scores]
        error = row.get("error")
        cells.append((str(error)[:120].replace("|", "/")) if isinstance(error, str) else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(text: str, path: Path) -> Path:
    atomic_write_text(Path(path), text)
    return Path(path)
