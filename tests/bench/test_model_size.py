"""bench/model_size.py: the presets' sizes at the widths a run resolves to, on a CPU and on a GPU."""

import pandas as pd

from bench import model_size


def test_r3gan_rows_show_the_cpu_and_gpu_widths(tmp_path, capsys):
    out = tmp_path / "sizes.csv"
    model_size.main(["--models", "r3gan,dcgan", "--sizes", "32", "--csv", str(out)])
    table = pd.read_csv(out).set_index(["model", "device_kind"])
    assert tuple(table.loc[("r3gan", "cpu"), ["ngf", "ndf", "blocks"]]) == (16, 16, 1)
    assert tuple(table.loc[("r3gan", "gpu"), ["ngf", "ndf", "blocks"]]) == (64, 64, 2)
    assert table.loc[("r3gan", "gpu"), "g_gflop"] > 10 * table.loc[("r3gan", "cpu"), "g_gflop"] > 0
    assert table.loc[("dcgan", "gpu"), "g_params_m"] == table.loc[("dcgan", "cpu"), "g_params_m"] > 0
    assert "r3gan   gpu    32   64   64      2" in capsys.readouterr().out
