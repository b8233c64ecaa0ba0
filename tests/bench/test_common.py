"""bench/: the pydantic-free model stand-in, the FLOP count, the timed step, and the scripts' smoke runs."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import common
from ganlib.config import build_config

REPO = Path(__file__).resolve().parents[2]


def bench_module(name: str, *argv: str) -> subprocess.CompletedProcess:
    """``python -m bench.<name> ARGV`` from the repository root, as docs/benchmarks.md runs it."""
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *argv], cwd=REPO, capture_output=True, text=True)


def test_model_spec_has_model_configs_fields_and_the_mlp_presets_defaults():
    spec = {f.name: f.default for f in dataclasses.fields(common.ModelSpec)}
    assert spec == build_config({"model": {"name": "mlp"}}).resolved().model.model_dump()


def test_benchmarks_import_without_pydantic_or_prefect():
    """The GPU machines have torch but neither pydantic nor prefect."""
    code = ("import sys; sys.modules['pydantic'] = sys.modules['prefect'] = None; "
            "import bench.common, bench.scaling, bench.throughput, bench.ab_step, bench.openmp_spin")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_flops_per_image_grows_with_the_model_not_the_batch():
    torch.manual_seed(0)
    bench = common.make_step(common.ModelSpec(name="dcgan", ngf=8, ndf=8), np.zeros((8, 1, 28, 28), np.uint8), 4,
                             torch.device("cpu"))
    before = {k: v.clone() for k, v in bench.generator.state_dict().items()}
    per_image = common.train_step_flops_per_image(bench.generator, bench.discriminator, (1, 28, 28), 100, batch=2)
    assert per_image == common.train_step_flops_per_image(bench.generator, bench.discriminator, (1, 28, 28), 100,
                                                          batch=4)
    assert all(torch.equal(before[k], v) for k, v in bench.generator.state_dict().items())  # counted on copies
    wide = common.make_step(common.ModelSpec(name="dcgan", ngf=16, ndf=16), np.zeros((8, 1, 28, 28), np.uint8), 4,
                            torch.device("cpu"))
    assert common.train_step_flops_per_image(wide.generator, wide.discriminator, (1, 28, 28), 100) > 3 * per_image


def test_streamed_and_resident_steps_match_on_the_cpu(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    spec, cpu = common.ModelSpec(name="dcgan", ngf=8, ndf=8), torch.device("cpu")
    resident = common.make_step(spec, images, 16, cpu, channels_last="on")
    streamed = common.make_step(spec, mapped, 16, cpu, channels_last="on", budget_mb=0)
    assert resident.source.resident and not streamed.source.resident and resident.channels_last
    for _ in range(3):
        assert torch.equal(resident.step(), streamed.step())


@pytest.mark.slow
def test_ab_step_compares_two_checkouts(tmp_path):
    """The A/B script on this checkout against itself: a row per side, and a table. (One batch size: each
    measurement is a process importing torch, about 4 s of a 2-core CI machine.)"""
    done = bench_module("ab_step", "--before", str(REPO), "--steps", "3", "--warmup", "1", "--batch-size", "16",
                        "--hidden-dim", "16", "--rounds", "1", "--csv", str(tmp_path / "ab.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = pd.read_csv(tmp_path / "ab.csv")
    assert sorted(rows["side"]) == ["after", "before"] and rows["joint_d"].all()
    assert (rows["images_per_sec"] > 0).all() and "   16 " in done.stdout


@pytest.mark.slow
def test_openmp_spin_runs_a_setting_alone_and_shared(tmp_path):
    # (not "default": libgomp's long spin with two processes on a busy 2-core CI machine crawls; one setting:
    # each measurement is a process importing torch, and what a setting means is the test below)
    done = bench_module("openmp_spin", "--settings", "500", "--concurrent", "1,2", "--steps", "10",
                        "--hidden-dim", "16", "--batch-size", "8", "--csv", str(tmp_path / "spin.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = pd.read_csv(tmp_path / "spin.csv")
    assert rows["setting"].astype(str).tolist() == ["500", "500"]
    assert rows["processes"].tolist() == [1, 2] and (rows["images_per_sec_all"] > 0).all()
    bad = bench_module("openmp_spin", "--settings", "fast")
    assert bad.returncode == 2 and "'fast' is not passive, default or a number" in bad.stderr
    assert bad.stderr.startswith("usage: python -m bench.openmp_spin ")


def test_openmp_spin_settings_become_the_childrens_environment(monkeypatch):
    from bench.openmp_spin import environment

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's own choice never leaks into a row
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    passive, count, default = environment("passive"), environment("500"), environment("default")
    assert passive["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in passive
    assert count["GOMP_SPINCOUNT"] == "500" and "OMP_WAIT_POLICY" not in count
    assert "OMP_WAIT_POLICY" not in default and "GOMP_SPINCOUNT" not in default


@pytest.mark.slow
def test_scaling_runs_quick_on_the_cpu(tmp_path):
    """(tests/gpu/test_gpu_checks.py runs the GPU checks' own --device cpu --quick.)"""
    done = bench_module("scaling", "--device", "cpu", "--quick", "--csv", str(tmp_path / "rows.csv"),
                        "--plot", str(tmp_path / "plot.png"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "rows.csv").is_file()
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_the_timed_step_can_include_the_default_runs_augmentation_and_ema():
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    spec, cpu = common.ModelSpec(hidden_dim=16), torch.device("cpu")
    bare = common.make_step(spec, images, 16, cpu)
    full = common.make_step(spec, images, 16, cpu, diffaug=("translation",), ema_decay=0.999)
    assert bare.ema is None and bare.objective.diffaug == () and bare.objective.joint_d  # mlp: one D pass
    assert full.objective.diffaug == ("translation",) and full.objective.ema_decay == 0.999
    start = [p.detach().clone() for p in full.ema.parameters()]
    assert not torch.equal(bare.step(), full.step())  # same weights and batch, but augmented
    moved = [p for p, p0 in zip(full.ema.parameters(), start) if not torch.equal(p, p0)]
    assert moved and all(not torch.equal(e, g) for e, g in zip(full.ema.parameters(), full.generator.parameters()))


def test_every_row_starts_with_when_on_what_and_which_code():
    import torch

    from bench.common import stamp

    row = stamp(torch.device("cpu"))
    assert list(row) == ["date", "device", "commit"]
    assert "threads" in row["device"] and row["commit"] and row["date"][:2] == "20"
    assert list(stamp()) == ["date", "commit"]
