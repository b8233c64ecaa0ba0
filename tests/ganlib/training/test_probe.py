"""train.precision auto: chosen by measuring the run's own step, without disturbing the run, and kept on resume."""

from __future__ import annotations

import json

import pytest
import torch

from ganlib.data.store import prepare_dataset
from ganlib.runs.checkpoint import load_checkpoint
from ganlib.training import probe, train


def _config_precision(cfg) -> str:
    return json.loads((cfg.run_dir / "config.json").read_text())["train"]["precision"]


def test_a_cpu_without_native_bf16_takes_fp32_without_probing(tiny, monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed"))
    cfg = tiny().resolved()
    choice, why = probe.choose_precision(cfg, torch.zeros(32, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
    assert choice == "fp32" and "no native bf16" in why


@pytest.mark.parametrize(("speedup", "expected"), [(1e9, "fp32"), (0.0, "bf16")])
def test_the_probe_picks_by_the_measured_ratio_and_says_so(tiny, monkeypatch, speedup, expected):
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(probe, "SPEEDUP", speedup)
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    cfg = tiny().resolved()
    choice, why = probe.choose_precision(cfg, torch.zeros(32, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
    assert choice == expected and "fp32" in why and "ms" in why and "x as fast" in why


def test_a_probed_run_trains_exactly_as_the_precision_given_by_hand(tiny, monkeypatch):
    """The probe trains throwaway copies inside fork_rng: the run's weights, data order and noise are untouched."""
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(probe, "SPEEDUP", 1e9)  # always fp32, after really probing both
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    auto = tiny(run_id="auto", train__precision="auto").resolved()
    assert auto.train.precision == "auto"
    store = prepare_dataset(auto.data, auto.out)
    train(auto, store)
    fixed = tiny(run_id="fixed", train__precision="fp32").resolved()
    train(fixed, store)
    a = load_checkpoint(auto.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(fixed.run_dir / "checkpoints" / "step_000012.pt")
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert _config_precision(auto) == "fp32" and a["config"]["train"]["precision"] == "fp32"


def test_a_resumed_run_keeps_its_choice_without_probing(tiny, monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(probe, "SPEEDUP", 0.0)  # bf16
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    first = tiny(train__steps=6, train__precision="auto").resolved()
    store = prepare_dataset(first.data, first.out)
    train(first, store)
    assert _config_precision(first) == "bf16"
    monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed again"))
    result = train(tiny(train__precision="auto").resolved(), store)
    assert result.resumed_from_step == 6 and _config_precision(first) == "bf16"
