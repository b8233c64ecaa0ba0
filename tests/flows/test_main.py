"""flows/main.py: the one ``ganlib`` command dispatches to the flows' own command lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in COMMANDS)
    assert set(COMMANDS) == {"train", "evaluate", "generate", "export", "continue", "sweep", "serve"}
    assert main([]) == 2 and "usage: ganlib" in capsys.readouterr().err


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'fly'; one of train,") and err.count("\n") == 1


def test_each_command_is_its_flow_and_says_so_in_its_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and " export [-h]" in out.splitlines()[0]
    assert "Export a run's generator" in out
    assert main(["generate", "--run-id", "nope", "--out", "/nonexistent"]) == 2
    assert capsys.readouterr().err.startswith("error: no run at")


@pytest.mark.slow  # two interpreters importing prefect: ~20 s on 2 loaded cores
def test_installed_script_dry_run_equals_the_flow_script():
    ganlib = shutil.which("ganlib", path=str(Path(sys.executable).parent))
    if ganlib is None:
        pytest.skip("the ganlib script is not installed: pip install -e .")
    args = ["train", "--run-id", "same", "--steps", "30", "--dry-run"]
    script = subprocess.run([ganlib, *args], capture_output=True, text=True, timeout=120)
    flow = subprocess.run([sys.executable, "flows/train.py", *args[1:]], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert script.returncode == flow.returncode == 0, script.stderr + flow.stderr
    assert script.stdout == flow.stdout and '"steps": 30' in script.stdout
    listed = subprocess.run([ganlib, "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and all(name in listed.stdout for name in COMMANDS)
