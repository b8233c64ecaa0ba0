"""Plots from synthetic tables: they render, mark what they say they mark, and survive odd input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ganlib.rendering.plots import (
    evaluation_panels,
    plot_evaluation,
    plot_run,
    plot_throughput,
    plot_training,
    smooth,
    smoothing_span,
)


def train_table(steps: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    step = np.arange(1, steps + 1)
    return pd.DataFrame({
        "step": step, "epoch": step / 100,
        "d_loss": 0.6 + 0.2 * rng.standard_normal(steps), "g_loss": 2.0 + 0.5 * rng.standard_normal(steps),
        "d_real": np.clip(0.8 + 0.1 * rng.standard_normal(steps), 0, 1),
        "d_fake": np.clip(0.2 + 0.1 * rng.standard_normal(steps), 0, 1),
        "images_per_sec": np.repeat(1000 + 50 * rng.standard_normal(steps // 50 + 1), 50)[:steps],
    })


def eval_table(fd=(400.0, 150.0, 90.0, 120.0)) -> pd.DataFrame:
    n = len(fd)
    table = pd.DataFrame({
        "step": [500 * (i + 1) for i in range(n)], "checkpoint": [f"step_{500 * (i + 1):06d}.pt" for i in range(n)],
        "fd": list(fd), "is_mean": np.linspace(3, 8, n), "is_std": [0.1] * n, "classes_present": [9] + [10] * (n - 1),
        "rarest_class_fraction": np.linspace(0.0, 0.08, n), "real_is": [9.9] * n,
        **{f"class_{k}": [0.1] * n for k in range(10)},
    })
    table["best"] = table["fd"] == table["fd"].min()
    return table


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).any())


RED = (214, 39, 40)  # matplotlib tab:red, the best-checkpoint marker


def test_smoothing_is_debiased_and_skips_non_finite_values():
    values = np.array([1.0, 1.0, np.inf, np.nan, 1.0, 3.0])
    out = smooth(values, span=3)
    assert out[0] == pytest.approx(1.0)  # no pull towards 0 at the start
    assert np.isfinite(out[[0, 1, 4, 5]]).all() and out[4] == pytest.approx(1.0)
    assert 1.0 < out[5] < 3.0
    assert smoothing_span(10) == 1 and smoothing_span(3000) == 60


def test_training_plot(tmp_path):
    path = plot_training(train_table(), tmp_path / "training.png")
    pixels = _pixels(path)
    assert pixels.shape == (620, 900, 3)
    assert _has_colour(pixels, (31, 119, 180)) and _has_colour(pixels, (255, 127, 14))  # both curves drawn


def test_training_plot_adds_the_ada_panel_only_when_ada_ran(tmp_path):
    table = train_table()
    table["r_t"], table["ada_p"] = 0.5, 0.0
    assert _pixels(plot_training(table, tmp_path / "off.png")).shape == (620, 900, 3)  # ADA off: two panels
    table["ada_p"] = np.linspace(0, 0.3, len(table))
    pixels = _pixels(plot_training(table, tmp_path / "on.png"))
    assert pixels.shape == (840, 900, 3) and _has_colour(pixels, RED)  # a third panel, p in red


def test_training_plot_of_a_diverged_run_and_of_nothing(tmp_path):
    table = train_table(100)
    table.loc[50:, ["d_loss", "g_loss"]] = np.nan
    table.loc[49, "g_loss"] = np.inf
    plot_training(table, tmp_path / "diverged.png")
    plot_training(train_table(1), tmp_path / "one.png")
    plot_training(train_table(0), tmp_path / "empty.png")
    assert all(Image.open(tmp_path / f"{n}.png").size == (900, 620) for n in ("diverged", "one", "empty"))


def test_evaluation_plot_marks_the_best_checkpoint(tmp_path):
    pixels = _pixels(plot_evaluation(eval_table(), tmp_path / "eval.png"))
    assert pixels.shape == (960, 1000, 3)
    assert _has_colour(pixels, RED)
    # Without a best row there is no red marker: the red comes from the best-checkpoint marks.
    no_best = eval_table().assign(best=False)
    assert not _has_colour(_pixels(plot_evaluation(no_best, tmp_path / "nobest.png")), RED)


def test_evaluation_plot_of_an_unscored_run(tmp_path):
    table = eval_table((np.nan, np.nan)).assign(is_mean=np.nan, is_std=np.nan, rarest_class_fraction=np.nan,
                                                classes_present=0, note="not scored: unlabelled dataset")
    assert Image.open(plot_evaluation(table, tmp_path / "eval.png")).size == (1000, 960)
    assert Image.open(plot_evaluation(eval_table((50.0,)), tmp_path / "single.png")).size == (1000, 960)


def test_evaluation_plot_of_an_unlabelled_run_draws_the_self_supervised_space(tmp_path):
    """Every panel has a curve: the classifier's four held only the note ("unlabelled dataset, so there is no
    domain classifier ...") where the self-supervised space has six things to show."""
    table = eval_table((np.nan, np.nan)).assign(
        is_mean=np.nan, is_std=np.nan, rarest_class_fraction=np.nan, classes_present=0, ssl_fd=[3.0, 2.0],
        ssl_kid_mean=[0.3, 0.2], ssl_precision=[0.5, 0.6], ssl_recall=[0.1, 0.3], ssl_coverage=[0.2, 0.4],
        memorisation_fraction=[0.3, 0.45], ssl_fd_floor=0.5, ssl_coverage_floor=0.9, note="unlabelled dataset")
    assert [c for c, _, _ in evaluation_panels(table)] == ["ssl_fd", "ssl_kid_mean", "ssl_precision", "ssl_recall",
                                                           "ssl_coverage", "memorisation_fraction"]
    pixels = _pixels(plot_evaluation(table, tmp_path / "eval.png"))
    assert pixels.shape == (960, 1000, 3)
    cells = [pixels[r * 320:(r + 1) * 320, c * 500:(c + 1) * 500] for r in range(3) for c in range(2)]
    assert all(_has_colour(cell, (31, 119, 180)) for cell in cells)  # a blue curve in each of the six
    assert [c for c, _, _ in evaluation_panels(eval_table())][:2] == ["fd", "is_mean"]  # labelled: as before


