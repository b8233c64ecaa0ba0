import ast
import errno
import importlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import RUN_FIELDS, RUN_FLAG_NAMES, add_config_flags, config_field, run_main
from flows.train import build_parser, main, parse_config
from ganlib.config import DEFAULT_STEPS, RunConfig, build_config
from ganlib.errors import ConfigError, StorageError

REPO = Path(__file__).resolve().parents[2]
CLIS = ("train", "evaluate", "generate", "continue_run", "serve", "sweep")
TINY_FLAGS = ["--num-images", "400", "--ngf", "8", "--ndf", "8", "--steps", "8", "--batch-size", "32",
              "--checkpoint-every", "4", "--eval-samples", "200", "--gallery-samples", "20", "--device", "cpu"]
# Every flag flows/train.py took when its flags were a hand-typed table: scripts and docs use them.
FLAGS_BEFORE_THE_CONFIG_MADE_THEM = (
    "--dataset --data-root --num-images --image-size --channels --rgba-background --classes --limit --split --strict "
    "--download --resident-limit-mb --model --hidden-dim --ngf --ndf --noise-dim --steps --epochs --batch-size --lr "
    "--lr-g --lr-d --lr-decay --lr-decay-start --loss --d-steps --r1 --r1-every --ema-decay --spectral-norm "
    "--conditional --diffaug --precision --compile --channels-last --fused-optimizer --max-minutes "
    "--checkpoint-every --eval-samples --gallery-samples --nproc-per-node --nnodes --rdzv-endpoint --dist-backend "
    "--dist-timeout-minutes --seed --device --run-id --out --config --dry-run").split()


def test_flags_map_onto_the_config():
    cfg, dry = parse_config(["--dataset", "digits", "--model", "mlp", "--steps", "10", "--batch-size", "64",
                             "--lr", "0.001", "--seed", "3", "--run-id", "abc", "--out", "/tmp/x",
                             "--checkpoint-every", "5", "--device", "cpu", "--hidden-dim", "256"])
    assert not dry and cfg.model.hidden_dim == 256
    assert (cfg.model.name, cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.seed) == ("mlp", 10, 64, 0.001, 3)
    assert (cfg.run_id, str(cfg.out), cfg.train.checkpoint_every, cfg.device) == ("abc", "/tmp/x", 5, "cpu")
    cfg, _ = parse_config(["--eval-samples", "500", "--gallery-samples", "9", "--dist-backend", "gloo",
                           "--dist-timeout-minutes", "2.5", "--classes", "1,2", "--diffaug", "none", "--conditional",
                           "--strict", "--no-download", "--image-size", "32"])
    assert (cfg.eval.num_samples, cfg.gallery.num_samples, cfg.dist.backend, cfg.dist.timeout_minutes) == \
        (500, 9, "gloo", 2.5)
    assert (cfg.data.classes, cfg.train.diffaug, cfg.model.conditional, cfg.data.strict, cfg.data.download) == \
        (["1", "2"], [], True, True, False)
    assert cfg.data.image_size == 32
    cfg, _ = parse_config(["--top-k", "0.5", "--top-k-decay", "0.98"])
    assert (cfg.train.top_k, cfg.train.top_k_decay) == (0.5, 0.98)


def test_the_flags_of_before_are_all_still_there():
    options = {o for a in build_parser()._actions for o in a.option_strings}
    assert set(FLAGS_BEFORE_THE_CONFIG_MADE_THEM) <= options


def test_no_flags_is_the_configs_defaults():
    """An absent flag leaves its field alone: no argparse default can shadow the config's."""
    assert parse_config(["--run-id", "x"]) == (build_config({"run_id": "x"}).resolved(), False)
    assert all(a.default is None for a in build_parser()._actions if a.dest in RUN_FIELDS)


def _documented_default(text: str, value) -> bool:
    if isinstance(value, bool):
        return text == ("on" if value else "off")
    if isinstance(value, list):
        return text == (",".join(value) or "none")
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return text == str(value)


def test_each_flags_help_and_default_are_its_config_fields():
    """The help of every config flag is its field's description, then the field's default: nothing re-typed."""
    defaults = RunConfig().model_dump(mode="json")
    actions = {a.dest: a for a in build_parser()._actions}
    for dotted in RUN_FIELDS:
        action, field = actions[dotted], config_field(dotted)
        flag = RUN_FLAG_NAMES.get(dotted, "--" + dotted.rsplit(".", 1)[-1].replace("_", "-"))
        assert action.option_strings[0] == flag
        assert field.description, f"{dotted}: give the field a description in ganlib/config.py (it is the --help)"
        assert action.help.startswith(field.description.replace("%", "%%")), dotted
        value = defaults
        for part in dotted.split("."):
            value = value[part]
        said = re.fullmatch(r"(.*) \(default ([^()]+)\)", action.help, re.DOTALL)
        if value is None:  # the description says what None means (train.steps: DEFAULT_STEPS)
            assert said is None, dotted
        else:
            assert said is not None and _documented_default(said.group(2), value), (dotted, action.help)
    assert str(DEFAULT_STEPS) in config_field("train.steps").description
    help_text = " ".join(build_parser().format_help().split())
    assert "--lr LR Adam learning rate of G and D. (default 0.0002)" in help_text
    assert "12% faster" in help_text  # a description's % survives argparse's formatting


