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


@pytest.mark.parametrize(("major", "minor", "name", "expected"), [
    (7, 5, "Tesla T4", "fp32"), (7, 0, "Tesla V100-SXM2-16GB", "fp32"),  # bf16 emulated: is_bf16_supported() said yes
    (8, 0, "NVIDIA A100-SXM4-40GB", "bf16"), (9, 0, "NVIDIA H200", "bf16"),
])
def test_a_gpu_takes_bf16_only_with_bf16_units(tiny, monkeypatch, major, minor, name, expected):
    from types import SimpleNamespace

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a T4 too
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(major=major, minor=minor, name=name))
    choice, why = probe.choose_precision(tiny().resolved(), torch.zeros(2, 1, 28, 28), torch.device("cuda"))
    assert choice == expected and why.startswith(f"{name} (compute capability {major}.{minor}) has ")


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


# --- train.channels_last auto and train.threads: the same probe, one setting at a time ---------------------


def test_the_mlp_takes_nchw_without_probing(tiny, monkeypatch):
    monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed"))
    cfg = tiny(model__name="mlp").resolved()
    assert probe.choose_channels_last(cfg, torch.zeros(4, 1, 28, 28), torch.device("cpu"))[0] == "off"


@pytest.mark.parametrize(("speedup", "expected"), [(1e9, "on"), (0.0, "off")])
def test_the_layout_probe_keeps_nhwc_unless_nchw_is_clearly_faster(tiny, monkeypatch, speedup, expected):
    monkeypatch.setattr(probe, "LAYOUT_SPEEDUP", speedup)
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    cfg = tiny(train__channels_last="auto").resolved()
    choice, why = probe.choose_channels_last(cfg, torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
    assert choice == expected and "on " in why and "off " in why and "x as fast" in why


@pytest.mark.parametrize(("speedup", "expected"), [(1e9, 2), (0.0, 1)])
def test_the_thread_probe_halves_the_threads_only_where_that_is_clearly_faster(tiny, monkeypatch, speedup, expected):
    monkeypatch.setattr(probe, "THREADS_SPEEDUP", speedup)
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    cfg = tiny(train__threads=None).resolved()
    with probe.threads(2):
        choice, why = probe.choose_threads(cfg, torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
        assert torch.get_num_threads() == 2  # the probe put it back
    assert choice == expected and "2 threads" in why


def _all_auto(tiny, **overrides):
    return tiny(train__precision="auto", train__channels_last="auto", train__threads=None, **overrides).resolved()


def test_every_setting_is_decided_saved_applied_while_training_and_torchs_count_restored(tiny, monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    for name, value in (("SPEEDUP", 1e9), ("LAYOUT_SPEEDUP", 0.0), ("THREADS_SPEEDUP", 0.0), ("PROBE_SECONDS", 0.0)):
        monkeypatch.setattr(probe, name, value)  # fp32, NCHW, half the threads: each after a real probe
    seen: list[int] = []
    cfg = _all_auto(tiny)
    store = prepare_dataset(cfg.data, cfg.out)
    with probe.threads(2):
        train(cfg, store, on_progress=lambda row: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2
    saved = json.loads((cfg.run_dir / "config.json").read_text())["train"]
    assert (saved["precision"], saved["channels_last"], saved["threads"]) == ("fp32", "off", 1)
    assert seen and set(seen) == {1}


def test_a_run_with_every_setting_probed_trains_exactly_as_with_them_given_by_hand(tiny, monkeypatch):
    """The probes train throwaway copies inside fork_rng: the run's weights, data order and noise are untouched."""
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    for name, value in (("SPEEDUP", 1e9), ("LAYOUT_SPEEDUP", 1e9), ("THREADS_SPEEDUP", 1e9), ("PROBE_SECONDS", 0.0)):
        monkeypatch.setattr(probe, name, value)  # the usual choice of each, after really probing
    with probe.threads(2):
        auto = _all_auto(tiny, run_id="auto")
        store = prepare_dataset(auto.data, auto.out)
        train(auto, store)
        fixed = tiny(run_id="fixed", train__precision="fp32", train__channels_last="on", train__threads=2).resolved()
        train(fixed, store)
    a = load_checkpoint(auto.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(fixed.run_dir / "checkpoints" / "step_000012.pt")
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert a["config"]["train"]["threads"] == 2 and a["config"]["train"]["channels_last"] == "on"


def test_a_resumed_run_keeps_every_choice_without_probing(tiny, monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    for name in ("SPEEDUP", "LAYOUT_SPEEDUP", "THREADS_SPEEDUP", "PROBE_SECONDS"):
        monkeypatch.setattr(probe, name, 0.0)  # bf16, NCHW, half the threads
    with probe.threads(2):
        first = _all_auto(tiny, train__steps=6)
        store = prepare_dataset(first.data, first.out)
        train(first, store)
        monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed again"))
        result = train(_all_auto(tiny), store)
    saved = load_checkpoint(first.run_dir / "checkpoints" / "step_000012.pt")["config"]["train"]
    assert result.resumed_from_step == 6
    assert (saved["precision"], saved["channels_last"], saved["threads"]) == ("bf16", "off", 1)


def test_data_parallel_ranks_do_not_probe(tiny, monkeypatch):
    monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed"))
    cfg, lines = probe.measured_settings(_all_auto(tiny), None, lambda: pytest.fail("a batch made"),
                                        torch.device("cpu"), 2)
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.threads) == ("fp32", "on", None)
    assert all("data-parallel" in line for line in lines) and len(lines) == 2


@pytest.mark.parametrize(("major", "expected"), [(7, "fp32"), (9, "bf16")])
def test_data_parallel_ranks_on_gpus_take_bf16_only_with_bf16_units(tiny, monkeypatch, major, expected):
    from types import SimpleNamespace

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(major=major, minor=0, name="a GPU"))
    monkeypatch.setattr(probe, "use_channels_last", lambda *a: True)
    cfg, _ = probe.measured_settings(_all_auto(tiny), None, lambda: pytest.fail("a batch made"),
                                     torch.device("cuda"), 2)
    assert cfg.train.precision == expected


@pytest.mark.parametrize(("model", "timed"), [("dcgan", 4), ("mlp", 3)])
def test_each_configuration_is_timed_once_across_the_settings(tiny, monkeypatch, model, timed):
    """The layout probe's NHWC is the precision probe's winner, the thread probe's all-threads the layout's."""
    monkeypatch.setattr(probe, "cpu_has_native_bf16", lambda: True)
    keys: list[tuple] = []

    def seconds(cfg, real, device):
        t = cfg.train
        keys.append((t.precision, probe.use_channels_last(t.channels_last, cfg.model.name, device), t.threads))
        return 0.01, 2  # equal everywhere: every setting keeps its usual value

    monkeypatch.setattr(probe, "_seconds_per_step", seconds)
    batches: list[int] = []
    with probe.threads(2):
        cfg, lines = probe.measured_settings(_all_auto(tiny, model__name=model), None,
                                             lambda: batches.append(1) or torch.zeros(8, 1, 28, 28),
                                             torch.device("cpu"))
    assert len(keys) == timed == len(set(keys)) and batches == [1]
    assert (cfg.train.precision, cfg.train.threads) == ("fp32", 2) and len(lines) == 3


def test_nothing_is_probed_or_copied_where_every_setting_is_given(tiny, monkeypatch):
    monkeypatch.setattr(probe, "_seconds_per_step", lambda *a: pytest.fail("probed"))
    cfg = tiny().resolved()
    assert probe.measured_settings(cfg, None, lambda: pytest.fail("a batch made"), torch.device("cpu")) == (cfg, [])


def test_a_slow_step_is_timed_once_after_one_warm_up_and_keeps_every_thread(tiny, monkeypatch):
    """Seconds a step (a conv model at 128 px on a CPU): one warm-up and one timed step per configuration, and
    fewer threads are not tried (each would cost seconds more; the time is in large operations)."""
    monkeypatch.setattr(probe, "SLOW_STEP_SECONDS", 0.0)  # every step counts as slow
    steps: list[int] = []
    step = probe.train_step
    monkeypatch.setattr(probe, "train_step", lambda *a, **k: steps.append(a[7]) or step(*a, **k))
    cfg = tiny(train__threads=None, train__channels_last="auto", model__name="dcgan").resolved()
    real = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    with probe.threads(2):
        timings: probe.Timings = {}
        layout, why_layout = probe.choose_channels_last(cfg, real, torch.device("cpu"), timings)
        threads, why_threads = probe.choose_threads(probe._with_train(cfg, channels_last=layout), real,
                                                    torch.device("cpu"), timings)
    assert steps == [0, 1, 0, 1]  # two configurations (NHWC, NCHW), two steps each; no 1-thread configuration
    assert "(1 step)," in why_layout and threads == 2
    assert why_threads.startswith("a step of the run takes ") and "so fewer threads were not timed" in why_threads
