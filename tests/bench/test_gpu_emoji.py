"""bench/gpu_emoji.sh: its CPU check mode runs the whole script (train, score, curves, files for $OUT)."""

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_usage_without_a_mode():
    done = subprocess.run(["bash", "bench/gpu_emoji.sh"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "usage: bash bench/gpu_emoji.sh prepare|run|check\n"


@pytest.mark.slow
def test_check_mode_leaves_what_the_gpu_run_brings_back(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "emoji"
    data.mkdir()
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (36, 36, 4), dtype=np.uint8), "RGBA").save(data / f"{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "DATA": str(data), "OUT": str(out), "WIDTH": "8", "BLOCKS": "1", "STEPS": "20",
           "EVERY": "10"}
    done = subprocess.run(["bash", "bench/gpu_emoji.sh", "check"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names[:3] == ["ada_bf16.csv", "curves.png", "curves.txt"] and names[-2:] == ["log.txt", "quality.csv"]
    assert len(names) == 6 and names[3].startswith("grid-r3gan-w8-32px-20steps-")
    ada = pd.read_csv(out / "ada_bf16.csv")  # ADA under the device's bf16 autocast: p 0 changes nothing
    assert len(ada) == 4 and (ada["kept_p0"] == 1.0).all() and (ada["mean_abs_error_p0"] == 0.0).all()
    with open(out / "quality.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "r3gan" and row["image_size"] == "32" and int(row["steps"]) == 20
    curve = (out / "curves.txt").read_text().splitlines()
    assert curve[1].split()[:2] == ["step", "seconds"] and "ssl_fd" in curve[1]
    assert [line.split()[0] for line in curve[2:4]] == ["10", "20"]  # EVERY=10: both checkpoints scored
