"""bench/eval_memory.py: scoring the samples all at once and a batch at a time give the same features, and the table."""

import pandas as pd

from bench import eval_memory


def test_both_ways_give_the_same_features_and_the_table_is_written(tmp_path):
    csv = tmp_path / "eval_memory.csv"
    rows = eval_memory.main(["--num", "50", "--size", "32", "--batch-size", "16", "--csv", str(csv)])
    assert [r["variant"] for r in rows] == list(eval_memory.VARIANTS)
    assert rows[0]["digest"] == rows[1]["digest"]  # main() also exits when they differ
    assert all(r["host_peak_mb"] > 0 for r in rows) and len(pd.read_csv(csv)) == 2
