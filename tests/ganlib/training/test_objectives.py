"""Losses, regularisers, EMA, D steps, spectral norm and the non-finite-loss rollback."""

import pandas as pd
import pytest
import torch
from torch import nn

import ganlib.training.loop as train_mod
import ganlib.training.step as step_mod
from ganlib.config import ModelConfig
from ganlib.data.store import prepare_dataset
from ganlib.errors import TrainingDiverged
from ganlib.models import build_models
from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint
from ganlib.sampling import load_generator
from ganlib.training import losses
from ganlib.training.loop import train
from ganlib.training.step import Objective, ema_beta, train_step, update_ema


def test_loss_values_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert losses.d_loss_hinge(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert losses.d_loss_wasserstein(real, fake).item() == pytest.approx(-0.75 - 1.25)
    assert losses.g_loss_critic(fake).item() == pytest.approx(0.75)
    assert losses.d_loss_least_squares(real, fake).item() == pytest.approx(0.5 * (1 + 0.25) / 2 + 0.5 * (4 + 0.25) / 2)
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(losses.d_loss_nonsaturating(big, -big)) and torch.isfinite(losses.g_loss_nonsaturating(-big))


def test_penalties_on_a_linear_critic():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0]]))  # unit-norm gradient everywhere
    d = lambda x, y=None: lin(x).view(-1)  # noqa: E731
    x = torch.randn(8, 1, 2, 2)
    assert losses.gradient_penalty(d, x, torch.randn(8, 1, 2, 2)).item() == pytest.approx(0.0, abs=1e-10)
    x.requires_grad_(True)
    assert losses.r1_penalty(d(x), x).item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan-gp", "ls"])
def test_each_loss_trains_d_on_an_easy_case(loss):
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="dcgan", ngf=8, ndf=8), 1, 28)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real, z = torch.ones(32, 1, 28, 28), torch.randn(32, 100)
    d_loss_fn, _ = losses.OBJECTIVES[loss]
    with torch.no_grad():
        fake = g(z)
        before = d_loss_fn(d(real), d(fake)).item()
    for _ in range(3):
        out = train_step(g, d, opt_g, opt_d, real, z, Objective(loss=loss, r1=1.0 if loss == "ns" else 0.0))
        assert torch.isfinite(out).all()
    with torch.no_grad():
        assert d_loss_fn(d(real), d(fake)).item() < before


@pytest.mark.parametrize("name,size,conditional,r1", [("mlp", 28, False, 0.0), ("mlp", 28, True, 1.0),
                                                       ("resnet", 32, False, 1.0)])
def test_scoring_real_and_fake_in_one_pass_trains_like_two_passes(name, size, conditional, r1):
    """For a D without batch statistics the joint pass is the same function: three steps (with the
    augmentation, and R1's gradient through the joint pass) land on the same weights and scalars."""
    cfg = ModelConfig(name=name, ngf=4, ndf=4, hidden_dim=16, conditional=conditional)
    results = []
    for joint in (False, True):
        torch.manual_seed(0)
        g, d = build_models(cfg, 1, size, 10 if conditional else 0)
        opt_g, opt_d = torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3)
        objective = Objective(r1=r1, diffaug=("translation", "cutout"), joint_d=joint)
        noise, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        for step in range(3):
            real = torch.rand(8, 1, size, size, generator=data) * 2 - 1
            z, y = torch.randn(8, 100, generator=data), torch.randint(0, 10, (8,), generator=data)
            out = train_step(g, d, opt_g, opt_d, real, z, objective, step, noise=noise, y=y if conditional else None)
        results.append((out, [p.detach().clone() for p in [*g.parameters(), *d.parameters()]]))
    (out_a, params_a), (out_b, params_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    # Adam divides by sqrt(v): a weight whose gradients are near zero moves by up to lr per step on a
    # difference of rounding alone (the two passes sum in another order). Seen: 9.6e-5 on 0.5% of the
    # resnet's weights on an AVX2 CPU; a wrong joint pass moves most weights by about lr (1e-3) per step.
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=3e-4)


def test_only_discriminators_without_batch_norm_score_real_and_fake_jointly():
    from ganlib.config import build_config

    assert Objective.from_config(build_config({"model": {"name": "mlp"}})).joint_d
    assert Objective.from_config(build_config({"model": {"name": "resnet"}, "data": {"image_size": 32}})).joint_d
    assert not Objective.from_config(build_config({"model": {"name": "dcgan"}})).joint_d


