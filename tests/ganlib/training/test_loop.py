import logging

import pandas as pd
import pytest
import torch

from ganlib.config import ModelConfig
from ganlib.data.loader import BatchOrder
from ganlib.data.store import prepare_dataset
from ganlib.errors import CheckpointError, ConfigError, DeviceMemoryError
from ganlib.models import build_models
from ganlib.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ganlib.sampling import load_generator
from ganlib.training.health import METRIC_COLUMNS
from ganlib.training.loop import train
from ganlib.training.losses import d_loss_nonsaturating
from ganlib.training.step import adam_implementation, train_step, use_channels_last


def test_one_step_lowers_the_discriminator_loss_on_an_easy_case():
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="dcgan", ngf=8, ndf=8), 1, 28)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real = torch.ones(32, 1, 28, 28)  # constant white images: trivially told apart from G's output
    z = torch.randn(32, 100)
    with torch.no_grad():
        fake = g(z)
        before = d_loss_nonsaturating(d(real), d(fake)).item()
    scalars = train_step(g, d, opt_g, opt_d, real, z)
    with torch.no_grad():
        after = d_loss_nonsaturating(d(real), d(fake)).item()
    assert after < before
    assert scalars.shape == (len(METRIC_COLUMNS),) and torch.isfinite(scalars).all()
    assert abs(scalars[0].item() - before) < 1e-4  # the reported d_loss is the one before the update


def test_g_step_does_not_leave_gradients_on_d():
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="mlp", hidden_dim=16), 1, 28)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    train_step(g, d, opt_g, opt_d, torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 100))
    assert all(p.requires_grad for p in d.parameters())
    w_before = [p.clone() for p in d.parameters()]
    opt_d.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in d.parameters())
    assert all(torch.equal(a, b) for a, b in zip(w_before, d.parameters()))


def test_batch_order_is_a_permutation_per_epoch_and_resumable():
    order = BatchOrder(10, 3, seed=1, device=torch.device("cpu"))
    epoch0 = torch.cat([order.next() for _ in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 full batches, the 10th image dropped this epoch
    state = order.state_dict()
    nxt = [order.next() for _ in range(4)]
    again = BatchOrder(10, 3, seed=1, device=torch.device("cpu"))
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next()) for a in nxt)


def test_batch_larger_than_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.batch_size: 64 is larger than the dataset"):
        BatchOrder(10, 64, seed=0, device=torch.device("cpu"))


def test_train_writes_checkpoints_and_one_metrics_row_per_step(tiny):
    cfg = tiny()
    store = prepare_dataset(cfg.data, cfg.out)
    result = train(cfg, store)
    assert result.final_step == 12 and result.resumed_from_step == 0
    assert [s for s, _ in list_checkpoints(cfg.run_dir / "checkpoints")] == [6, 12]
    table = pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")
    assert table["step"].tolist() == list(range(1, 13))
    assert {"d_loss", "g_loss", "d_real", "d_fake", "images_per_sec", "epoch"} <= set(table.columns)
    assert (cfg.run_dir / "config.json").is_file() and (cfg.run_dir / "data" / "manifest.json").is_file()
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000012.pt")
    assert {"generator", "discriminator", "opt_g", "opt_d", "rng", "data", "config", "step"} <= set(state)


