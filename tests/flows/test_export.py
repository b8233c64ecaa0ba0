"""flows/export.py (planning, one-line errors, the flow) and flows/generate.py --model-file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from flows.export import main, plan_export
from flows.generate import main as generate_main
from flows.generate import plan_file_generation
from ganlib.config import build_config
from ganlib.data.store import prepare_dataset
from ganlib.errors import CheckpointError, ConfigError, RunError
from ganlib.rendering.gallery import GALLERY_NOISE_OFFSET
from ganlib.training.loop import train

pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained conditional run whose evaluation table marks step 2 best."""
    cfg = build_config({
        "run_id": "exp", "out": str(tmp_path_factory.mktemp("export-flow") / "out"), "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400},
        "model": {"name": "dcgan", "ngf": 8, "ndf": 8, "conditional": True},
        "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 2, "log_every": 2},
    }).resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    pd.DataFrame({"step": [2, 4], "checkpoint": ["step_000002.pt", "step_000004.pt"], "generator": ["ema", "ema"],
                  "fd": [1.0, 2.0], "best": [True, False]}).to_parquet(cfg.run_dir / "metrics" / "eval.parquet")
    return cfg


def _args(run, *more):
    return ["--run-id", run.run_id, "--out", str(run.out), *more]


def test_plan_defaults_to_the_best_checkpoint_its_ema_and_both_formats(run):
    plan = plan_export(run.run_dir)
    export = run.run_dir / "export"
    assert plan["checkpoint"] == str(run.run_dir / "checkpoints" / "step_000002.pt")
    assert (plan["formats"], plan["use_ema"], plan["out_dir"]) == (["onnx", "torchscript"], True, str(export))
    assert plan["files"] == {"onnx": str(export / "step_000002-ema.onnx"),
                             "torchscript": str(export / "step_000002-ema.pt"),
                             "card": str(export / "step_000002-ema.json")}
    assert plan["sample_seed"] == run.gallery_seed + GALLERY_NOISE_OFFSET
    latest = plan_export(run.run_dir, "step_4", "torchscript", weights="raw")
    assert latest["files"]["torchscript"].endswith("step_000004-raw.pt") and not latest["use_ema"]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"checkpoint": "step_99"}, CheckpointError, r"checkpoint '99' not found: .* \(steps saved: 2, 4\)"),
    ({"formats": "onnx,tflite"}, ConfigError, "tflite is not an export format"),
    ({"out_dir": "CHECKPOINTS"}, ConfigError, "holds a run's checkpoints"),
])
def test_plan_refuses_mistakes_with_one_line(run, kwargs, error, message):
    if kwargs.get("out_dir") == "CHECKPOINTS":
        kwargs = {"out_dir": run.run_dir / "checkpoints"}
    with pytest.raises(error, match=message) as info:
        plan_export(run.run_dir, **kwargs)
    assert "\n" not in str(info.value)


def test_command_line_mistakes_are_one_line_and_exit_2(run, capsys, tmp_path, monkeypatch):
    assert main(["--run-id", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run at") and err.count("\n") == 1
    assert main(_args(run, "--checkpoint", "step_7")) == 2
    assert "checkpoint '7' not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert main(_args(run, "--format", "onnx")) == 2
    err = capsys.readouterr().err
    assert "pip install onnx onnxruntime" in err and err.count("\n") == 1
    assert main(_args(run, "--format", "torchscript", "--dry-run")) == 0  # TorchScript needs neither
    capsys.readouterr()
    with pytest.raises(RunError):
        plan_export(tmp_path / "nope")


def test_dry_run_prints_the_plan_and_writes_nothing(run, capsys):
    assert main(_args(run, "--checkpoint", "latest", "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan == json.loads(json.dumps(plan_export(run.run_dir, "latest")))
    assert not (run.run_dir / "export").exists()


def test_export_then_generate_from_the_files(run, prefect_harness, capsys, tmp_path):
    out_dir = tmp_path / "models"
    assert main(_args(run, "--out-dir", str(out_dir))) == 0
    assert capsys.readouterr().out.startswith("done: ")
    assert sorted(p.name for p in out_dir.iterdir()) == ["step_000002-ema.json", "step_000002-ema.onnx",
                                                       "step_000002-ema.pt"]
    card = json.loads((out_dir / "step_000002-ema.json").read_text())
    assert (card["scores"], card["num_classes"]) == ({"fd": 1.0}, 10)
    # Exported files are never replaced without --overwrite.
    assert main(_args(run, "--out-dir", str(out_dir))) == 2
    assert "exists; add --overwrite" in capsys.readouterr().err
    assert main(_args(run, "--out-dir", str(out_dir), "--format", "onnx", "--overwrite")) == 0

    # The same default images from the checkpoint and from either file (the card's seed is the run's).
    assert generate_main(_args(run, "--checkpoint", "2", "-n", "20", "--dest", str(tmp_path / "ckpt.npz"))) == 0
    reference = np.load(tmp_path / "ckpt.npz")
    for suffix in ("onnx", "pt"):
        dest = tmp_path / f"{suffix}.npz"
        assert generate_main(["--model-file", str(out_dir / f"step_000002-ema.{suffix}"), "-n", "20",
                              "--dest", str(dest)]) == 0
        images = np.load(dest)
        assert np.abs(images["images"].astype(int) - reference["images"].astype(int)).max() <= 1
        assert (images["labels"] == reference["labels"]).all() and int(images["seed"]) == int(reference["seed"])


def test_generate_from_a_file_checks_its_arguments(run, capsys, tmp_path):
    assert generate_main(["--model-file", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        generate_main(["-n", "3"])
    assert info.value.code == 2 and "give --run-id" in capsys.readouterr().err
    checkpoint = run.run_dir / "checkpoints" / "step_000004.pt"
    assert generate_main(["--model-file", str(checkpoint), "--dry-run"]) == 2
    assert "not a TorchScript file" in capsys.readouterr().err


def test_generate_plan_for_a_file(run, tmp_path):
    assert main(_args(run, "--out-dir", str(tmp_path), "--format", "torchscript", "--checkpoint", "4",
                      "--dry-run")) == 0
    from ganlib.export import export_generator

    record = export_generator(run.run_dir / "checkpoints" / "step_000004.pt", tmp_path, ["torchscript"],
                              sample_seed=5)
    model_file = record["files"]["torchscript"]
    plan = plan_file_generation(model_file, per_class=2)
    assert (plan["num_samples"], plan["seed"]) == (20, 5)
    assert plan["dest"] == str(tmp_path / "generated" / "step_000004-ema-seed5-n20.npz")
    with pytest.raises(ConfigError, match="npz files only"):
        plan_file_generation(model_file, fmt="png")
