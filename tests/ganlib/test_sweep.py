"""Sweep grids, member ids, reuse and the comparison table (ganlib.sweep), without Prefect."""

import json
import re

import pandas as pd
import pytest

from ganlib.config import RUN_ID_PATTERN, build_config
from ganlib.errors import ConfigError
from ganlib.sweep import (
    completed_summary,
    expand_grid,
    member_id,
    member_record,
    parse_grid,
    plot_sweep,
    sweep_markdown,
    sweep_table,
)


def test_parse_grid_and_its_mistakes():
    assert parse_grid(["train.lr=1e-4, 2e-4", "seed=1"]) == {"train.lr": ["1e-4", "2e-4"], "seed": ["1"]}
    with pytest.raises(ConfigError, match=r"^--grid: 'lr' is not FIELD=VALUE"):
        parse_grid(["lr"])
    with pytest.raises(ConfigError, match="seed is given twice"):
        parse_grid(["seed=1", "seed=2"])


def test_members_are_the_product_with_stable_valid_ids(tmp_path):
    base = build_config({"out": str(tmp_path), "train": {"steps": 5}})
    grid = {"train.lr": ["1e-4", "2e-4", "0.0001"], "train.loss": ["ns", "hinge"]}
    members = expand_grid(base, grid, "lr-loss")
    assert len(members) == 4  # 1e-4 and 0.0001 are one member
    assert [m.settings for m in members][:2] == [{"train.lr": 1e-4, "train.loss": "ns"},
                                                 {"train.lr": 1e-4, "train.loss": "hinge"}]
    assert [m.run_id for m in members] == [m.run_id for m in expand_grid(base, grid, "lr-loss")]
    assert len({m.run_id for m in members}) == 4
    for m in members:
        assert re.fullmatch(RUN_ID_PATTERN, m.run_id) and m.run_id.startswith("lr-loss-")
        assert m.config.run_dir == tmp_path / "lr-loss" / m.run_id and m.config.train.steps == 5
    assert len(member_id("s" * 60, {"x": "y" * 100})) <= 80


def test_a_bad_value_names_its_member_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"^sweep member train.lr=-1: invalid config: train.lr: Input should be "
                                          r"greater than 0"):
        expand_grid(build_config({"out": str(tmp_path)}), {"train.lr": ["2e-4", "-1"]}, "s")
    with pytest.raises(ConfigError, match="run_id is set by the sweep"):
        expand_grid(build_config({}), {"run_id": ["a"]}, "s")
    with pytest.raises(ConfigError, match="sweep id '../x'"):
        expand_grid(build_config({}), {"seed": [1]}, "../x")


def test_only_a_finished_run_with_the_same_config_is_reused(tmp_path):
    member = expand_grid(build_config({"out": str(tmp_path)}), {"seed": [1]}, "s")[0]
    cfg = member.config
    assert completed_summary(cfg) is None
    summary = {"run_dir": str(cfg.run_dir), "config": cfg.model_dump(mode="json"),
               "train": {"final_step": 3000, "total_steps": 3000, "seconds": 9.0},
               "best": {"checkpoint": "c.pt", "step": 3000, "fd": 1.5, "is_mean": 8.0}}
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary))
    assert completed_summary(cfg) == summary
    assert completed_summary(cfg.model_copy(update={"seed": 2})) is None  # another run
    assert completed_summary(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 4000})})) is None
    summary["train"]["final_step"] = 1000  # stopped early (time budget): not finished
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary))
    assert completed_summary(cfg) is None
    assert member_record(summary) == {"run_dir": str(cfg.run_dir), "final_step": 1000, "train_seconds": 9.0,
                                      "best_checkpoint": "c.pt", "best_step": 3000, "fd": 1.5, "is_mean": 8.0}


def test_table_plot_and_markdown_show_failed_members(tmp_path):
    members = expand_grid(build_config({"out": str(tmp_path)}), {"train.lr": ["1e-4", "2e-4"]}, "s")
    outcomes = [{"status": "completed", "fd": 3.25, "is_mean": 7.5, "final_step": 10},
                {"status": "failed", "error": "invalid config: train.batch_size: too big | really"}]
    table = sweep_table(members, outcomes)
    assert table.columns[:4].tolist() == ["run_id", "train.lr", "status", "error"]
    assert table["status"].tolist() == ["completed", "failed"] and pd.isna(table["fd"][1])
    assert plot_sweep(table, ["train.lr"], tmp_path / "sweep.png").stat().st_size > 1000
    text = sweep_markdown(table, ["train.lr"], "s", tmp_path / "sweep.parquet")
    assert "2 members: 1 completed, 0 reused, 1 failed." in text
    assert "| 3.25 | 7.5 |" in text and "too big / really" in text
