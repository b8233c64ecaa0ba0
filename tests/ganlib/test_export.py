"""ganlib/export.py: TorchScript and ONNX files that match the checkpoint's generator and load without ganlib."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from ganlib.config import build_config
from ganlib.data.store import prepare_dataset
from ganlib.errors import CheckpointError, ConfigError
from ganlib.export import (
    checkpoint_argument,
    config_hash,
    export_generator,
    load_exported,
    parse_formats,
    sample_exported,
)
from ganlib.rendering.gallery import export_samples
from ganlib.sampling import fixed_noise, load_generator
from ganlib.training.loop import train

pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime")


def _tiny_run(out, run_id: str, conditional: bool):
    cfg = build_config({
        "run_id": run_id, "out": str(out), "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400},
        "model": {"name": "dcgan", "ngf": 8, "ndf": 8, "conditional": conditional},
        "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 2, "log_every": 2},
    }).resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs (unconditional, conditional), each exported once in both formats."""
    out = tmp_path_factory.mktemp("export") / "out"
    made = {}
    for conditional in (False, True):
        cfg = _tiny_run(out, f"cond{int(conditional)}", conditional)
        pd.DataFrame({"step": [2, 4, 4], "checkpoint": ["step_000002.pt", "step_000004.pt", "step_000004.pt"],
                      "generator": ["ema", "raw", "ema"], "fd": [3.0, 2.5, 2.0], "is_mean": [1.5, 1.6, float("nan")],
                      "best": [False, False, True]}).to_parquet(cfg.run_dir / "metrics" / "eval.parquet")
        checkpoint = cfg.run_dir / "checkpoints" / "step_000004.pt"
        record = export_generator(checkpoint, cfg.run_dir / "export", sample_seed=11)
        made[conditional] = (cfg, checkpoint, record)
    return made


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_and_torchscript_match_torch_on_fixed_noise(runs, conditional, batch):
    _, checkpoint, record = runs[conditional]
    generator, _ = load_generator(checkpoint)
    z = fixed_noise(batch, 100, seed=3)
    labels = torch.arange(batch) % 10 if conditional else None
    with torch.no_grad():
        expected = generator(z) if labels is None else generator(z, labels)
    for fmt in ("onnx", "torchscript"):
        images = load_exported(record["files"][fmt])(z, labels)
        assert images.shape == (batch, 1, 28, 28) and images.dtype == torch.float32
        torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-4)


def test_conditional_export_uses_the_labels(runs):
    _, _, record = runs[True]
    generator = load_exported(record["files"]["onnx"])
    z = fixed_noise(2, 100, seed=3)
    assert not torch.allclose(generator(z, torch.tensor([0, 0])), generator(z, torch.tensor([1, 1])))


def test_the_model_card_says_what_the_generator_is(runs):
    cfg, checkpoint, record = runs[True]
    card = json.loads(open(record["files"]["card"]).read())
    assert card == {k: v for k, v in record.items() if k != "files"}
    assert (card["noise_dim"], card["conditional"], card["num_classes"]) == (100, True, 10)
    assert card["class_names"] == [str(k) for k in range(10)]
    assert (card["image_shape"], card["value_range"]) == ([1, 28, 28], [-1.0, 1.0])
    assert (card["checkpoint"], card["step"], card["weights"], card["sample_seed"]) == ("step_000004.pt", 4, "ema", 11)
    assert card["scores"] == {"fd": 2.0, "is_mean": None}  # the EMA row of this checkpoint; NaN as null
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    assert card["config_sha256"] == config_hash(torch.load(checkpoint, weights_only=True)["config"])
    assert card["run_id"] == saved["run_id"] == "cond1"
    # The card travels inside both files too.
    assert load_exported(record["files"]["torchscript"]).card == card == load_exported(record["files"]["onnx"]).card


def test_a_corrupt_evaluation_table_leaves_the_card_without_scores_and_says_why(runs, tmp_path, caplog):
    from ganlib.export import checkpoint_scores

    cfg, _, _ = runs[False]
    copy = tmp_path / "run"
    (copy / "metrics").mkdir(parents=True)
    table = copy / "metrics" / "eval.parquet"
    table.write_bytes((cfg.run_dir / "metrics" / "eval.parquet").read_bytes()[:50])
    with caplog.at_level("WARNING", logger="ganlib"):
        assert checkpoint_scores(copy, "step_000004.pt", "ema") == {}
    assert f"{table} is unreadable (not a whole parquet file: corrupt or truncated); the model card has no scores" \
        in caplog.text


