"""bench/probe_cost.py: times the probes of a run's own model and writes the row."""

import pandas as pd

from bench import probe_cost


def test_the_probes_are_timed_and_their_choices_written(tmp_path, capsys, monkeypatch):
    """A conv model's layout is probed on every CPU (the mlp's, its precision without bf16 and its threads with
    one may not be), so there is always something to time."""
    import ganlib.training.probe as probe

    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)  # the fewest steps: what is measured is not the point here
    csv = tmp_path / "probe_cost.csv"
    row = probe_cost.main(["--model", "dcgan", "--size", "32", "--channels", "1", "--batch-size", "8",
                           "--csv", str(csv)])
    assert row["seconds"] > 0 and row["precision"] in ("fp32", "bf16") and row["channels_last"] in ("on", "off")
    assert "channels_last auto: " in capsys.readouterr().out and len(pd.read_csv(csv)) == 1
