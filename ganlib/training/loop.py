"""Adversarial training: the loop, its step, and resume.

``train()`` owns order and cadence: alternating D and G updates, metric flushes, progress,
checkpoints, resume and stop requests. The maths of one update lives in ``train_step()``, which
the benchmarks import, so what is timed is what trains.

Reproducibility and resume. Everything that decides the rest of a run is either in the
checkpoint or a pure function of it:
- the data order is a permutation derived from (seed, epoch), and the position is a batch index;
- the latent noise comes from a dedicated ``torch.Generator`` whose state is saved;
- G, D, both Adam states and the global RNG states are saved.
On CPU a resumed run therefore continues bit-identically. Per-step scalars stay on the device and
are copied to the host once every ``log_every`` steps (the only sync in the loop).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from ganlib.runs import checkpoint as ckpt
from ganlib.training.augment import diff_augment
from ganlib.data.loader import BatchSource
from ganlib.errors import CheckpointError, ConfigError, HealthStop, TrainingDiverged
from ganlib.runs.files import atomic_path, atomic_write_json, remove_temporary_files
from ganlib.runs.lock import run_lock
from ganlib.training.losses import OBJECTIVES, gradient_penalty, r1_penalty
from ganlib.models import BATCH_INDEPENDENT_DISCRIMINATORS, build_models
from ganlib.runs.paths import RunPaths, resolve_device

if TYPE_CHECKING:
    from ganlib.config import RunConfig, TrainConfig
    from ganlib.training.distributed import DistContext

log = logging.getLogger("ganlib")

METRIC_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake", "fake_std")
SATURATION = 0.99  # D(x) above and D(G(z)) below 1 - this, averaged over a flush: D wins outright
COLLAPSE_FRACTION = 0.1  # sample spread below this fraction of its best so far: G collapsed


@dataclass
class TrainResult:
    """What a finished (or stopped) training leaves; plain values only."""

    run_dir: str
    final_step: int
    total_steps: int
    resumed_from_step: int
    checkpoints: list[str]
    metrics_path: str
    seconds: float
    images_per_sec: float
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchOrder:
    """Which images make each batch: a fresh permutation per epoch, derived from (seed, epoch).

    The state is just (epoch, position), so a resumed run sees exactly the batches the
    uninterrupted run would have seen. The last incomplete batch of an epoch is dropped, keeping
    every batch (and its batch-norm statistics) the same size.

    Data-parallel: with ``world_size`` W processes, ``batch_size`` is the global batch and ``next()``
    returns rank ``rank``'s slice ``[rank*B/W, (rank+1)*B/W)`` of it; the state is the same on all ranks.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        if batch_size > num_items:
            raise ConfigError(
                f"train.batch_size: {batch_size} is larger than the dataset ({num_items} images); "
                f"use --batch-size {num_items} or less")
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size: {batch_size} does not split over {world_size} training "
                              f"processes; use a multiple of {world_size}")
        self.num_items, self.batch_size, self.seed, self.device = num_items, batch_size, seed, device
        self.rank, self.local_size = rank, batch_size // world_size
        self.batches_per_epoch = num_items // batch_size
        self.epoch, self.position = 0, 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=gen).to(self.device)

    def next(self) -> torch.Tensor:
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._perm = self._permutation()
        start = self.position * self.batch_size + self.rank * self.local_size
        self.position += 1
        return self._perm[start: start + self.local_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range of the generator's tanh."""
    return images_uint8.float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class Objective:
    """What one training step optimises: the loss pair, D updates per G update, regularisers, EMA."""

    loss: str = "ns"
    d_steps: int = 1
    gp_weight: float = 10.0
    r1: float = 0.0
    r1_every: int = 1
    ema_decay: float = 0.0
    diffaug: tuple[str, ...] = ()
    bf16: bool = False  # autocast to bfloat16
    joint_d: bool = False  # D scores real and fake in one pass (only for a D without batch statistics)

    @classmethod
    def from_config(cls, cfg: RunConfig, device: torch.device | None = None) -> Objective:
        t = cfg.train
        return cls(loss=t.loss, d_steps=t.d_steps, gp_weight=t.gp_weight, r1=t.r1, r1_every=t.r1_every,
                   ema_decay=t.ema_decay, diffaug=tuple(t.diffaug),
                   bf16=t.precision == "bf16" and (device is None or device.type in ("cuda", "cpu")),
                   joint_d=cfg.model.name in BATCH_INDEPENDENT_DISCRIMINATORS)


def ema_beta(decay: float, step: int) -> float:
    """EMA decay at ``step`` (0-based), ramped up so early averages are not dominated by the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * generator for parameters; buffers (BN statistics) copied."""
    ema_params, params = list(ema.parameters()), list(generator.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), generator.buffers()):
        b_ema.copy_(b)