def test_ema_ramp_and_update():
    assert ema_beta(0.999, 0) == pytest.approx(0.1) and ema_beta(0.999, 10**6) == 0.999
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = 0.75 * a.weight.detach() + 0.25 * b.weight.detach()
    update_ema(a, b, 0.75)
    assert torch.allclose(a.weight, expected)


def test_d_steps_consume_that_many_batches(tiny):
    cfg = tiny(run_id="dsteps", train__d_steps=2, train__steps=3, train__checkpoint_every=3)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000003.pt")
    assert state["data"] == {"epoch": 0, "position": 6}  # 400 images / 32 = 12 batches per epoch


@pytest.mark.parametrize("overrides", [
    {"train__loss": "wgan-gp", "train__d_steps": 2},
    {"train__loss": "hinge", "train__r1": 1.0, "train__r1_every": 4, "model__spectral_norm": True},
    {"train__diffaug": "translation,cutout,color"},
    {"train__channels_last": "on", "train__fused_optimizer": "on", "train__d_steps": 2},
    {"train__channels_last": "on", "train__fused_optimizer": "off", "train__loss": "wgan-gp", "train__r1": 1.0},
])
def test_resume_stays_bit_exact_with_every_option(tiny, overrides):
    whole = tiny(run_id="whole", **overrides)
    store = prepare_dataset(whole.data, whole.out)
    train(whole, store)
    train(tiny(run_id="part", **{**overrides, "train__steps": 6}), store)
    train(tiny(run_id="part", **overrides), store)
    a = load_checkpoint(whole.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(whole.out / "part" / "checkpoints" / "step_000012.pt")
    for key in ("generator", "generator_ema", "discriminator"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key


def test_linear_lr_decay_follows_its_schedule_and_resumes_bit_exact(tiny):
    from ganlib.training.step import lr_factor

    t = tiny(train__lr_decay="linear", train__lr_decay_start=0.5).train
    assert [lr_factor(t, s, 12) for s in (0, 5, 6, 9, 11)] == [1.0, 1.0, 1.0, 0.5, pytest.approx(1 / 6)]
    assert lr_factor(tiny().train, 11, 12) == 1.0  # 'none'
    settings = {"train__lr_decay": "linear", "train__lr_decay_start": 0.25, "train__log_every": 2}
    whole = tiny(run_id="whole", **settings)
    store = prepare_dataset(whole.data, whole.out)
    train(whole, store)
    calls = iter(range(100))
    train(tiny(run_id="part", **settings), store, should_stop=lambda: next(calls) == 5)  # asked each step: stops at 6
    assert max(step for step, _ in list_checkpoints(whole.out / "part" / "checkpoints")) == 6
    train(tiny(run_id="part", **settings), store)
    a = load_checkpoint(whole.run_dir / "checkpoints" / "step_000012.pt")
    b = load_checkpoint(whole.out / "part" / "checkpoints" / "step_000012.pt")
    for key in ("generator", "generator_ema", "discriminator"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    # The rates the last update used: 2e-4 x (12 - 11) / (12 - 3).
    assert a["opt_g"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 9)


def test_ema_generator_is_saved_and_used_by_default(tiny):
    cfg = tiny(run_id="ema")
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    path = cfg.run_dir / "checkpoints" / "step_000012.pt"
    ema, meta = load_generator(path)
    raw, meta_raw = load_generator(path, use_ema=False)
    assert (meta["weights"], meta_raw["weights"]) == ("ema", "raw")
    z = torch.randn(4, 100)
    assert not torch.equal(ema(z), raw(z))


def test_separate_learning_rates(tiny):
    cfg = tiny(run_id="lrs", train__lr_g=1e-4, train__lr_d=4e-4, train__steps=1, train__checkpoint_every=1)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000001.pt")
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-4 and state["opt_d"]["param_groups"][0]["lr"] == 4e-4


def test_spectral_norm_bounds_d_weights():
    torch.manual_seed(0)
    _, d = build_models(ModelConfig(name="dcgan", ngf=8, ndf=8, spectral_norm=True), 1, 28)
    for _ in range(20):  # power iterations converge in train mode
        d(torch.randn(4, 1, 28, 28))
    conv = d.net[0]
    sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)


def _nan_after(calls: int, always: bool = False):
    """A non-saturating D loss that turns NaN from its ``calls``-th call on (or only then)."""
    count = {"n": 0}

    def d_loss(real_logits, fake_logits):
        count["n"] += 1
        value = losses.d_loss_nonsaturating(real_logits, fake_logits)
        if count["n"] == calls or (always and count["n"] >= calls):
            return value * float("nan")
        return value

    return d_loss


def test_non_finite_loss_rolls_back_with_lower_rates_and_continues(tiny, monkeypatch):
    monkeypatch.setitem(step_mod.OBJECTIVES, "ns", (_nan_after(9), losses.g_loss_nonsaturating))
    cfg = tiny(run_id="nan")
    result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    assert result.final_step == 12
    health = pd.read_parquet(cfg.run_dir / "metrics" / "health.parquet")
    assert health[["step", "event", "action"]].values.tolist() == [[9, "non-finite-loss", "rollback"]]
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_000012.pt")
    assert (state["health"]["rollbacks"], state["health"]["lr_scale"]) == (1, 0.5)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")["step"].tolist() == list(range(1, 13))


def test_persistent_non_finite_loss_fails_after_k_rollbacks(tiny, monkeypatch):
    monkeypatch.setitem(step_mod.OBJECTIVES, "ns", (_nan_after(9, always=True), losses.g_loss_nonsaturating))
    cfg = tiny(run_id="diverge", train__max_rollbacks=2)
    message = r"training diverged: non-finite d_loss.* at step \d+, still after 2 rollbacks"
    with pytest.raises(TrainingDiverged, match=message):
        train(cfg, prepare_dataset(cfg.data, cfg.out))
    health = pd.read_parquet(cfg.run_dir / "metrics" / "health.parquet")
    assert health["action"].tolist() == ["rollback", "rollback", "fail"]


def test_diffaug_keeps_shapes_and_range_and_is_seeded():
    from ganlib.training.augment import diff_augment

    x = torch.rand(6, 3, 32, 32) * 2 - 1
    a = diff_augment(x, ("color", "translation", "cutout"), torch.Generator().manual_seed(1))
    b = diff_augment(x, ("color", "translation", "cutout"), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    shifted = diff_augment(x, ("translation",), torch.Generator().manual_seed(2))
    assert ((shifted == -1).flatten(1).any(1) | (shifted == x).flatten(1).all(1)).all()  # filled with black
    cut = diff_augment(x, ("cutout",), torch.Generator().manual_seed(3))
    assert ((cut == 0).flatten(1).float().mean(1) > 0.05).all()  # a half-size square (clipped at edges)


@pytest.mark.parametrize("channels_last", [False, True])
def test_translation_is_a_black_filled_shift_and_passes_gradients_back(channels_last):
    """Against the slicing definition, image by image: out[i, :, r, c] = x[i, :, r + dy, c + dx]
    where that lies inside the image, else -1; the gradient is the shift's adjoint."""
    from ganlib.training.augment import translation

    x = torch.rand(40, 3, 16, 12) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = translation(x, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)  # the same draws as translation makes
    dy = torch.randint(-2, 3, (40, 1, 1), generator=gen).flatten().tolist()  # int(16 * 0.125 + 0.5) = 2
    dx = torch.randint(-2, 3, (40, 1, 1), generator=gen).flatten().tolist()  # int(12 * 0.125 + 0.5) = 2
    assert len({(a, b) for a, b in zip(dy, dx)}) > 10  # the draws cover many shifts
    expected = -torch.ones_like(x)
    for i, (a, b) in enumerate(zip(dy, dx)):
        rows, cols = slice(max(0, -a), 16 - max(0, a)), slice(max(0, -b), 12 - max(0, b))
        src_rows, src_cols = slice(max(0, a), 16 - max(0, -a)), slice(max(0, b), 12 - max(0, -b))
        expected[i, :, rows, cols] = x[i, :, src_rows, src_cols]
    assert torch.equal(out, expected)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("name,size", [("mlp", 28), ("dcgan", 28), ("dcgan", 64), ("resnet", 32), ("resnet", 64)])
def test_conditional_models_use_the_label(name, size):
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name=name, ngf=8, ndf=8, hidden_dim=16, conditional=True), 1, size, 10)
    g.eval()
    z = torch.randn(1, 100).repeat(2, 1)
    x = g(z, torch.tensor([3, 7]))
    assert x.shape == (2, 1, size, size) and not torch.equal(x[0], x[1])
    assert d(x, torch.tensor([3, 7])).shape == (2,)


@pytest.mark.slow
def test_conditional_generator_learns_to_follow_the_label():
    """Two classes anyone can tell apart (a bright top half vs a bright bottom half): after a short
    training, G asked for class 0 must draw class 0 and asked for 1 draw 1, for most latents.
    (The mlp preset: the DCGAN learns the label far more slowly, see bench/RESULTS.md.)"""
    name = "mlp"
    torch.manual_seed(0)
    n, size = 512, 28
    y_all = torch.arange(n) % 2
    x_all = -torch.ones(n, 1, size, size)
    x_all[y_all == 0, :, : size // 2] = 1.0
    x_all[y_all == 1, :, size // 2:] = 1.0
    x_all += 0.1 * torch.randn_like(x_all)
    g, d = build_models(ModelConfig(name=name, ngf=8, ndf=8, hidden_dim=32, conditional=True), 1, size, 2)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    for step in range(600):
        idx = torch.randint(0, n, (64,))
        train_step(g, d, opt_g, opt_d, x_all[idx].clamp(-1, 1), torch.randn(64, 100), Objective(), step, y=y_all[idx])
    g.eval()
    with torch.no_grad():
        z = torch.randn(200, 100)
        asked = torch.arange(200) % 2
        x = g(z, asked)
    top_brighter = x[:, :, : size // 2].mean(dim=(1, 2, 3)) > x[:, :, size // 2:].mean(dim=(1, 2, 3))
    accuracy = (top_brighter == (asked == 0)).float().mean().item()
    assert accuracy > 0.9, f"{name}: only {accuracy:.0%} of samples follow the label asked for"


def test_conditional_needs_labels():
    from ganlib.errors import ConfigError

    with pytest.raises(ConfigError, match="model.conditional: needs a labelled dataset"):
        build_models(ModelConfig(conditional=True), 1, 28, 0)


def test_resnet_refuses_28_px():
    from ganlib.errors import ConfigError

    expected = r"data.image_size: resnet makes 32, 64, 128, 256 px images, not 28; use --image-size 32"
    with pytest.raises(ConfigError, match=expected):
        build_models(ModelConfig(name="resnet"), 1, 28)


def test_conditional_training_runs_and_resumes(tiny):
    cfg = tiny(run_id="cond", model__conditional=True)
    store = prepare_dataset(cfg.data, cfg.out)
    result = train(cfg, store)
    assert result.final_step == 12
    g, meta = load_generator(cfg.run_dir / "checkpoints" / "step_000012.pt")
    assert g(torch.randn(2, 100), torch.tensor([0, 9])).shape == (2, 1, 28, 28)


def test_resnet_trains_at_32(tiny):
    cfg = tiny(run_id="res", model__name="resnet", model__ngf=4, model__ndf=4, data__image_size=32,
               train__steps=2, train__checkpoint_every=2)
    assert train(cfg, prepare_dataset(cfg.data, cfg.out)).final_step == 2


REAL_STEP = train_mod.train_step


def _collapse_after(step_count: int):
    real_step = REAL_STEP

    def step(generator, *args, **kwargs):
        out = real_step(generator, *args, **kwargs)
        step.calls += 1
        if step.calls > step_count:  # from then on G outputs a constant image
            out = out.clone()
            out[4] = 0.0
        return out

    step.calls = 0
    return step


def test_mode_collapse_is_detected_and_can_stop_the_run(tiny, monkeypatch):
    monkeypatch.setattr(train_mod, "train_step", _collapse_after(4))
    cfg = tiny(run_id="collapse", train__health_window=2)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    events = pd.read_parquet(cfg.run_dir / "metrics" / "health.parquet")
    assert events["event"].tolist() == ["mode-collapse"] and events["step"].item() == 10  # flushes at 6 and 10
    assert "sample spread 0.0000" in events["detail"].item()

    from ganlib.errors import HealthStop

    monkeypatch.setattr(train_mod, "train_step", _collapse_after(4))
    stop = tiny(run_id="collapse-stop", train__health_window=2, train__stop_on_health=True)
    with pytest.raises(HealthStop, match="training stopped at step 10: mode-collapse"):
        train(stop, prepare_dataset(stop.data, stop.out))


def test_discriminator_saturation_is_detected(tiny, monkeypatch):
    real_step = train_mod.train_step

    def saturated(*args, **kwargs):
        out = real_step(*args, **kwargs).clone()
        out[2], out[3] = 0.999, 0.001
        return out

    monkeypatch.setattr(train_mod, "train_step", saturated)
    cfg = tiny(run_id="sat", train__health_window=2)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    events = pd.read_parquet(cfg.run_dir / "metrics" / "health.parquet")
    assert events["event"].tolist() == ["d-saturation"] and events["step"].item() == 6  # flushes at 4 and 6


def test_the_relativistic_loss_depends_only_on_the_difference_and_r1_r2_match_separate_gradients():
    from ganlib.training.losses import OBJECTIVES, real_fake_penalties

    d_loss, g_loss = OBJECTIVES["rpgan"]
    r, f = torch.randn(8), torch.randn(8)
    assert torch.allclose(d_loss(r + 5, f + 5), d_loss(r, f)) and torch.allclose(g_loss(f + 5, r + 5), g_loss(f, r))
    assert torch.allclose(d_loss(r, f), torch.nn.functional.softplus(f - r).mean())

    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.randn(4, 3, 2, 2, requires_grad=True), torch.randn(4, 3, 2, 2, requires_grad=True)
    rl, fl = d(real).view(-1), d(fake).view(-1)
    r1, r2 = real_fake_penalties(rl, fl, real, fake)
    (g_real,) = torch.autograd.grad(d(real).sum(), real)
    (g_fake,) = torch.autograd.grad(d(fake).sum(), fake)
    assert torch.allclose(r1, g_real.flatten(1).pow(2).sum(1).mean())
    assert torch.allclose(r2, g_fake.flatten(1).pow(2).sum(1).mean())
    assert real_fake_penalties(rl, fl, None, fake)[0] == 0


def test_under_bf16_r1_and_r2_both_differentiate_at_fp32_inputs(monkeypatch):
    """G's fakes come out of autocast in bf16: R2's gradient and its squared sum over C*H*W were then bf16
    while R1's (a real batch) were fp32. Both are taken at fp32 inputs now."""
    seen = []

    def recording(real_logits, fake_logits, real, fake):
        seen.append((real.dtype, fake.dtype))
        return losses.real_fake_penalties(real_logits, fake_logits, real, fake)

    monkeypatch.setattr(step_mod, "real_fake_penalties", recording)
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="r3gan", ngf=8, ndf=8, blocks=1), 3, 32)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    objective = Objective(loss="rpgan", r1=1.0, r2=1.0, bf16=True, joint_d=True)
    scalars = train_step(g, d, opt_g, opt_d, torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 100), objective, 0)
    assert seen == [(torch.float32, torch.float32)] and torch.isfinite(scalars).all()


class _TableGenerator(nn.Module):
    """G whose i-th fake is its i-th weight row, whatever z: which fakes G learned from is visible."""

    def __init__(self, n: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(0)))

    def forward(self, z, y=None):
        return self.table