def test_every_config_field_has_a_command_line_form():
    """A new field of any type gets a flag: add_config_flags knows its type (or fails here, not in a user's shell)."""
    import argparse

    from pydantic import BaseModel

    def leaves(model, prefix=""):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from leaves(field.annotation, f"{prefix}{name}.")
            else:
                yield prefix + name

    fields = list(leaves(RunConfig))
    names = {f: "--" + f.replace(".", "-").replace("_", "-") for f in fields}
    parser = argparse.ArgumentParser()
    assert len(add_config_flags(parser, fields, names)) == len(fields) > 70
    parser.format_help()
    with pytest.raises(ValueError, match="--batch-size is taken twice"):
        add_config_flags(argparse.ArgumentParser(), ["train.batch_size", "eval.batch_size"])


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"ngf": 16}, "train": {"steps": 3}}))
    cfg, _ = parse_config(["--config", str(path), "--steps", "7"])
    assert cfg.model.ngf == 16 and cfg.train.steps == 7


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["--dry-run", "--steps", "5", "--run-id", "dry"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == "dry" and printed["train"]["steps"] == 5
    again = parse_config(["--steps", "5", "--run-id", "dry"])[0]
    assert build_config(printed).model_dump() == again.model_dump()  # --config takes it back


def test_dry_run_says_which_preset_model_auto_takes_and_why(capsys, tmp_path):
    assert main(["--dry-run", "--image-size", "32", "--run-id", "dry"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert err.startswith("model auto: dcgan (32-px grey images on a CPU")
    assert printed["model"]["name"] == "dcgan" and printed["train"]["loss"] == "ns" and printed["train"]["ada"] == "off"
    assert main(["--dry-run", "--image-size", "32", "--device", "cuda", "--run-id", "dry"]) == 0  # only validates
    out, err = capsys.readouterr()
    assert json.loads(out)["model"]["name"] == "r3gan"
    assert err.startswith("model auto: r3gan (32-px grey images on a GPU")
    assert main(["--dry-run", "--run-id", "dry"]) == 0  # the digits at 28 px: the MLP, as always
    out, err = capsys.readouterr()
    assert json.loads(out)["model"]["name"] == "mlp" and json.loads(out)["data"]["image_size"] == 28
    assert err.startswith("model auto: mlp (28-px grey images")  # their size goes without saying
    assert main(["--dry-run", "--model", "dcgan", "--run-id", "dry"]) == 0  # a named model: nothing to say
    assert capsys.readouterr().err == ""
    # A folder at 28 px: grey or RGB is known once its images are prepared, and the line says what follows.
    assert main(["--dry-run", "--dataset", "folder", "--data-root", str(tmp_path), "--run-id", "dry",
                 "--image-size", "28"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["model"]["name"] == "auto"
    assert err == "model auto: chosen once the images are prepared: mlp if they are grey, dcgan if they are RGB\n"
    # An empty folder: no size to read, so nothing is chosen yet (the run itself stops at the preflight).
    assert main(["--dry-run", "--dataset", "folder", "--data-root", str(tmp_path), "--run-id", "dry"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["data"]["image_size"] == "auto" and json.loads(out)["model"]["name"] == "auto"
    assert err == "model auto: chosen once the images are found (their size and channels decide)\n"


def test_image_size_auto_follows_the_images_and_a_run_keeps_its_own(capsys, tmp_path):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (80, 64), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    flags = ["--dry-run", "--dataset", "folder", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"),
             "--run-id", "mine", "--device", "cpu"]
    assert main(flags) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["data"]["image_size"] == 64 and json.loads(out)["model"]["name"] == "dcgan"
    assert err == ("image size auto: 64 px (the median shorter side of 5 of its 5 images)\n"
                   "model auto: dcgan (64-px images on a CPU: the fast conv preset, which beat r3gan and resnet "
                   "at equal CPU time (docs/models.md))\n")  # grey or RGB: known once prepared (either way dcgan)
    assert parse_config(flags[1:] + ["--image-size", "auto"])[0].data.image_size == 64  # the word, as a flag
    run_dir = tmp_path / "out" / "mine"  # a run that started at 32 px resumes at 32, whatever auto says now
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"data": {"image_size": 32}}))
    assert main(flags) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["data"]["image_size"] == 32
    assert err.startswith("image size auto: 32 px (the run's own, from its config.json)\n")


def test_a_config_file_that_is_not_an_object_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    assert main(["--config", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --config: {path} does not hold a JSON object (a RunConfig's fields)\n"


@pytest.mark.parametrize("name", CLIS)
def test_every_cli_documents_dry_run_the_same_way(name, capsys):
    module = importlib.import_module(f"flows.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--dry-run print " in help_text and " as JSON and exit 0, doing nothing (no Prefect server, " in help_text


@pytest.mark.parametrize("name", CLIS)
def test_every_cli_ends_with_the_same_exit_codes(name, monkeypatch, capsys):
    module = importlib.import_module(f"flows.{name}")

    def raising(error):
        def body(argv):
            raise error
        return body

    monkeypatch.setattr(module, "_main", raising(ConfigError("train.lr: too big")))
    assert module.main([]) == 2 and capsys.readouterr().err == "error: train.lr: too big\n"
    monkeypatch.setattr(module, "_main", raising(KeyboardInterrupt()))
    assert module.main([]) == 130 and capsys.readouterr().err.startswith("interrupted")
    monkeypatch.setattr(module, "_main", raising(ZeroDivisionError("a bug")))
    assert module.main([]) == 1 and "Traceback" in capsys.readouterr().err


def test_run_main_exit_codes(capsys):
    assert run_main(lambda argv: None) == 0 and run_main(lambda argv: 3) == 3

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted, on_interrupt="run again with the same --run-id") == 130
    assert capsys.readouterr().err == "interrupted by SIGINT: run again with the same --run-id\n"

    def terminated(argv):  # Prefect's SIGTERM handler, outside training
        from prefect.exceptions import TerminationSignal

        raise TerminationSignal(signal=signal.SIGTERM)

    assert run_main(terminated, on_interrupt="run again") == 143
    assert capsys.readouterr().err == "interrupted by SIGTERM: run again\n"

    def stopped(argv):  # training stopped on a signal and checkpointed (tasks.common.StopSignals)
        from tasks.common import RunInterrupted

        raise RunInterrupted("interrupted by SIGTERM: checkpointed at step 7 of 9; run again\nmore", signal.SIGTERM)

    assert run_main(stopped) == 143
    assert capsys.readouterr().err == "interrupted by SIGTERM: checkpointed at step 7 of 9; run again\n"

    def user_error(argv):
        raise ConfigError("model.name: 'vae' is not a model\nsecond line")

    assert run_main(user_error) == 2
    assert capsys.readouterr().err == "error: model.name: 'vae' is not a model\n"

    def disk_full(argv):  # through ganlib.runs.files: the file named, and the CLI's advice on going on
        raise StorageError(errno.ENOSPC, "No space left on device", "out/r/metrics/train.parquet")

    assert run_main(disk_full, on_interrupt="run again with the same --run-id to resume") == 2
    assert capsys.readouterr().err == ("error: no space left to write out/r/metrics/train.parquet (No space left on "
                                       "device): free disk space and run again; what was saved before is kept; run "
                                       "again with the same --run-id to resume\n")

    def library_disk_full(argv):  # a library's own write (a log handler, Prefect's results): one line too
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/prefect/results/x")

    assert run_main(library_disk_full, on_interrupt="run again; rows already scored are kept") == 2
    assert capsys.readouterr().err == ("error: No space left on device (/tmp/prefect/results/x): free disk space, "
                                       "then run again; rows already scored are kept\n")

    def bug(argv):
        return {}["missing"]

    assert run_main(bug) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.rstrip().endswith("KeyError: 'missing'")


def test_scripts_import_flows_before_prefect():
    """Run as a script (python flows/train.py), a CLI gets the project's Prefect defaults only if its
    first project import (flows.cli, which imports tasks) comes before any import of prefect."""
    for name in CLIS:
        tree = ast.parse((REPO / "flows" / f"{name}.py").read_text())
        modules = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                   for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        first_flows = next(i for i, m in enumerate(modules) if m.split(".")[0] == "flows")
        first_prefect = next((i for i, m in enumerate(modules) if m.split(".")[0] == "prefect"), len(modules))
        assert first_flows < first_prefect, name
        assert not any(m == "tasks" for m in modules), f"{name}: flows/__init__.py imports tasks"


@pytest.mark.slow
def test_train_help_as_a_script_sets_the_prefect_defaults_first(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "flows" / "train.py"), "--help"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: train.py") and "--dry-run" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported.index("tasks") < next(i for i, m in enumerate(imported) if m.split(".")[0] == "prefect")


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "-1"], "error: invalid config: train.lr: Input should be greater than 0 (got -1.0)"),
    (["--model", "gan9000"],
     "error: invalid config: model.name: Input should be 'auto', 'mlp', 'dcgan', 'resnet' or 'r3gan' (got 'gan9000')"),
    (["--steps", "x"], "error: argument --steps: invalid int value: 'x' (see --help)"),
    (["--dataset", "mnist", "--data-root", "/nonexistent"], "error: data.data_root: /nonexistent is not a directory"),
    (["--run-id", "../up"], "error: invalid config: run_id: String should match pattern"),
    (["--device", "cuda:7"], "error: device: 'cuda:7'"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)  # cuda:7 on a machine that has 8 GPUs
    with pytest.raises(SystemExit) if argv[0] == "--steps" else _no_raise():
        code = main(argv + ["--out", "/tmp/never-written"])
        assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path("/tmp/never-written").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("a bad input started the pipeline")


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
