"""bench/memorisation_memory.py: the pixel search as it is and as it was find the same pairs, and the table."""

import pandas as pd

from bench import memorisation_memory


def test_both_searches_find_the_same_pairs_and_the_table_is_written(tmp_path):
    csv = tmp_path / "memorisation_memory.csv"
    rows = memorisation_memory.main(["--num", "60", "--size", "16", "--csv", str(csv)])
    assert [r["variant"] for r in rows] == list(memorisation_memory.VARIANTS)
    assert rows[0]["pairs"] == rows[1]["pairs"] and rows[0]["distance_sum"] == rows[1]["distance_sum"]
    assert all(r["host_peak_mb"] > 0 for r in rows) and len(pd.read_csv(csv)) == 2
