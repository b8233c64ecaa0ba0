"""The GPU checks (tests/gpu/gpu_checks.py): bf16, channels-last, fused Adam and torch.compile train
like fp32. On CUDA the real settings; on the CPU its quick mode, which checks the script itself.

Both run it as the GPU machines do, with neither pydantic nor prefect importable (those machines
have torch but not them).
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GPU_CHECKS = REPO / "tests" / "gpu" / "gpu_checks.py"


def run_checks(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    """``gpu_checks.py ARGV`` in a fresh process from the repository root (its first ``sys.path``
    entry, so ``bench`` and ganlib import from this checkout), with pydantic and prefect blocked."""
    code = ("import runpy, sys; sys.modules['pydantic'] = sys.modules['prefect'] = None; "
            f"sys.argv = {[str(GPU_CHECKS), *argv]!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_quick_checks_pass_on_the_cpu(tmp_path):
    done = run_checks("--device", "cpu", "--quick", "--csv", str(tmp_path / "rows.csv"), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "PASS:" in done.stdout and "skipped bf16+cl+fused+compile: compile is checked on CUDA only" in done.stdout
    rows = pd.read_csv(tmp_path / "rows.csv")
    numerics = rows[rows["kind"] == "numerics"]
    assert len(numerics) > 0 and numerics["ok"].all()
    assert set(numerics["variant"]) == {"fp32+cl+fused", "bf16", "bf16+cl+fused"}
    assert (rows.loc[rows["kind"] == "speed", "images_per_sec"] > 0).all()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_channels_last_fused_and_compile_train_like_fp32_on_cuda(tmp_path):
    done = run_checks("--device", "cuda", "--csv", str(tmp_path / "rows.csv"), timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    rows = pd.read_csv(tmp_path / "rows.csv")
    numerics = rows[rows["kind"] == "numerics"]
    assert "bf16+cl+fused+compile" in set(numerics["variant"]) and numerics["ok"].all()