def test_resume_continues_from_k_and_matches_an_uninterrupted_run(tiny):
    whole = tiny(run_id="whole")
    store = prepare_dataset(whole.data, whole.out)
    train(whole, store)

    part = tiny(run_id="part", train__steps=6)  # "killed" after 6 steps ...
    train(part, store)
    resumed = train(tiny(run_id="part"), store)  # ... and run again with the same run id
    assert resumed.resumed_from_step == 6 and resumed.final_step == 12

    a = load_checkpoint(whole.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(part.run_dir / "checkpoints" / "step_000012.pt")
    for key in ("generator", "discriminator"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    ta = pd.read_parquet(whole.run_dir / "metrics" / "train.parquet").drop(columns="images_per_sec")
    tb = pd.read_parquet(part.run_dir / "metrics" / "train.parquet").drop(columns="images_per_sec")
    pd.testing.assert_frame_equal(ta, tb)


def test_resume_after_a_crash_between_checkpoints_redoes_steps_exactly_once(tiny):
    cfg = tiny(run_id="crash")
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    # Simulate a crash after the step-12 metrics were written but before its checkpoint landed.
    (cfg.run_dir / "checkpoints" / "step_000012.pt").unlink()
    (cfg.run_dir / "checkpoints" / "step_000012.pt.sha256").unlink()
    result = train(cfg, store)
    assert result.resumed_from_step == 6
    assert pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")["step"].tolist() == list(range(1, 13))


def test_resume_with_a_different_model_is_refused_naming_the_field(tiny):
    cfg = tiny(run_id="r")
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    with pytest.raises(CheckpointError, match=r"model.ngf: 8 -> 16"):
        train(tiny(run_id="r", model__ngf=16), store)
    with pytest.raises(CheckpointError, match=r"train.mirror: False -> True"):  # the order would change
        train(tiny(run_id="r", train__mirror=True), store)


def test_stop_request_checkpoints_and_returns(tiny):
    cfg = tiny(run_id="stop")
    store = prepare_dataset(cfg.data, cfg.out)
    result = train(cfg, store, should_stop=lambda: True)
    assert result.stopped_early and result.final_step == 1  # served after the first step, not at a flush
    assert latest_checkpoint(cfg.run_dir / "checkpoints")[1]["step"] == 1


def test_load_generator_gives_an_eval_mode_generator(tiny):
    cfg = tiny(run_id="gen")
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    g, meta = load_generator(cfg.run_dir / "checkpoints" / "step_000012.pt")
    assert not g.training and meta["step"] == 12 and meta["image_shape"] == [1, 28, 28]
    assert g(torch.randn(3, 100)).shape == (3, 1, 28, 28)


def test_time_budget_stops_with_a_checkpoint_at_the_step_it_is_spent(tiny):
    """Served at the step, not at the next flush (log_every 4 here): steps of seconds (128 px on a CPU) overran a
    one-minute budget by 50 steps."""
    cfg = tiny(run_id="budget", train__max_minutes=1e-9)
    records = []
    result = train(cfg, prepare_dataset(cfg.data, cfg.out), on_progress=records.append)
    assert result.stopped_early and result.final_step == 1
    assert records[-1]["eta_s"] == 0.0 and records[-1]["step"] == 1  # the budget, not the steps left, ends it
    assert latest_checkpoint(cfg.run_dir / "checkpoints")[1]["step"] == 1
    assert train(tiny(run_id="budget"), prepare_dataset(cfg.data, cfg.out)).final_step == 12  # and resumes


def test_slow_steps_say_how_far_training_is_between_flushes(tiny, monkeypatch, caplog):
    import ganlib.training.loop as loop

    monkeypatch.setattr(loop, "HEARTBEAT_S", 0.0)  # as if every step took longer than the heartbeat
    cfg = tiny(run_id="slow", train__steps=7, train__log_every=4, train__checkpoint_every=6)
    with caplog.at_level(logging.INFO, logger="ganlib"):
        train(cfg, prepare_dataset(cfg.data, cfg.out))
    said = [r.getMessage().split(": ")[0] + " / " + r.getMessage().split("; ")[-1] for r in caplog.records
            if " s a step; losses at step " in r.getMessage()]
    # flushes at steps 4 (log_every), 6 (checkpoint) and 7 (the last); a line after every other step
    assert said == ["step 1/7 / losses at step 4", "step 2/7 / losses at step 4", "step 3/7 / losses at step 4",
                    "step 5/7 / losses at step 6"]


# --- speed options: train.channels_last, train.fused_optimizer ------------------------------------


def test_speed_options_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", "dcgan", cuda) and use_channels_last("auto", "dcgan", cpu)
    assert not use_channels_last("auto", "dcgan", torch.device("mps")) and not use_channels_last("off", "dcgan", cpu)
    assert use_channels_last("on", "resnet", cpu) and not use_channels_last("on", "mlp", cuda)
    assert adam_implementation("auto", cpu) == {"fused": True}  # torch 2.4+ has a fused Adam for the CPU
    assert adam_implementation("off", cuda) == {"foreach": True}
    with pytest.raises(ConfigError, match="train.fused_optimizer: this torch has no fused Adam for meta; use auto"):
        adam_implementation("on", torch.device("meta"))


def test_speed_options_may_change_when_a_run_resumes(tiny):
    """They change rounding, not what is learned: a resume may switch them, both ways."""
    speed = {"train__checkpoint_every": 6}
    first = tiny(run_id="speed", train__steps=6, train__channels_last="off", train__fused_optimizer="off", **speed)
    store = prepare_dataset(first.data, first.out)
    train(first, store)
    train(tiny(run_id="speed", train__steps=12, train__channels_last="on", train__fused_optimizer="on", **speed), store)
    last = tiny(run_id="speed", train__steps=18, train__channels_last="off", train__fused_optimizer="off", **speed)
    assert train(last, store).final_step == 18
    state = load_checkpoint(last.run_dir / "checkpoints" / "step_000012.pt")
    assert state["opt_g"]["param_groups"][0]["fused"] is True
    g, _ = load_generator(last.run_dir / "checkpoints" / "step_000018.pt")
    assert g(torch.randn(2, 100)).shape == (2, 1, 28, 28)


def test_precision_may_change_when_a_run_resumes(tiny):
    """bf16 autocast keeps weights and Adam's state in fp32, so a run can switch either way."""
    speed = {"train__checkpoint_every": 6}
    first = tiny(run_id="precision", train__steps=6, train__precision="fp32", **speed)
    store = prepare_dataset(first.data, first.out)
    train(first, store)
    assert train(tiny(run_id="precision", train__steps=12, train__precision="bf16", **speed), store).final_step == 12
    last = tiny(run_id="precision", train__steps=18, train__precision="fp32", **speed)
    assert train(last, store).final_step == 18
    state = load_checkpoint(last.run_dir / "checkpoints" / "step_000012.pt")
    assert state["config"]["train"]["precision"] == "bf16"
    for part in ("generator", "discriminator"):
        assert all(t.dtype == torch.float32 for t in state[part].values() if t.is_floating_point())
    assert all(v.dtype == torch.float32 for s in state["opt_d"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0)
    losses = pd.read_parquet(last.run_dir / "metrics" / "train.parquet")["d_loss"]
    assert len(losses) == 18 and losses.notna().all() and (losses.abs() < 1e3).all()


def _bf16_against_fp32(bf16: bool, seed: int, images: torch.Tensor, steps: int, model: str) -> torch.Tensor:
    """Per-step scalars of a 28-px model on ``images``' device; bf16 runs with channels-last and fused Adam.
    On the CPU the nets are a quarter of the presets' widths: where the CPU has no native bf16, oneDNN
    emulates it at about a fifth of fp32's speed, and full widths cost minutes for the same check."""
    from ganlib.sampling import to_unit_range
    from ganlib.training.step import Objective

    device = images.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bf16  # fp32: no TF32 either
    torch.manual_seed(seed)
    width = 32 if device.type == "cuda" else 8
    g, d = build_models(ModelConfig(name=model, ngf=width, ndf=width, hidden_dim=16 * width), 1, 28)
    fmt = torch.channels_last if bf16 and model != "mlp" else torch.contiguous_format
    g.to(device, memory_format=fmt)
    d.to(device, memory_format=fmt)
    impl = adam_implementation("on" if bf16 else "off", device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (64,), device=device, generator=gen)
        real = to_unit_range(images[idx].contiguous(memory_format=fmt))
        z = torch.randn(64, 100, device=device, generator=gen)
        rows.append(train_step(g, d, opt_g, opt_d, real, z, Objective(bf16=bf16), step))
    return torch.stack(rows).float().cpu()


@pytest.mark.parametrize(("device", "model"), [
    pytest.param("cuda", "dcgan", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                              reason="needs CUDA")]),
    pytest.param("cpu", "dcgan", marks=pytest.mark.slow),
    ("cpu", "mlp"),
])
def test_bf16_losses_stay_within_tolerance_of_fp32(device, model):
    """GAN training amplifies rounding within tens of steps, so after the first step the runs are
    compared as statistics, against how far a different seed moves them (tests/gpu/gpu_checks.py: more).
    On the CPU bf16 autocast runs on oneDNN (AMX where the CPU has it, emulated otherwise)."""
    from ganlib.data.digits import generate_digits

    images = torch.from_numpy(generate_digits(1024, seed=0)[0]).to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        steps = 150 if device == "cuda" else 80  # the CPU's nets are narrow (see _bf16_against_fp32)
        fp32, bf16, reseeded = (_bf16_against_fp32(b, s, images, steps, model)
                                for b, s in ((False, 0), (True, 0), (False, 1)))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert torch.isfinite(bf16).all()
    assert (bf16[0, :2] - fp32[0, :2]).abs().max() < 0.05  # step 0: same weights and batch, rounding only
    assert not torch.equal(bf16, fp32)  # autocast did run in bf16
    for i, name in enumerate(METRIC_COLUMNS):
        ref, x, other = (float(t[-steps // 4:, i].mean()) for t in (fp32, bf16, reseeded))
        assert abs(x - ref) <= max(3 * abs(other - ref), 0.1 + 0.1 * abs(ref)), (name, x, ref, other)


def test_bf16_on_the_cpu_trains_and_checkpoints_fp32_weights(tiny):
    cfg = tiny(run_id="cpu-bf16", train__precision="bf16")
    assert train(cfg, prepare_dataset(cfg.data, cfg.out)).final_step == 12
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000012.pt")
    assert all(v.dtype == torch.float32 for v in state["generator"].values() if v.is_floating_point())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_bf16_and_the_speed_defaults_checkpoints_for_the_cpu(tiny):
    cfg = tiny(run_id="cuda", device="cuda", train__precision="bf16")
    assert train(cfg, prepare_dataset(cfg.data, cfg.out)).final_step == 12
    path = cfg.run_dir / "checkpoints" / "step_000012.pt"
    assert load_checkpoint(path)["opt_g"]["param_groups"][0]["fused"] is True
    g, _ = load_generator(path, "cpu")
    assert g(torch.randn(2, 100)).shape == (2, 1, 28, 28)


def test_a_stop_request_is_served_at_the_step_it_arrives_in_one_process(tiny):
    """Not at the next flush: a slow model flushes every few minutes, a preemption grants seconds."""
    cfg = tiny(train__steps=40, train__log_every=20, train__checkpoint_every=40).resolved()
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 7  # asked after every step: true from step 7

    result = train(cfg, prepare_dataset(cfg.data, cfg.out), should_stop=should_stop)
    assert result.stopped_early and result.final_step == 7
    assert [p.rsplit("/", 1)[-1] for p in result.checkpoints] == ["step_000007.pt"]


def test_r3gan_with_ada_and_lazy_r1_r2_resumes_bit_identically(tiny):
    """The modern preset's state (ADA's p and its sums, the lazy-penalty phase) survives a resume exactly, with
    the dataset mirrored (--mirror) too."""
    settings = dict(model__name="r3gan", model__ngf=4, model__ndf=4, data__image_size=32, data__channels="rgb",
                    train__ada_kimg=0.5, train__ada_interval=2, train__r1_every=4, train__checkpoint_every=7,
                    train__mirror=True)
    whole = tiny(run_id="whole-r3", **settings).resolved()
    store = prepare_dataset(whole.data, whole.out)
    train(whole, store)
    train(tiny(run_id="part-r3", **{**settings, "train__steps": 7}), store)
    resumed = train(tiny(run_id="part-r3", **settings), store)
    assert resumed.resumed_from_step == 7 and resumed.final_step == 12
    a = load_checkpoint(whole.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(whole.out / "part-r3" / "checkpoints" / "step_000012.pt")
    for key in ("generator", "generator_ema", "discriminator"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    assert all(torch.equal(a["ada"][k], b["ada"][k]) for k in a["ada"]) and a["ada"]["p"] > 0
    ta = pd.read_parquet(whole.run_dir / "metrics" / "train.parquet").drop(columns="images_per_sec")
    tb = pd.read_parquet(whole.out / "part-r3" / "metrics" / "train.parquet").drop(columns="images_per_sec")
    pd.testing.assert_frame_equal(ta, tb)


def test_a_run_resumed_where_its_preset_defaults_differ_keeps_its_own(tiny, monkeypatch):
    """r3gan's widths left to the preset are 16 and one block on a CPU, 64 and two on a GPU: a run started on
    one and resumed where the other's defaults apply goes on at the widths it saved, not refused or rebuilt."""
    settings = dict(model__name="r3gan", model__ngf=None, model__ndf=None, data__image_size=32,
                    data__channels="rgb", train__checkpoint_every=3)
    cfg = tiny(run_id="moved", **settings, train__steps=3)
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    monkeypatch.setattr("ganlib.config.trains_on_gpu", lambda device: True)  # the GPU's defaults from now on
    assert tiny(**settings).resolved().model.ngf == 64
    resumed = train(tiny(run_id="moved", **settings, train__steps=6), store)
    assert resumed.resumed_from_step == 3 and resumed.final_step == 6
    saved = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000006.pt")["config"]["model"]
    assert (saved["ngf"], saved["ndf"], saved["blocks"]) == (16, 16, 1)


def test_a_run_whose_preset_auto_chose_on_a_gpu_resumes_as_that_preset_on_a_cpu(tiny, monkeypatch):
    """'auto' picks r3gan for RGB images on a GPU and dcgan on a CPU: resumed on a CPU, the run stays r3gan at
    the GPU's widths (the checkpoint's weights), rather than being refused as another model."""
    settings = dict(model__name="auto", model__ngf=None, model__ndf=None, data__channels="rgb", train__batch_size=8,
                    train__checkpoint_every=2)
    with monkeypatch.context() as gpu:
        gpu.setattr("ganlib.config.trains_on_gpu", lambda device: True)
        cfg = tiny(run_id="auto-moved", **settings, train__steps=2)
        store = prepare_dataset(cfg.data, cfg.out)
        train(cfg, store)
    assert tiny(**settings).resolved(channels=3).model.name == "dcgan"  # what a CPU run would pick
    resumed = train(tiny(run_id="auto-moved", **settings, train__steps=4), store)
    assert resumed.resumed_from_step == 2 and resumed.final_step == 4
    saved = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000004.pt")["config"]["model"]
    assert (saved["name"], saved["ngf"], saved["blocks"]) == ("r3gan", 64, 2)


@pytest.mark.parametrize("r1", [0.0, 1.0])
def test_compile_trains_with_an_r1_penalty_by_leaving_d_eager(tiny, monkeypatch, caplog, r1):
    """torch.compile's AOTAutograd cannot differentiate twice, which R1/R2 need: D then runs eagerly and
    the log says so; without a penalty both are compiled. (aot_eager: AOTAutograd without a C++ compiler.)"""
    import functools
    import logging

    compiled = []
    real_compile = torch.compile

    def recording_compile(module, **kwargs):
        compiled.append(type(getattr(module, "_orig_mod", module)).__name__)
        return real_compile(module, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", functools.wraps(real_compile)(recording_compile))
    cfg = tiny(train__compile=True, train__r1=r1, train__steps=2, train__checkpoint_every=2)
    with caplog.at_level(logging.INFO, logger="ganlib"):
        result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    assert result.final_step == 2
    assert len(compiled) == (1 if r1 else 2)
    assert ("compile: G only" in caplog.text) == bool(r1)


def _folder(root, n, shade=0):
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n + shade)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"{i:03d}.png")


def test_resuming_after_the_folder_changed_is_refused_or_said(tiny, tmp_path, caplog):
    """The run's data/manifest.json is what it trained on: another count (or size, or classes) cannot go on
    (the weights would not fit, or batches come out empty); the same count with other pixels goes on, said."""
    import logging

    from ganlib.errors import DataError

    folder = tmp_path / "imgs"
    _folder(folder, 40)
    settings = {"run_id": "f", "data__dataset": "folder", "data__data_root": str(folder), "data__image_size": 28,
                "model__name": "mlp", "model__hidden_dim": 16, "model__d_hidden_dim": 16,
                "train__batch_size": 8, "train__steps": 4, "train__checkpoint_every": 4}
    cfg = tiny(**settings)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    _folder(folder, 48)  # 8 more images
    more = tiny(**{**settings, "train__steps": 8})
    with pytest.raises(DataError, match=r"run 'f' trained on 40 images 1x28x28, unlabelled, but its data now "
                                        r"prepares to 48 images .*put the original images back"):
        train(more, prepare_dataset(more.data, more.out))
    for p in sorted(folder.iterdir())[40:]:
        p.unlink()
    _folder(folder, 40, shade=1)  # as many images, other pixels
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        result = train(more, prepare_dataset(more.data, more.out))
    assert result.final_step == 8 and "the prepared images differ from those it trained on" in caplog.text
    _folder(folder, 48)
    from ganlib.evaluation.evaluate import evaluate_run

    with pytest.raises(DataError, match="now prepares to 48 images .* to go on scoring it"):  # scores: other data
        evaluate_run(more, prepare_dataset(more.data, more.out))


def test_an_order_saved_past_an_epochs_end_starts_the_next_epoch():
    order = BatchOrder(10, 5, 0, torch.device("cpu"))
    order.load_state_dict({"epoch": 0, "position": 3})  # 2 batches an epoch: never saved so, but never empty
    assert len(order.next()) == 5 and order.state_dict() == {"epoch": 1, "position": 1}


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.64 GiB of which 1.10 GiB "
    "is free.",
    "MPS backend out of memory (MPS allocated: 17.1 GB, other allocations: 1.2 GB, max allowed: 18.1 GB).",
])
def test_a_gpu_out_of_memory_is_one_line_with_what_to_change_and_keeps_the_checkpoints(tiny, monkeypatch, message):
    """Simulated on the CPU (torch raises these from CUDA's and MPS's allocators): the settings must change, so
    the error says which, in one line, and is not retried; the checkpoint before it is kept and resumes."""
    import ganlib.training.loop as loop

    cfg = tiny(run_id="oom")
    store = prepare_dataset(cfg.data, cfg.out)
    step = loop.train_step

    def runs_out_at_step_8(*args, **kwargs):
        if args[7] == 8:  # the step index
            raise (torch.cuda.OutOfMemoryError if message.startswith("CUDA") else RuntimeError)(message)
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", runs_out_at_step_8)
    with pytest.raises(DeviceMemoryError) as caught:
        train(cfg, store)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("out of memory on cpu")
    assert ("training dcgan on 28-px images in batches of 32: resume with --precision bf16 (where the GPU has bf16), "
            "or start another --run-id with a smaller --batch-size or --ngf/--ndf; the checkpoints saved so far are "
            "kept") in text  # no more GPUs: not on a CPU (nor MPS)
    assert (", asking for 2.00 GiB more," in text) == message.startswith("CUDA")
    assert [s for s, _ in list_checkpoints(cfg.run_dir / "checkpoints")] == [6]
    monkeypatch.setattr(loop, "train_step", step)
    assert train(cfg, store).resumed_from_step == 6


def test_out_of_memory_in_a_bf16_run_does_not_advise_bf16(tiny, monkeypatch):
    import ganlib.training.loop as loop

    cfg = tiny(run_id="oom-bf16", model__name="mlp", train__precision="bf16")
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 1.00 GiB.")))
    with pytest.raises(DeviceMemoryError, match=r"training mlp on 28-px images in batches of 32: start another "
                                                r"--run-id with a smaller --batch-size or "
                                                r"--hidden-dim/--d-hidden-dim; "):
        train(cfg, prepare_dataset(cfg.data, cfg.out))


def test_another_runtime_error_in_training_keeps_its_traceback(tiny, monkeypatch):
    import ganlib.training.loop as loop

    cfg = tiny(run_id="bug")
    bug = RuntimeError("a bug")
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: (_ for _ in ()).throw(bug))
    with pytest.raises(RuntimeError) as caught:
        train(cfg, prepare_dataset(cfg.data, cfg.out))
    assert caught.value is bug and caught.value.__traceback__ is not None  # the error itself, not a one-line copy
