"""bench/probe_cost.py: times the probes of a run's own model and writes the row."""

import pandas as pd

from bench import probe_cost


def test_the_probes_are_timed_and_their_choices_written(tmp_path, capsys):
    csv = tmp_path / "probe_cost.csv"
    row = probe_cost.main(["--model", "mlp", "--size", "28", "--channels", "1", "--batch-size", "16",
                           "--csv", str(csv)])
    assert row["seconds"] > 0 and row["precision"] in ("fp32", "bf16") and row["channels_last"] == "off"
    assert "channels_last auto: off (the mlp has no convolutions)" in capsys.readouterr().out
    assert len(pd.read_csv(csv)) == 1