class _LinearCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0, -1.0, 0.5]))

    def forward(self, x, y=None):
        return x.flatten(1) @ self.w


@pytest.mark.parametrize("g_keep,kept", [(1.0, 8), (0.5, 4), (0.3, 2), (0.01, 1)])
def test_top_k_training_updates_g_from_the_fakes_d_scores_highest(g_keep, kept):
    """Top-k (Sinha et al. 2020): G's update follows only its top fraction of fakes by D's score; the rest
    get no gradient (so, on Adam's first step, their rows of the table do not move)."""
    g, d = _TableGenerator(8), _LinearCritic()
    before = g.table.detach().clone()
    scores = d(before).detach()  # D does not move: its learning rate is 0
    opt_g, opt_d = torch.optim.Adam(g.parameters(), lr=1e-2), torch.optim.Adam(d.parameters(), lr=0.0)
    train_step(g, d, opt_g, opt_d, torch.rand(8, 1, 2, 2), torch.randn(8, 100), Objective(loss="ns"), g_keep=g_keep)
    moved = (g.table.detach() != before).flatten(1).any(dim=1)
    assert moved.sum().item() == kept
    assert set(moved.nonzero().flatten().tolist()) == set(scores.topk(kept).indices.tolist())


def test_top_k_fraction_falls_per_epoch_to_its_floor():
    assert step_mod.top_k_fraction(0.5, 0.99, 0.0) == 1.0
    assert step_mod.top_k_fraction(0.5, 0.99, 10.0) == pytest.approx(0.99**10)
    assert step_mod.top_k_fraction(0.5, 0.99, 1000.0) == 0.5
    assert step_mod.top_k_fraction(1.0, 0.99, 1000.0) == 1.0  # off


def test_the_loop_gives_the_step_its_top_k_fraction_by_epoch(tiny, monkeypatch):
    """400 images in batches of 32: epoch = 0.08 per step; the fraction falls by half per epoch to 0.5."""
    kept = []

    def step(*args, **kwargs):
        kept.append(args[-1])  # g_keep, the last positional argument
        return REAL_STEP(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    cfg = tiny(run_id="topk", train__top_k=0.5, train__top_k_decay=0.5)
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    assert kept == [max(0.5, 0.5 ** (s * 32 / 400)) for s in range(12)] and kept[0] == 1.0 and kept[-1] < 0.6
