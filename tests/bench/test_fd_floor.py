"""bench/fd_floor.py: the finite-sample FD floor, measured and fitted as a + b/n."""

import pandas as pd
import pytest
import torch

from bench import fd_floor
from ganlib.evaluation.metrics import feature_statistics


def test_the_fit_recovers_a_line_in_one_over_n():
    sizes = [100, 200, 400, 1000]
    a, b = fd_floor.fit_inverse(sizes, [0.5 + 300 / n for n in sizes])
    assert a == pytest.approx(0.5) and b == pytest.approx(300)


def test_subset_sizes_run_from_the_smallest_to_the_whole_held_out_set_evenly_in_one_over_n():
    sizes = fd_floor.subset_sizes(1000, 100, 4)
    assert sizes[0] == 100 and sizes[-1] == 1000 and sizes == sorted(sizes)
    steps = [1 / x - 1 / y for x, y in zip(sizes, sizes[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=0.05)
    with pytest.raises(SystemExit, match="fewer than --smallest"):
        fd_floor.subset_sizes(50, 100, 4)


def test_smaller_subsets_of_the_real_distribution_score_higher():
    """The finite-sample bias: FD against the reference falls as the subset grows (Gaussian features, the same
    distribution on both sides), and the whole set is drawn once."""
    gen = torch.Generator().manual_seed(0)
    reference_features = torch.randn(2000, 8, generator=gen, dtype=torch.float64)
    mu, sigma = feature_statistics(reference_features)
    curve = fd_floor.floor_curve(torch.randn(1000, 8, generator=gen), {"mu": mu, "sigma": sigma},
                                 [50, 200, 1000], repeats=10)
    means = [r["fd_mean"] for r in curve]
    assert means[0] > means[1] > means[2] > 0
    assert [r["draws"] for r in curve] == [10, 10, 1] and curve[-1]["fd_std"] == 0
    a, b = fd_floor.fit_inverse([r["n"] for r in curve], means)
    assert b > 0


@pytest.mark.slow
def test_the_script_scores_both_spaces_of_labelled_data_and_predicts_below_the_reported_floor(tmp_path, capsys):
    csv = tmp_path / "floor.csv"
    rows = fd_floor.main(["--dataset", "digits", "--out", str(tmp_path / "out"), "--set", "data.num_images=2000",
                          "--set", "eval.num_samples=400", "--set", "eval.ssl_steps=5",
                          "--set", "eval.classifier_steps=30", "--smallest", "100", "--sizes", "3",
                          "--repeats", "5", "--at", "4000", "--csv", str(csv)])
    assert [r["space"] for r in rows] == ["ssl_fd", "fd"]
    for row in rows:  # 4,000 samples of the real distribution would score below 400 held-out images
        assert 0 < row["floor_at"] < row["floor_reported"] and row["num_holdout"] == 400
    assert len(pd.read_csv(csv)) == 2
    assert "a flawless generator's 4000 samples" in capsys.readouterr().out


def test_a_missing_source_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="bench.fd_floor: .*"):
        fd_floor.main(["--dataset", "folder", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
