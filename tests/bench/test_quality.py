"""bench/quality.py: its presets are valid configs of the model they are named after; time to quality."""

import json

import pandas as pd
import pytest

from bench import quality
from ganlib.config import build_config


def test_every_preset_is_a_valid_config_of_the_model_it_names():
    """(The dcgan presets once left the model unnamed and silently trained the default mlp.)"""
    assert "mlp-ns-ema-bf16-b384" in quality.PRESETS
    for name, settings in quality.PRESETS.items():
        cfg = build_config(quality._nested(settings))
        assert cfg.model.name == name.split("-")[0], name
        assert cfg.model.conditional == name.endswith("-cond"), name
        assert (cfg.train.ema_decay > 0) == ("-noema" not in name), name


def test_seconds_to_reach_sums_the_training_time_up_to_the_first_checkpoint_at_the_target(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"train": {"batch_size": 100}}))
    # one row per step, each with its flush's rate: 100 images at 1,000, 500, 1,000, 250 images/s
    steps = pd.DataFrame({"step": [1, 2, 3, 4], "images_per_sec": [1000.0, 500.0, 1000.0, 250.0]})
    steps.to_parquet(tmp_path / "metrics" / "train.parquet")
    table = pd.DataFrame({"step": [2, 3, 4], "is_mean": [8.9, 9.05, 9.2]})  # evaluated checkpoints
    assert quality.seconds_to_reach(tmp_path, table) == pytest.approx(0.1 + 0.2 + 0.1)
    assert quality.seconds_to_reach(tmp_path, table, target=9.1) == pytest.approx(0.8)
    assert pd.isna(quality.seconds_to_reach(tmp_path, table, target=9.5))


def test_curves_draws_each_runs_metrics_and_prints_them(tmp_path, capsys, monkeypatch):
    import sys

    import pandas as pd

    from bench import curves

    runs = []
    for name, fd in (("a", [3.0, 2.0]), ("b", [3.0, 4.0])):
        run = tmp_path / name / "metrics"
        run.mkdir(parents=True)
        pd.DataFrame({"step": [10, 20], "generator": ["ema", "ema"], "ssl_fd": fd, "ssl_fd_floor": [0.5, 0.5],
                      "memorisation_fraction": [0.5, 0.7]}).to_parquet(run / "eval.parquet")
        runs.append(str(tmp_path / name))
    monkeypatch.setattr(sys, "argv", ["curves", *runs, "--out", str(tmp_path / "c.png")])
    curves.main()
    out = capsys.readouterr().out
    assert (tmp_path / "c.png").stat().st_size > 0 and "a:" in out and "b:" in out and "0.7" in out
    # Against training time: run b trains at half a's speed, so its checkpoints come at twice the seconds.
    for name, rate in (("a", 1000.0), ("b", 500.0)):
        (tmp_path / name / "config.json").write_text(json.dumps({"train": {"batch_size": 100}}))
        pd.DataFrame({"step": list(range(1, 21)), "images_per_sec": [rate] * 20}).to_parquet(
            tmp_path / name / "metrics" / "train.parquet")
    assert curves.training_seconds(tmp_path / "b", [10, 20]) == pytest.approx([2.0, 4.0])
    monkeypatch.setattr(sys, "argv", ["curves", *runs, "--x", "seconds", "--out", str(tmp_path / "s.png")])
    curves.main()
    out = capsys.readouterr().out
    assert (tmp_path / "s.png").stat().st_size > 0 and "seconds" in out and "4.0" in out


@pytest.mark.slow
def test_a_tiny_row_trains_scores_and_names_its_precision_and_self_supervised_scores(tmp_path):
    """run_one end to end on the embedded digits: the row has every column the table prints (a comment
    once swallowed the ssl columns, and the table raised KeyError after a 15-minute run)."""
    settings = quality.PRESETS["mlp-ns-ema"] | {"model.hidden_dim": 32, "train.batch_size": 32,
                                                "eval.num_samples": 200, "eval.classifier_steps": 30,
                                                "eval.ssl_steps": 5, "eval.batch_size": 100}
    row = quality.run_one("tiny", settings, None, {"dataset": "digits", "num_images": 2000}, "cpu", tmp_path,
                          checkpoint_every=20, steps=40)
    for key in ("steps", "images_per_sec", "is_final", "fd_final", "classes_final", "rarest_final",
                "class_accuracy_final", "is_best", "ssl_fd_final", "ssl_fd_best", "ssl_fd_floor",
                "memorisation_final", "ada_p_final", "grid", "real_is"):
        assert key in row, key
    assert row["steps"] == 40 and row["precision"] in ("fp32", "bf16")
    assert row["ssl_fd_final"] > 0 and row["fd_final"] > 0
