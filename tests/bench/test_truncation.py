"""bench/truncation.py: the truncation trick's fidelity against variety, on a trained run."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import truncation
from ganlib.data.store import prepare_dataset
from ganlib.training.loop import train


def test_thresholds_parse_with_none_and_refuse_what_is_no_cut_off():
    assert truncation.parse_thresholds("none, 2,0.5") == [None, 2.0, 0.5]
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit, match="is not a cut-off above 0"):
            truncation.parse_thresholds(bad)


@pytest.mark.slow
def test_a_run_is_scored_at_each_threshold_in_both_spaces(tiny, tmp_path, capsys):
    cfg = tiny(run_id="trunc").resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    csv = tmp_path / "results" / "truncation.csv"
    rows = truncation.main(["--run-id", "trunc", "--out", str(cfg.out), "--checkpoint", "latest",
                            "--thresholds", "none,0.3", "--csv", str(csv)])
    assert [r["truncation"] for r in rows] == ["none", 0.3]
    assert all(r["num_samples"] == 200 and r["step"] == 12 for r in rows)
    none, cut = rows
    assert cut["fd"] != none["fd"] and cut["ssl_fd"] != none["ssl_fd"]  # the samples were truncated
    assert len(pd.read_csv(csv)) == 2
    picture = np.asarray(Image.open(tmp_path / "results" / "truncation-trunc.png"), dtype=float)
    assert picture.shape[1] > 10 * 28
    top, bottom = picture[: picture.shape[0] // 2], picture[picture.shape[0] // 2:]
    assert np.abs(top - bottom).mean() > 0  # the same latents, drawn in
    assert "| truncation | fd | is_mean | precision | recall" in capsys.readouterr().out


def test_a_missing_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="bench.truncation: no run at"):
        truncation.main(["--run-id", "nope", "--out", str(tmp_path)])
