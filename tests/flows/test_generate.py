"""flows/generate.py: planning (fast, no Prefect), the command line's errors, and the flow itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flows.generate import DEFAULT_NUM_SAMPLES, main, plan_generation
from ganlib.config import build_config
from ganlib.data.store import prepare_dataset
from ganlib.errors import CheckpointError, ConfigError, RunError
from ganlib.rendering.gallery import GALLERY_NOISE_OFFSET
from ganlib.sampling import fixed_noise, generate, load_generator, to_uint8
from ganlib.training.loop import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run whose evaluation table marks step 6 best (no classifier needed)."""
    cfg = build_config({
        "run_id": "gen", "out": str(tmp_path_factory.mktemp("generate") / "out"), "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400}, "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
        "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 4},
        "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100, "ssl_steps": 10},
        "gallery": {"num_samples": 50},
    }).resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    pd.DataFrame({"step": [6, 12], "checkpoint": ["step_000006.pt", "step_000012.pt"], "fd": [1.0, 2.0],
                  "best": [True, False]}).to_parquet(cfg.run_dir / "metrics" / "eval.parquet")
    return cfg


def test_plan_defaults_to_the_best_checkpoint_and_the_gallery_seed(run):
    plan = plan_generation(run.run_dir)
    seed = run.seed + GALLERY_NOISE_OFFSET
    assert plan["checkpoint"] == str(run.run_dir / "checkpoints" / "step_000006.pt")
    assert DEFAULT_NUM_SAMPLES == 10_000  # as in the tutorial
    assert (plan["num_samples"], plan["seed"], plan["fmt"]) == (10_000, seed, "npz")
    assert plan["dest"] == str(run.run_dir / "generated" / f"step_000006-seed{seed}-n10000.npz")
    assert (plan["device"], plan["batch_size"], plan["class_names"]) == ("cpu", 100, [str(k) for k in range(10)])
    png = plan_generation(run.run_dir, checkpoint="latest", fmt="png", seed=3, num_samples=5)
    assert png["dest"] == str(run.run_dir / "generated" / "step_000012-seed3-n5")


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"checkpoint": "99"}, CheckpointError, r"checkpoint '99' not found: .* \(steps saved: 6, 12\)"),
    ({"fmt": "jpg"}, ConfigError, "format: 'npz' or 'png'"),
    ({"num_samples": 0}, ConfigError, "at least 1"),
    ({"batch_size": 0}, ConfigError, r"--batch-size: must be at least 1 \(got 0\)"),
    ({"per_class": 5}, ConfigError, "not class-conditional"),
    ({"truncation": 0.0}, ConfigError, r"--truncation: 0 is not a cut-off; give standard deviations above 0"),
    ({"truncation": float("nan")}, ConfigError, r"--truncation: nan is not a cut-off"),
    ({"device": "gpu"}, ConfigError, r"--device: 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    pytest.param({"device": "cuda"}, ConfigError, "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
])
def test_plan_refuses_mistakes_with_one_line(run, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        plan_generation(run.run_dir, **kwargs)
    assert "\n" not in str(info.value)


def test_plan_refuses_a_missing_run(tmp_path):
    with pytest.raises(RunError, match="no run at"):
        plan_generation(tmp_path / "nope")


def test_a_corrupt_evaluation_table_is_one_line_that_says_what_to_do(run, capsys, tmp_path):
    import shutil

    copy = tmp_path / "out" / run.run_id
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    table = copy / "metrics" / "eval.parquet"
    table.write_bytes(table.read_bytes()[:60])  # truncated by a full disk or a copy
    assert main(["--run-id", run.run_id, "--out", str(copy.parent), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: {table} is unreadable (not a whole parquet file: corrupt or "
                                       "truncated); score the run again with flows/evaluate.py --run-id "
                                       f"{run.run_id}, or name a checkpoint (--checkpoint latest or a step)\n")
    assert plan_generation(copy, checkpoint="latest")["checkpoint"].endswith("step_000012.pt")  # naming one works


def test_command_line_errors_fail_fast_without_prefect(run, capsys, tmp_path):
    assert main(["--run-id", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run at") and err.count("\n") == 1
    assert main(["--run-id", run.run_id, "--out", str(run.out), "--checkpoint", "nine"]) == 2
    assert "checkpoint 'nine' not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-id", "x", "--format", "gif"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_writes_nothing(run, capsys):
    assert main(["--run-id", run.run_id, "--out", str(run.out), "-n", "7", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan == json.loads(json.dumps(plan_generation(run.run_dir, num_samples=7)))
    assert plan["num_samples"] == 7 and not (run.run_dir / "generated").exists()
    assert main(["--run-id", run.run_id, "--out", str(run.out), "--batch-size", "3", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 3  # default: the run's eval.batch_size


def test_truncated_samples_say_so_in_their_name_and_file_and_are_the_same_images_drawn_in(run, capsys, tmp_path):
    from ganlib.rendering.gallery import export_samples

    assert main(["--run-id", run.run_id, "--out", str(run.out), "-n", "20", "--truncation", "0.7", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["truncation"] == 0.7 and plan["dest"].endswith(f"-seed{plan['seed']}-n20-trunc0.7.npz")
    del plan["dest"]
    record = export_samples(plan.pop("checkpoint"), tmp_path / "t.npz", **plan)
    assert record["truncation"] == 0.7
    generator, _ = load_generator(run.run_dir / "checkpoints" / "step_000006.pt")
    z = fixed_noise(20, 100, plan["seed"])
    with np.load(tmp_path / "t.npz") as npz:
        assert float(npz["truncation"]) == 0.7
        from ganlib.sampling import truncate
        assert np.array_equal(npz["images"], to_uint8(generate(generator, truncate(z, 0.7), 100)).numpy())
        assert not np.array_equal(npz["images"], to_uint8(generate(generator, z, 100)).numpy())
    png = export_samples(run.run_dir / "checkpoints" / "step_000006.pt", tmp_path / "p", 3, 5, fmt="png",
                         truncation=1.5)
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["truncation"] == 1.5 == png["truncation"]


@pytest.mark.slow
def test_generate_flow_writes_npz_and_png_with_the_seed(run, prefect_harness, tmp_path):
    from flows.generate import generate_samples

    record = generate_samples(str(run.run_dir), num_samples=40)
    assert record["checkpoint"] == "step_000006.pt" and record["seed"] == run.seed + GALLERY_NOISE_OFFSET
    with np.load(record["path"]) as npz:
        images, seed, step = npz["images"], int(npz["seed"]), int(npz["step"])
    assert images.shape == (40, 1, 28, 28) and images.dtype == np.uint8 and step == 6
    generator, _ = load_generator(run.run_dir / "checkpoints" / "step_000006.pt")
    assert np.array_equal(images, to_uint8(generate(generator, fixed_noise(40, 100, seed), 100)).numpy())

    folder = tmp_path / "pngs"
    png = generate_samples(str(run.run_dir), checkpoint="12", num_samples=7, fmt="png", seed=11, dest=str(folder))
    assert png["path"] == str(folder) and png["step"] == 12
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["seed"], meta["checkpoint"], meta["files"]) == (11, "step_000012.pt", 7)
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:06d}.png" for i in range(7)]
    assert Image.open(folder / "000003.png").size == (28, 28)


def test_dest_never_destroys_a_checkpoint_or_an_existing_file(run, tmp_path):
    """Issue #22: --dest <run>/checkpoints/step_000006.pt turned a checkpoint into an npz, with exit 0."""
    checkpoint = run.run_dir / "checkpoints" / "step_000006.pt"
    before = checkpoint.read_bytes()
    for dest in (checkpoint, run.run_dir / "checkpoints" / "samples.npz"):
        with pytest.raises(ConfigError, match=r"^--dest: .* is among a run's checkpoints; samples are never"):
            plan_generation(run.run_dir, dest=dest, overwrite=True)
    existing = tmp_path / "mine.npz"
    existing.write_bytes(b"precious")
    with pytest.raises(ConfigError, match=r"^--dest: .*mine.npz exists; add --overwrite to replace it"):
        plan_generation(run.run_dir, dest=existing)
    assert plan_generation(run.run_dir, dest=existing, overwrite=True)["dest"] == str(existing)
    assert existing.read_bytes() == b"precious" and checkpoint.read_bytes() == before


def test_dest_that_is_a_directory_gets_the_default_name_inside(run, tmp_path):
    seed = run.seed + GALLERY_NOISE_OFFSET
    plan = plan_generation(run.run_dir, dest=tmp_path, num_samples=7)
    assert plan["dest"] == str(tmp_path / f"step_000006-seed{seed}-n7.npz")
    png = plan_generation(run.run_dir, dest=tmp_path, num_samples=7, fmt="png")
    assert png["dest"] == str(tmp_path / f"step_000006-seed{seed}-n7")