def test_torchscript_samples_in_a_fresh_interpreter_without_ganlib(runs, tmp_path):
    _, checkpoint, record = runs[True]
    code = (
        "import sys, torch\n"
        f"G = torch.jit.load({record['files']['torchscript']!r})\n"
        "z = torch.randn(5, 100, generator=torch.Generator().manual_seed(3))\n"
        "images = G(z, torch.arange(5) % 10)\n"
        "assert 'ganlib' not in sys.modules, 'ganlib was imported'\n"
        f"torch.save(images, {str(tmp_path / 'images.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        expected = generator(fixed_noise(5, 100, 3), torch.arange(5) % 10)
    torch.testing.assert_close(torch.load(tmp_path / "images.pt"), expected, atol=1e-6, rtol=1e-5)


def test_samples_from_an_exported_file_match_the_checkpoints(runs, tmp_path):
    _, checkpoint, record = runs[True]
    export_samples(checkpoint, tmp_path / "ckpt.npz", 12, seed=11, batch_size=5)
    sample_exported(record["files"]["onnx"], tmp_path / "onnx.npz", 12, seed=11, batch_size=5)
    a, b = np.load(tmp_path / "ckpt.npz"), np.load(tmp_path / "onnx.npz")
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1  # one uint8 rounding step
    assert (a["labels"] == b["labels"]).all() and int(b["seed"]) == 11 and int(b["step"]) == 4
    # Truncated, likewise (flows/generate.py --truncation, from a run or from a file).
    export_samples(checkpoint, tmp_path / "ckpt-t.npz", 12, seed=11, batch_size=5, truncation=0.8)
    record_t = sample_exported(record["files"]["onnx"], tmp_path / "onnx-t.npz", 12, seed=11, batch_size=5,
                               truncation=0.8)
    a, b = np.load(tmp_path / "ckpt-t.npz"), np.load(tmp_path / "onnx-t.npz")
    assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
    untruncated = np.load(tmp_path / "onnx.npz")
    assert float(b["truncation"]) == 0.8 == record_t["truncation"] and "truncation" not in untruncated
    assert not np.array_equal(b["images"], untruncated["images"])


def test_existing_files_are_kept_unless_overwrite(runs):
    cfg, checkpoint, record = runs[False]
    before = open(record["files"]["onnx"], "rb").read()
    with pytest.raises(ConfigError, match="exists; add --overwrite") as info:
        export_generator(checkpoint, cfg.run_dir / "export", formats=["onnx"])
    assert "\n" not in str(info.value)
    assert open(record["files"]["onnx"], "rb").read() == before
    again = export_generator(checkpoint, cfg.run_dir / "export", formats="torchscript", overwrite=True)
    assert set(again["files"]) == {"torchscript", "card"}


def test_raw_weights_are_exported_on_request(runs, tmp_path):
    _, checkpoint, _ = runs[False]
    record = export_generator(checkpoint, tmp_path, formats=["torchscript"], use_ema=False)
    assert record["weights"] == "raw" and record["files"]["torchscript"].endswith("step_000004-raw.pt")
    assert record["scores"] == {"fd": 2.5, "is_mean": 1.6}


def test_arguments_are_checked_with_one_line(runs, tmp_path, monkeypatch):
    assert parse_formats("onnx, torchscript") == ["onnx", "torchscript"]
    assert parse_formats(["torchscript"]) == ["torchscript"]
    with pytest.raises(ConfigError, match="gif is not an export format; give one or both of onnx,torchscript"):
        parse_formats("onnx,gif")
    assert (checkpoint_argument("step_2000"), checkpoint_argument("best"), checkpoint_argument("12")) == (
        "2000", "best", "12")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install onnx onnxruntime"):
        export_generator(runs[False][1], tmp_path, formats=["onnx"])
    with pytest.raises(CheckpointError, match="not found"):
        load_exported(tmp_path / "nope.onnx")
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        load_exported(runs[False][1])  # a checkpoint is not an exported generator


@pytest.mark.slow  # trains each preset for 2 steps
@pytest.mark.parametrize(("preset", "size"), [("mlp", 28), ("resnet", 32), ("r3gan", 32)])
def test_every_preset_exports_and_matches(tmp_path, preset, size):
    cfg = build_config({
        "run_id": preset, "out": str(tmp_path / "out"), "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400, "image_size": size},
        "model": {"name": preset, "ngf": 8, "ndf": 8, "hidden_dim": 16, "conditional": True},
        "train": {"steps": 2, "batch_size": 16, "checkpoint_every": 2, "log_every": 2},
    }).resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    checkpoint = cfg.run_dir / "checkpoints" / "step_000002.pt"
    record = export_generator(checkpoint, tmp_path / "export")
    generator, _ = load_generator(checkpoint)
    z, labels = fixed_noise(5, 100, seed=3), torch.arange(5) % 10
    with torch.no_grad():
        expected = generator(z, labels)
    for fmt in ("onnx", "torchscript"):
        torch.testing.assert_close(load_exported(record["files"][fmt])(z, labels), expected, atol=1e-5, rtol=1e-4)