def train_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    objective: Objective = Objective(),  # noqa: B008 (frozen dataclass)
    step: int = 0,
    ema: nn.Module | None = None,
    noise: torch.Generator | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """``objective.d_steps`` D updates, then one G update. Returns the step's scalars on the device.

    real: (d_steps * N, C, H, W) float in [-1, 1], one batch of N per D update; z: (d_steps * N,
    noise_dim). The G update reuses the last D update's fakes (G has not changed since). ``step``
    (0-based) schedules lazy R1 and the EMA ramp-up; ``noise`` draws the gradient penalty's
    interpolation weights; ``y`` (d_steps * N,) int64 labels of the real images for conditional
    models (the fakes are made for the same labels, so both follow the data's class balance).
    Returns float32 (d_loss, g_loss, D(x), D(G(z))), the D outputs as mean sigmoid of the last D
    update; nothing here synchronises with the host.
    """
    d_loss_fn, g_loss_fn = OBJECTIVES[objective.loss]
    aug = (lambda x: diff_augment(x, objective.diffaug, noise)) if objective.diffaug else (lambda x: x)  # noqa: E731
    amp = (lambda: torch.autocast(real.device.type, dtype=torch.bfloat16)) if objective.bf16 else nullcontext
    ys = y.chunk(objective.d_steps) if y is not None else [None] * objective.d_steps
    for i, (real_i, z_i, y_i) in enumerate(zip(real.chunk(objective.d_steps), z.chunk(objective.d_steps), ys)):
        # Update D on one batch.
        d_index = step * objective.d_steps + i
        use_r1 = objective.r1 > 0 and d_index % objective.r1_every == 0
        if use_r1:
            real_i = real_i.detach().requires_grad_(True)
        with amp():
            fake = generator(z_i, y_i)
            if objective.joint_d:  # one pass over both batches: the same logits, faster (taller matrices)
                both = discriminator(torch.cat([aug(real_i), aug(fake.detach())]),
                                     None if y_i is None else torch.cat([y_i, y_i])).float()
                real_logits, fake_logits = both.chunk(2)
            else:  # separate passes: D's batch norm normalises each batch with its own statistics
                real_logits = discriminator(aug(real_i), y_i).float()
                fake_logits = discriminator(aug(fake.detach()), y_i).float()
        d_loss = d_loss_fn(real_logits, fake_logits)
        d_total = d_loss
        if objective.loss == "wgan-gp" and objective.gp_weight > 0:
            d_total = d_total + objective.gp_weight * gradient_penalty(discriminator, real_i.detach(), fake.detach(),
                                                                       noise, y_i)
        if use_r1:  # lazy R1: every r1_every updates, scaled up to keep the same average strength
            d_total = d_total + (objective.r1 / 2) * objective.r1_every * r1_penalty(real_logits, real_i)
        opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        opt_d.step()

    # Update G against the updated D. D's weight gradients are not needed here, so they are not
    # computed (about a third of the backward pass through D).
    discriminator.requires_grad_(False)
    with amp():
        g_logits = discriminator(aug(fake), y_i).float()
    g_loss = g_loss_fn(g_logits)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    if ema is not None:
        update_ema(ema, generator, ema_beta(objective.ema_decay, step))

    with torch.no_grad():
        # Sample diversity (collapse drives it to 0): the per-pixel standard deviation over the batch,
        # averaged. Written out: std(dim=0) is a strided reduction, 5x slower on the CPU.
        flat = fake.detach().flatten(1).float()
        flat = flat - flat.mean(dim=0)
        spread = flat.square().sum(dim=0).div_(max(len(flat) - 1, 1)).sqrt_().mean()
        return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(real_logits.detach()).mean(),
                            torch.sigmoid(fake_logits).mean(), spread])


