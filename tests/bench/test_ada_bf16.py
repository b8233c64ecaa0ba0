"""bench/ada_bf16.py: what D sees of ADA's images under bf16 autocast, this checkout beside another commit."""

import pandas as pd

from bench import ada_bf16


def test_under_bf16_autocast_p_zero_changes_nothing_and_the_table_is_written(tmp_path):
    csv = tmp_path / "ada_bf16.csv"
    rows = ada_bf16.main(["--sizes", "64", "--periods", "2", "--csv", str(csv)])
    assert [(r["kept_p0"], r["mean_abs_error_p0"]) for r in rows] == [(1.0, 0.0)]
    assert 0 < rows[0]["kept_p055"] < 0.5  # fractional moves blur 2-px stripes (bench.ada_spectrum)
    assert len(pd.read_csv(csv)) == 1


def test_another_commits_pipeline_is_loaded_from_git():
    from ganlib.training import ada

    augment = ada_bf16.augment_of("HEAD")
    assert augment is not ada.augment and augment.__module__ == "ada_HEAD"
    assert set(ada_bf16.measure(augment, 2, 32, 0.0, n=4)) == {"median_kept", "mean_abs_error"}
