"""The chaos stress tests, short: a run SIGKILLed at random moments ends as an uninterrupted one does, bit for
bit (tests/stress/chaos.py; the full one, 20 cycles, about 2 minutes on 2 cores, is
``.venv/bin/python tests/stress/chaos.py --cycles 20 --seed 11``); ``python flows/train.py`` stopped by
SIGKILL, SIGTERM and SIGINT in each stage leaves no process and resumes exactly (tests/stress/chaos_flow.py,
``--cycles 12``: every stage with every signal, about 7 minutes); docs/reliability.md."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
CHAOS = REPO / "tests" / "stress" / "chaos.py"
CHAOS_FLOW = REPO / "tests" / "stress" / "chaos_flow.py"

pytestmark = [pytest.mark.slow, pytest.mark.stress, pytest.mark.usefixtures("own_cache")]


def test_a_run_killed_at_random_moments_finishes_like_an_uninterrupted_one(tmp_path):
    # Four kills: one aimed at training (or the lock, or a checkpoint write), then one at evaluation
    # and one at the gallery; then a last attempt runs to the end.
    done = subprocess.run([sys.executable, str(CHAOS), "--cycles", "4", "--seed", "11", "--out", str(tmp_path / "work"),
                           "--csv", str(tmp_path / "chaos.csv")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    row = pd.read_csv(tmp_path / "chaos.csv").iloc[-1]
    assert row["result"] == "PASS" and row["checks_passed"] == row["checks_total"] == 9, done.stdout
    kills = row[[c for c in row.index if c.startswith("kills_")]].sum()
    assert kills + row["not_killed"] == 4 and kills >= 1, done.stdout


def test_the_command_line_stopped_by_each_signal_leaves_nothing_and_resumes_exactly(tmp_path):
    # Four stops (one per stage: prepare, train, evaluate, gallery; the signals rotate), then a last run.
    done = subprocess.run([sys.executable, str(CHAOS_FLOW), "--cycles", "4", "--seed", "1", "--steps", "300",
                           "--out", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0 and "PASS:" in done.stdout, done.stdout[-6000:] + done.stderr[-3000:]
    assert "processes left over: 0" in done.stdout
