"""Real sources through training and evaluation: labelled RGB, unlabelled, and the command line."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganlib.data.store import prepare_dataset
from ganlib.evaluation.evaluate import best_checkpoint, evaluate_run
from ganlib.training.loop import train

REPO = Path(__file__).resolve().parents[3]


def _cifar(tmp_path, make, n=200):
    images = np.stack([make.pattern(32, 32, 3, i) for i in range(n)])
    labels = [i % 10 for i in range(n)]
    make.cifar_batch(tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_1", images, labels)
    return tmp_path / "cifar"


def test_labelled_rgb_source_trains_and_is_scored(tiny, tmp_path, make):
    data = {"dataset": "cifar10", "data_root": str(_cifar(tmp_path, make)), "image_size": 32}
    cfg = tiny(run_id="cifar", data=data)
    store = prepare_dataset(cfg.data, cfg.out)
    result = train(cfg, store)
    assert result.final_step == 12
    table = evaluate_run(cfg, store)
    assert table["fd"].notna().all() and table["best"].any()
    assert (cfg.run_dir / "data" / "real_grid.png").is_file()
    assert json.loads((cfg.run_dir / "data" / "manifest.json").read_text())["class_histogram"]["3"] == 20


def test_unlabelled_folder_trains_and_is_scored_in_the_self_supervised_space(tiny, tmp_path, make):
    for i in range(64):
        make.save(make.pattern(40, 36, 3, i), tmp_path / "flat" / f"{i:03d}.png")
    data = {"dataset": "folder", "data_root": str(tmp_path / "flat"), "image_size": 32}
    cfg = tiny(run_id="flat", data=data)
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert table["step"].tolist() == [6, 6, 12, 12] and table["best"].sum() == 1
    assert table["fd"].isna().all() and table["is_mean"].isna().all()  # no classes: no domain classifier
    assert table["note"].iloc[0].startswith("unlabelled dataset, so there is no domain classifier")
    assert table["ssl_fd"].notna().all() and (table["select_metric"] == "ssl_fd").all()
    ema = table[table["generator"] == "ema"]
    assert best_checkpoint(table, cfg.run_dir).name == ema.loc[ema["ssl_fd"].idxmin(), "checkpoint"]
    assert pd.read_parquet(cfg.run_dir / "metrics" / "eval.parquet").shape == table.shape


@pytest.mark.slow
def test_command_line_on_an_unlabelled_folder(tmp_path, make):
    """python flows/train.py on a folder: prepares, trains, evaluates (in the self-supervised space), renders."""
    for i in range(60):
        make.save(make.pattern(30, 30, 1, i), tmp_path / "imgs" / f"{i:03d}.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"")
    # Prefect's own home, as a user's run: a fresh one would add its database's creation (~25 s on 2 cores),
    # which tests/flows/test_cli.py's first-run test covers.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"
    flags = ["--dataset", "folder", "--data-root", str(tmp_path / "imgs"), "--ngf", "8", "--ndf", "8",
             "--steps", "4", "--batch-size", "16", "--checkpoint-every", "2", "--eval-samples", "100",
             "--gallery-samples", "10", "--device", "cpu", "--run-id", "cli", "--out", str(out)]
    proc = subprocess.run([sys.executable, "flows/train.py", *flags], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "skipped 1 of 61 images" in output
    # Scored in the self-supervised space, and said so without the classifier's NaNs ("FD nan KID nan IS nan ...").
    assert re.search(r"evaluation: step \d+ ema  self-supervised FD [\d.]+", output) and "FD nan" not in output
    assert re.search(r"done: .*FD [\d.]+ \(self-supervised space\)", output)
    # no --image-size: the images' own size (30 px: 28), said once, with the file that would not open left out
    assert output.count("image size auto: 28 px (the median shorter side of 60 of its 61 images)") == 1
    run = out / "cli"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selection"]["metric"] == "ssl_fd" and math.isnan(summary["best"]["fd"])
    assert summary["best"]["ssl_fd"] is not None
    assert summary["data"]["shape"] == [1, 28, 28]
    for rel in ("data/real_grid.png", "data/manifest.json", "gallery/grid_5x5.png", "metrics/eval.parquet"):
        assert (run / rel).is_file(), rel
