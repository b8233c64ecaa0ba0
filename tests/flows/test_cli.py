import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.train import FLAGS, main, parse_config

REPO = Path(__file__).resolve().parents[2]
TINY_FLAGS = ["--num-images", "400", "--ngf", "8", "--ndf", "8", "--steps", "8", "--batch-size", "32",
              "--checkpoint-every", "4", "--eval-samples", "200", "--gallery-samples", "20", "--device", "cpu"]


def test_flags_map_onto_the_config():
    cfg, dry = parse_config(["--dataset", "digits", "--model", "mlp", "--steps", "10", "--batch-size", "64",
                             "--lr", "0.001", "--seed", "3", "--run-id", "abc", "--out", "/tmp/x",
                             "--checkpoint-every", "5", "--device", "cpu", "--hidden-dim", "256"])
    assert not dry and cfg.model.hidden_dim == 256
    assert (cfg.model.name, cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.seed) == ("mlp", 10, 64, 0.001, 3)
    assert (cfg.run_id, str(cfg.out), cfg.train.checkpoint_every, cfg.device) == ("abc", "/tmp/x", 5, "cpu")


def test_every_default_named_in_the_help_is_the_configs():
    """A flag's help that says "(default X)" must say the config's default, not an old one."""
    import re

    from ganlib.config import DEFAULT_STEPS, RunConfig

    defaults = RunConfig.model_validate({}).model_dump(mode="json")
    defaults["train"]["steps"] = DEFAULT_STEPS  # None in the config: neither steps nor epochs given
    checked = 0
    for flag, field, _, help_text in FLAGS:
        said = re.search(r"\(default ([^;:),]+)", help_text)
        if said is None:
            continue
        value = defaults
        for part in field.split("."):
            value = value[part]
        text = said.group(1).strip()
        value = ",".join(value) if isinstance(value, list) else value
        try:
            assert float(text) == float(value), (flag, text, value)
        except (TypeError, ValueError):
            assert text.split()[0] == str(value), (flag, text, value)
        checked += 1
    assert checked >= 15


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"ngf": 16}, "train": {"steps": 3}}))
    cfg, _ = parse_config(["--config", str(path), "--steps", "7"])
    assert cfg.model.ngf == 16 and cfg.train.steps == 7


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["--dry-run", "--steps", "5", "--run-id", "dry"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == "dry" and printed["train"]["steps"] == 5


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "-1"], "error: invalid config: train.lr: Input should be greater than 0 (got -1.0)"),
    (["--model", "gan9000"],
     "error: invalid config: model.name: Input should be 'mlp', 'dcgan' or 'resnet' (got 'gan9000')"),
    (["--steps", "x"], "error: argument --steps: invalid int value: 'x' (see --help)"),
    (["--dataset", "mnist", "--data-root", "/nonexistent"], "error: data.data_root: /nonexistent is not a directory"),
    (["--run-id", "../up"], "error: invalid config: run_id: String should match pattern"),
    (["--device", "cuda:7"], "error: device: 'cuda:7'"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    with pytest.raises(SystemExit) if argv[0] == "--steps" else _no_raise():
        code = main(argv + ["--out", "/tmp/never-written"])
        assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path("/tmp/never-written").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.slow
def test_first_run_on_a_fresh_prefect_home_is_clean(tmp_path):
    """The real command in a subprocess, fresh PREFECT_HOME: no tracebacks, no Prefect errors."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"eval": {"classifier_steps": 30}}))
    proc = subprocess.run([sys.executable, "flows/train.py", "--config", str(config), *TINY_FLAGS,
                           "--run-id", "cli", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "| ERROR" not in output and "| WARNING" not in output, output
    assert "Flow run" in output and "done:" in output
    run = tmp_path / "out" / "cli"
    for rel in ("config.json", "summary.json", "summary.md", "metrics/train.parquet", "metrics/eval.parquet",
                "gallery/grid_5x5.png", "gallery/grid_10x10.png", "gallery/samples.npz", "checkpoints/step_000008.pt"):
        assert (run / rel).is_file(), rel