def adam_implementation(setting: str, device: torch.device) -> dict[str, bool]:
    """Adam's keyword for ``train.fused_optimizer`` ('auto', 'on', 'off') on ``device``.

    ``{"fused": True}`` where torch has a fused Adam for the device type (CUDA and the CPU in torch
    2.4+), else ``{"foreach": True}``. Both are deterministic, so a CPU resume stays bit-exact.
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        fused_ok = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the (private) list: CUDA always had it
        fused_ok = device.type == "cuda"
    if setting == "on" and not fused_ok:
        raise ConfigError(f"train.fused_optimizer: this torch has no fused Adam for {device.type}; "
                          "use auto or off")
    return {"fused": True} if fused_ok and setting != "off" else {"foreach": True}


def use_channels_last(setting: str, model_name: str, device: torch.device) -> bool:
    """Whether ``train.channels_last`` ('auto', 'on', 'off') puts G, D and the real batches in NHWC.

    Conv models only (the mlp has no image-shaped weights); 'auto' is on for CUDA and the CPU, whose
    convolution kernels (cuDNN, oneDNN) are faster in NHWC.
    """
    return model_name != "mlp" and (setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu")))


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AMX or AVX512-BF16), so bf16 autocast pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def with_adam_kernel(saved: dict[str, Any], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) set to use ``opt``'s kernel (fused or foreach) once loaded.

    ``load_state_dict`` takes every group setting from the saved state, so without this a resumed run
    would keep the kernel of the run that saved it (and fused Adam needs its step counters moved to
    the parameters' device, which loading does only when the groups say fused).
    """
    kernel = {k: opt.defaults[k] for k in ("fused", "foreach") if k in opt.defaults}
    return {**saved, "param_groups": [{**group, **kernel} for group in saved["param_groups"]]}


def lr_factor(t: TrainConfig, step: int, num_steps: int) -> float:
    """The learning-rate multiplier of ``train.lr_decay`` for the update at ``step`` (0-based)."""
    if t.lr_decay == "none":
        return 1.0
    start = t.lr_decay_start * num_steps
    return 1.0 if step < start else max(0.0, (num_steps - step) / (num_steps - start))


