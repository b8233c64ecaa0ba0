"""bench/ada_spectrum.py: how much fine detail ADA's resampling lets through, and runs' sample spectra."""

import math

import pandas as pd
import pytest
import torch

from bench import ada_spectrum
from ganlib.data.store import prepare_dataset
from ganlib.training import train


def test_stripes_hold_their_period_in_the_unit_range():
    for period in (2, 4, 8):
        s = ada_spectrum.stripes(period, 16)
        assert s.shape == (16, 16) and s.min() >= -1 and s.max() <= 1
        assert torch.allclose(s[:, :16 - period], s[:, period:], atol=1e-5)  # repeats every period


def test_radial_power_puts_a_sine_at_its_frequency():
    x = torch.arange(32, dtype=torch.float64)
    image = torch.sin(x * 2 * math.pi * 5 / 32).expand(32, 32)
    power = ada_spectrum.radial_power(image.expand(2, 1, 32, 32))
    assert int(power.argmax()) == 5 and len(power) == 17


def test_without_augmentation_everything_is_kept_and_supersampling_keeps_the_fine_detail():
    for mode in ada_spectrum.MODES:
        assert ada_spectrum.retention(4, 0.0, mode, n=32, size=32)["median_kept"] == pytest.approx(1.0, abs=1e-4)
    kept = {mode: ada_spectrum.retention(4, 0.55, mode, n=128, size=32)["median_kept"] for mode in ada_spectrum.MODES}
    assert kept["bilinear"] < 0.8 < kept["bicubic"]  # bilinear interpolation is the stronger low-pass filter
    assert kept["bilinear 2x"] > 0.85  # --ada-supersample: most of the 4-px stripes reach D


@pytest.mark.slow
def test_the_script_prints_both_tables_and_writes_their_rows(tiny, tmp_path, capsys):
    cfg = tiny(model__name="dcgan", data__image_size=32, data__channels="rgb").resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    csv = tmp_path / "spectrum.csv"
    rows = ada_spectrum.main(["--size", "32", "--periods", "4", "--probabilities", "0.5", "--runs", str(cfg.run_dir),
                              "--num-samples", "64", "--csv", str(csv)])
    assert [r["part"] for r in rows] == ["retention"] * 3 + ["spectrum"]
    assert rows[-1]["ratio_16"] > 0
    assert len(pd.read_csv(csv)) == 4
    out = capsys.readouterr().out
    assert "bilinear 2x" in out and f"{cfg.run_id}" in out
    with pytest.raises(SystemExit, match="no checkpoint at step 7"):
        ada_spectrum.main(["--size", "32", "--periods", "4", "--runs", str(cfg.run_dir), "--step", "7",
                           "--csv", str(csv)])