def test_evaluation_plot_adds_the_class_accuracy_of_conditional_runs(tmp_path):
    table = eval_table().assign(class_accuracy=float("nan"), class_accuracy_note="not a class column")
    assert Image.open(plot_evaluation(table, tmp_path / "plain.png")).size == (1000, 960)  # NaN: no panel
    table["class_accuracy"] = [0.2, 0.5, 0.8, 0.7]
    assert Image.open(plot_evaluation(table, tmp_path / "cond.png")).size == (1000, 1280)  # a fourth row


def test_throughput_plot(tmp_path):
    pixels = _pixels(plot_throughput(train_table(), tmp_path / "speed.png"))
    assert pixels.shape == (340, 900, 3) and _has_colour(pixels, (44, 160, 44))  # tab:green
    assert Image.open(plot_throughput(train_table(0), tmp_path / "none.png")).size == (900, 340)


def test_plot_run_writes_what_the_tables_allow(tmp_path):
    run = tmp_path / "run"
    assert plot_run(run) == {}
    (run / "metrics").mkdir(parents=True)
    train_table().to_parquet(run / "metrics" / "train.parquet")
    assert set(plot_run(run)) == {"training", "throughput"}
    eval_table().to_parquet(run / "metrics" / "eval.parquet")
    made = plot_run(run)
    assert set(made) == {"training", "throughput", "evaluation"}
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["evaluation.png", "throughput.png", "training.png"]


def test_health_events_and_the_loss_name_reach_the_training_plot(tmp_path):
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / "config.json").write_text('{"train": {"loss": "hinge"}}')
    train_table().to_parquet(run / "metrics" / "train.parquet")
    plot_run(run)
    assert not _has_colour(_pixels(run / "plots" / "training.png"), PURPLE, tol=20)
    pd.DataFrame({"step": [120, 300], "event": ["non-finite-loss"] * 2, "action": ["rollback"] * 2}
                 ).to_parquet(run / "metrics" / "health.parquet")
    plot_run(run)
    assert _has_colour(_pixels(run / "plots" / "training.png"), PURPLE, tol=20)  # the event lines


PURPLE = (148, 103, 189)  # matplotlib tab:purple, health events