def make_optimizers(cfg: RunConfig, generator: nn.Module, discriminator: nn.Module, lr_scale: float = 1.0):
    """Adam for G and D on the device of their parameters (fused or foreach: ``adam_implementation``)."""
    t = cfg.train
    betas = (t.beta1, t.beta2)
    impl = adam_implementation(t.fused_optimizer, next(generator.parameters()).device)
    return (torch.optim.Adam(generator.parameters(), lr=(t.lr_g or t.lr) * lr_scale, betas=betas, **impl),
            torch.optim.Adam(discriminator.parameters(), lr=(t.lr_d or t.lr) * lr_scale, betas=betas, **impl))


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def train(
    cfg: RunConfig,
    store_dir: Path,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train (or resume training) the run ``cfg.run_dir`` on the prepared store ``store_dir``.

    If the run directory holds checkpoints, training continues from the newest valid one; a
    checkpoint whose config differs in anything that changes the run is refused with the
    difference named. ``on_progress`` receives each flushed progress record; ``should_stop`` is
    polled at each flush and, when it returns True, training checkpoints and returns early.

    The run directory is locked for the duration (a second process training the same run id is
    refused). A fresh run seeds Python's, NumPy's and torch's global RNGs from ``cfg.seed``, as a
    training script would; a resumed run restores them from the checkpoint.

    ``dist``: this process's place in a data-parallel run (``ganlib.training.distributed``); rank 0 alone takes
    the lock (unless the launcher holds it for the ranks) and writes.
    """
    cfg = cfg.resolved()
    writer = dist is None or dist.is_writer
    with run_lock(cfg.run_dir) if dist is None or (writer and dist.owns_run_lock) else nullcontext():
        if writer:  # nobody else writes here while the lock is held: temporary files are a killed writer's
            remove_temporary_files(cfg.run_dir)
        health: dict[str, Any] | None = None  # None: take the checkpoint's
        while True:
            try:
                return _train(cfg, Path(store_dir), on_progress, should_stop, health, dist)
            except NonFiniteLoss as err:
                # Roll back: resume from the last checkpoint with lower learning rates.
                health = {"rollbacks": err.health["rollbacks"] + 1,
                          "lr_scale": err.health["lr_scale"] * cfg.train.rollback_lr_factor}
                if writer:
                    _record_health_event(RunPaths(cfg.run_dir), err.step, "non-finite-loss", str(err),
                                         "rollback" if health["rollbacks"] <= cfg.train.max_rollbacks else "fail",
                                         health["lr_scale"])
                if health["rollbacks"] > cfg.train.max_rollbacks:
                    raise TrainingDiverged(
                        f"training diverged: {err} at step {err.step}, still after {cfg.train.max_rollbacks} "
                        f"rollbacks with learning rates down to x{err.health['lr_scale']:g}; lower --lr or "
                        "change the loss or model") from None
                log.warning("%s at step %d: rolling back to the last checkpoint with learning rates x%g "
                            "(rollback %d of at most %d)", err, err.step, health["lr_scale"],
                            health["rollbacks"], cfg.train.max_rollbacks)


class NonFiniteLoss(Exception):
    """Internal: a flushed loss was NaN or infinite (carries the step and the health state)."""

    def __init__(self, message: str, step: int, health: dict[str, Any]):
        super().__init__(message)
        self.step, self.health = step, health


def _record_health_event(paths: RunPaths, step: int, event: str, detail: str, action: str, lr_scale: float) -> None:
    """Append a row to ``metrics/health.parquet`` (step, event, detail, action, lr_scale)."""
    path = paths.metrics / "health.parquet"
    rows = pd.read_parquet(path).to_dict("records") if path.is_file() else []
    rows.append({"step": step, "event": event, "detail": detail, "action": action, "lr_scale": lr_scale,
                 "time": time.time()})
    _write_table(rows, path)


class HealthMonitor:
    """Notices a failing GAN from the flushed per-step scalars, without extra host syncs.

    - ``d-saturation``: mean D(x) > 0.99 and mean D(G(z)) < 0.01 over a flush;
    - ``mode-collapse``: the generated batch's spread (mean per-pixel std) falls below 10% of the
      best seen so far.
    Each is recorded in ``metrics/health.parquet`` once ``window`` consecutive flushes show it (and
    again only after it has cleared). Its counters live in the run's health state, saved with
    every checkpoint, so a resumed run reports exactly what the uninterrupted one would.
    """

    def __init__(self, paths: RunPaths, window: int, stop: bool, health: dict[str, Any], write: bool = True):
        self.paths, self.window, self.stop, self.health, self.write = paths, window, stop, health, write
        health.setdefault("saturated_flushes", 0)
        health.setdefault("collapsed_flushes", 0)
        health.setdefault("best_spread", 0.0)

    def observe(self, step: int, values: list[list[float]]) -> None:
        cols = {name: sum(v[i] for v in values) / len(values) for i, name in enumerate(METRIC_COLUMNS)}
        h = self.health
        h["best_spread"] = max(h["best_spread"], cols["fake_std"])
        saturated = cols["d_real"] > SATURATION and cols["d_fake"] < 1 - SATURATION
        collapsed = cols["fake_std"] < COLLAPSE_FRACTION * h["best_spread"]
        for event, bad, key, evidence in (
            ("d-saturation", saturated, "saturated_flushes",
             f"D(x) {cols['d_real']:.4f}, D(G(z)) {cols['d_fake']:.4f}"),
            ("mode-collapse", collapsed, "collapsed_flushes",
             f"sample spread {cols['fake_std']:.4f}, best {h['best_spread']:.4f}"),
        ):
            h[key] = h[key] + 1 if bad else 0
            if h[key] == self.window:
                detail = f"{evidence} over the last {self.window} flushes"
                action = "stop" if self.stop else "recorded"
                if self.write:
                    _record_health_event(self.paths, step, event, detail, action, h["lr_scale"])
                log.warning("health: %s at step %d (%s)", event, step, detail)
                if self.stop:
                    raise HealthStop(f"training stopped at step {step}: {event} ({detail}); "
                                     "set train.stop_on_health false to only record it")


def _train(cfg: RunConfig, store_dir: Path, on_progress, should_stop, health_override,
           dist: DistContext | None = None) -> TrainResult:
    # Imported here: the step, the models and BatchOrder must import without pydantic (bench/ runs them
    # on machines that have only torch).
    from ganlib.config import config_differences, total_steps
    from ganlib.data.store import copy_real_grid, load_store

    paths = RunPaths(cfg.run_dir)
    device = resolve_device(cfg.device) if dist is None else dist.device
    writer = dist is None or dist.is_writer  # data-parallel: rank 0 alone writes
    store = load_store(store_dir)
    images = BatchSource(store.images, device, cfg.data.resident_limit_mb)  # on the device if it fits
    num_images, (channels, height, _) = len(images), store.images.shape[1:]
    num_steps = total_steps(cfg.train, num_images)
    batch = cfg.train.batch_size
    objective = Objective.from_config(cfg, device)
    if cfg.train.precision == "bf16":
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        elif device.type == "cpu":
            if not cpu_has_native_bf16():
                log.warning("train.precision: bf16 on a CPU without native bf16 (AMX or AVX512-BF16) is emulated "
                            "and usually slower than fp32; use --precision fp32")
        else:
            log.warning("train.precision: bf16 is used on CUDA and the CPU only; training on %s in fp32", device)

    with torch.random.fork_rng(devices=[]):  # model init must not depend on (or disturb) global RNG
        torch.manual_seed(cfg.seed)
        generator, discriminator = build_models(cfg.model, channels, height, store.num_classes)
    fmt = torch.channels_last if use_channels_last(cfg.train.channels_last, cfg.model.name, device) else (
        torch.contiguous_format)
    generator.to(device, memory_format=fmt).train()
    discriminator.to(device, memory_format=fmt).train()
    ema = copy.deepcopy(generator).eval().requires_grad_(False) if objective.ema_decay > 0 else None
    if dist is not None:  # batch statistics over the global batch, as in one process
        dist.use_global_batch_norm(generator)
        dist.use_global_batch_norm(discriminator)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    order = BatchOrder(num_images, batch, cfg.seed, device,
                       *((dist.rank, dist.world_size) if dist is not None else ()))
    labels = torch.from_numpy(store.labels).to(device) if cfg.model.conditional else None
    rows: list[dict[str, Any]] = []
    step = 0
    health: dict[str, Any] = {"rollbacks": 0, "lr_scale": 1.0}

    # On the CPU: RNG states must stay there. Data-parallel: rank 0 picks it, every rank loads it.
    found = ckpt.latest_checkpoint(paths.checkpoints) if dist is None else dist.latest_checkpoint(paths.checkpoints)
    if found is not None:
        path, state = found
        diffs = config_differences(state["config"], cfg.model_dump(mode="json"))
        if diffs:
            raise CheckpointError(
                f"run {cfg.run_id!r} was started with a different config ({'; '.join(diffs)}); "
                "use a new --run-id, or the original settings to resume")
        health = dict(state.get("health", health))
    if health_override is not None:  # a rollback: its count and learning-rate scale win
        health = {**health, **health_override}
    opt_g, opt_d = make_optimizers(cfg, generator, discriminator, health["lr_scale"])
    if found is not None:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        if ema is not None:
            ema.load_state_dict(state.get("generator_ema", state["generator"]))
        opt_g.load_state_dict(with_adam_kernel(state["opt_g"], opt_g))
        opt_d.load_state_dict(with_adam_kernel(state["opt_d"], opt_d))
        for opt, base in ((opt_g, cfg.train.lr_g or cfg.train.lr), (opt_d, cfg.train.lr_d or cfg.train.lr)):
            for group in opt.param_groups:  # a rollback lowers the rates the checkpoint was saved with
                group["lr"] = base * health["lr_scale"]
        noise.set_state(state["rng"]["noise"])
        ckpt.restore_rng_state(state["rng"]["global"])
        order.load_state_dict(state["data"])
        step = int(state["step"])
        if paths.train_metrics.is_file():  # rows after the checkpoint are redone, so drop them
            rows = [r for r in pd.read_parquet(paths.train_metrics).to_dict("records") if r["step"] <= step]
        log.info("resuming run %s from %s (step %d of %d)", cfg.run_id, path.name, step, num_steps)
    else:
        ckpt.seed_global_rngs(cfg.seed)
    resumed_from = step

    if writer:
        paths.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(paths.config, cfg.model_dump(mode="json"))
        atomic_write_json(paths.data / "manifest.json", store.manifest)
        copy_real_grid(store.path, paths.data)
    log.info("training %s (%s loss) on %s: %d images %s, %d steps of batch %d on %s",
             cfg.model.name, objective.loss, store.manifest["dataset"], num_images,
             tuple(store.images.shape[1:]), num_steps, batch, device)

    def save(at_step: int) -> Path:
        target = paths.checkpoints / ckpt.checkpoint_name(at_step)
        if not writer:
            return target
        _write_table(rows, paths.train_metrics)  # table first: a resume truncates it to the checkpoint
        ckpt.save_checkpoint(target, {
            "step": at_step,
            "config": cfg.model_dump(mode="json"),
            "image_shape": [channels, height, height],
            "num_classes": store.num_classes,
            "generator": generator.state_dict(),
            **({"generator_ema": ema.state_dict()} if ema is not None else {}),
            "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "data": order.state_dict(),
            "health": health,
            "rng": {"noise": noise.get_state(), "global": ckpt.capture_rng_state()},
        })
        return target

    # The step runs compiled modules when asked; checkpoints and the EMA use the originals.
    # Data-parallel: DDP averages the gradients over the ranks (see ganlib.training.distributed).
    step_g, step_d = (dist.wrap(generator), dist.wrap(discriminator)) if dist is not None else (
        generator, discriminator)
    step_g, step_d = (torch.compile(step_g), torch.compile(step_d)) if cfg.train.compile else (step_g, step_d)
    monitor = HealthMonitor(paths, cfg.train.health_window, cfg.train.stop_on_health, health, write=writer)
    window = torch.zeros(cfg.train.log_every, len(METRIC_COLUMNS), device=device)
    filled, t_start, t_flush = 0, time.perf_counter(), time.perf_counter()
    stopped_early = False
    images_per_sec = float("nan")
    while step < num_steps:
        batches, indices = [], []
        for _ in range(objective.d_steps):
            batches.append(images.next_batch(order))
            indices.append(images.last_indices)
        real = to_unit_range((batches[0] if len(batches) == 1 else torch.cat(batches)).contiguous(memory_format=fmt))
        y = labels[torch.cat(indices)] if labels is not None else None
        if dist is None:
            z = torch.randn(len(real), cfg.model.noise_dim, device=device, generator=noise)
            step_noise = noise
        else:  # every rank draws the global latents and keeps its rows; randomness inside the step is per rank
            z = torch.randn(batch * objective.d_steps, cfg.model.noise_dim, device=device, generator=noise)
            z = dist.local_rows(z, objective.d_steps)
            step_noise = dist.step_noise(cfg.seed, step)
        if cfg.train.lr_decay != "none":  # a float per group: no host sync, resumes exactly (a function of step)
            factor = health["lr_scale"] * lr_factor(cfg.train, step, num_steps)
            for opt, base in ((opt_g, cfg.train.lr_g or cfg.train.lr), (opt_d, cfg.train.lr_d or cfg.train.lr)):
                for group in opt.param_groups:
                    group["lr"] = base * factor
        window[filled] = train_step(step_g, step_d, opt_g, opt_d, real, z, objective, step, ema, step_noise, y)
        filled += 1
        step += 1

        last = step == num_steps
        if filled == cfg.train.log_every or last or step % cfg.train.checkpoint_every == 0:
            flushed = window[:filled] if dist is None else dist.mean_over_ranks(window[:filled])
            values = flushed.cpu().tolist()  # the loop's one host sync
            for i, v in enumerate(values):
                if not all(math.isfinite(x) for x in v):
                    bad = [name for name, x in zip(METRIC_COLUMNS, v) if not math.isfinite(x)]
                    raise NonFiniteLoss(f"non-finite {', '.join(bad)}", step - filled + i + 1, health)
            monitor.observe(step, values)
            now = time.perf_counter()
            images_per_sec = filled * batch / max(now - t_flush, 1e-9)
            for i, v in enumerate(values):
                s = step - filled + i + 1
                rows.append({"step": s, "epoch": s * batch * objective.d_steps / num_images,
                             **dict(zip(METRIC_COLUMNS, v)), "images_per_sec": images_per_sec})
            eta = (num_steps - step) * batch / images_per_sec
            if cfg.train.max_minutes is not None:  # the time budget ends this attempt first
                eta = min(eta, max(0.0, 60 * cfg.train.max_minutes - (now - t_start)))
            record = {**rows[-1], "total_steps": num_steps, "eta_s": eta}
            log.info("step %d/%d (%d%%) epoch %.2f | d_loss %.3f g_loss %.3f D(x) %.2f D(G(z)) %.2f | "
                     "%.0f img/s | ETA %s", step, num_steps, 100 * step // num_steps, record["epoch"],
                     record["d_loss"], record["g_loss"], record["d_real"], record["d_fake"],
                     images_per_sec, _format_eta(record["eta_s"]))
            if on_progress:
                on_progress(record)
            filled, t_flush = 0, time.perf_counter()
            out_of_time = cfg.train.max_minutes is not None and now - t_start > 60 * cfg.train.max_minutes
            stop = out_of_time or (should_stop is not None and should_stop())
            if dist is not None and not last:  # every rank stops at the same step, or none does
                stop = dist.any_rank(stop)
            if stop and not last:
                stopped_early = True
                save(step)
                log.info("%s: checkpointed at step %d", "time budget spent" if out_of_time else "stop requested", step)
                break
        if last or step % cfg.train.checkpoint_every == 0:
            save(step)

    seconds = time.perf_counter() - t_start
    trained = step - resumed_from
    return TrainResult(
        run_dir=str(paths.root),
        final_step=step,
        total_steps=num_steps,
        resumed_from_step=resumed_from,
        checkpoints=[str(p) for _, p in ckpt.list_checkpoints(paths.checkpoints)],
        metrics_path=str(paths.train_metrics),
        seconds=round(seconds, 3),
        images_per_sec=round(trained * batch / seconds, 1) if trained else 0.0,
        stopped_early=stopped_early,
    )


def load_generator(path: Path, device: str | torch.device = "cpu", use_ema: bool = True
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The generator of a checkpoint, in eval mode on ``device``, and the checkpoint's metadata.

    With ``use_ema`` the moving-average weights are used when the checkpoint has them.
    Metadata: ``step``, ``config`` (dict), ``image_shape`` [C, H, W], ``num_classes``, ``weights``
    ('ema' or 'raw').
    """
    from ganlib.config import ModelConfig

    state = ckpt.load_checkpoint(path, map_location=device)
    channels, size, _ = state["image_shape"]
    with torch.random.fork_rng(devices=[]):
        generator, _ = build_models(ModelConfig.model_validate(state["config"]["model"]), channels, size,
                                    state["num_classes"])
    weights = "ema" if use_ema and "generator_ema" in state else "raw"
    try:
        generator.load_state_dict(state["generator_ema" if weights == "ema" else "generator"])
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {first_line}") from None
    generator.to(device).eval()
    meta = {k: state[k] for k in ("step", "config", "image_shape", "num_classes")}
    return generator, {**meta, "weights": weights}
