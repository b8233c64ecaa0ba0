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

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ganlib import checkpoint as ckpt
from ganlib.config import RunConfig, config_differences, total_steps
from ganlib.data.loader import BatchSource
from ganlib.data.store import copy_real_grid, load_store
from ganlib.errors import CheckpointError, ConfigError
from ganlib.io import atomic_path, atomic_write_json, remove_temporary_files
from ganlib.lock import run_lock
from ganlib.losses import d_loss_nonsaturating, g_loss_nonsaturating
from ganlib.models import build_models
from ganlib.run import RunPaths, resolve_device

log = logging.getLogger("ganlib")

METRIC_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake")


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
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, device: torch.device):
        if batch_size > num_items:
            raise ConfigError(
                f"train.batch_size: {batch_size} is larger than the dataset ({num_items} images); "
                f"use --batch-size {num_items} or less")
        self.num_items, self.batch_size, self.seed, self.device = num_items, batch_size, seed, device
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
        start = self.position * self.batch_size
        self.position += 1
        return self._perm[start: start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range of the generator's tanh."""
    return images_uint8.float().div_(127.5).sub_(1.0)


def train_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
) -> torch.Tensor:
    """One D update then one G update on a batch. Returns the step's scalars on the device.

    real: (N, C, H, W) float in [-1, 1]; z: (N, noise_dim). Returns a float32 tensor
    (d_loss, g_loss, D(x), D(G(z))) with the two D outputs as mean probabilities; nothing here
    synchronises with the host.
    """
    # Update D: maximise log D(x) + log(1 - D(G(z))).
    fake = generator(z)
    real_logits = discriminator(real)
    fake_logits = discriminator(fake.detach())
    d_loss = d_loss_nonsaturating(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # Update G: maximise log D(G(z)) against the updated D. D's weight gradients are not needed
    # here, so they are not computed (about a third of the backward pass through D).
    discriminator.requires_grad_(False)
    g_loss = g_loss_nonsaturating(discriminator(fake))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)

    with torch.no_grad():
        return torch.stack([d_loss.detach(), g_loss.detach(),
                            torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()])


def make_optimizers(cfg: RunConfig, generator: nn.Module, discriminator: nn.Module):
    betas = (cfg.train.beta1, cfg.train.beta2)
    return (torch.optim.Adam(generator.parameters(), lr=cfg.train.lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=cfg.train.lr, betas=betas))


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
) -> TrainResult:
    """Train (or resume training) the run ``cfg.run_dir`` on the prepared store ``store_dir``.

    If the run directory holds checkpoints, training continues from the newest valid one; a
    checkpoint whose config differs in anything that changes the run is refused with the
    difference named. ``on_progress`` receives each flushed progress record; ``should_stop`` is
    polled at each flush and, when it returns True, training checkpoints and returns early.

    The run directory is locked for the duration (a second process training the same run id is
    refused). A fresh run seeds Python's, NumPy's and torch's global RNGs from ``cfg.seed``, as a
    training script would; a resumed run restores them from the checkpoint.
    """
    cfg = cfg.resolved()
    with run_lock(cfg.run_dir):
        # Nobody else writes here while we hold the lock: temporary files are a killed writer's.
        remove_temporary_files(cfg.run_dir)
        return _train(cfg, Path(store_dir), on_progress, should_stop)


def _train(cfg: RunConfig, store_dir: Path, on_progress, should_stop) -> TrainResult:
    paths = RunPaths(cfg.run_dir)
    device = resolve_device(cfg.device)
    store = load_store(store_dir)
    images = BatchSource(store.images, device, cfg.data.resident_limit_mb)  # on the device if it fits
    num_images, (channels, height, _) = len(images), store.images.shape[1:]
    num_steps = total_steps(cfg.train, num_images)
    batch = cfg.train.batch_size

    with torch.random.fork_rng(devices=[]):  # model init must not depend on (or disturb) global RNG
        torch.manual_seed(cfg.seed)
        generator, discriminator = build_models(cfg.model, channels, height)
    generator.to(device).train()
    discriminator.to(device).train()
    opt_g, opt_d = make_optimizers(cfg, generator, discriminator)
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    order = BatchOrder(num_images, batch, cfg.seed, device)
    rows: list[dict[str, Any]] = []
    step = 0

    found = ckpt.latest_checkpoint(paths.checkpoints)  # on the CPU: RNG states must stay there
    if found is not None:
        path, state = found
        diffs = config_differences(state["config"], cfg.model_dump(mode="json"))
        if diffs:
            raise CheckpointError(
                f"run {cfg.run_id!r} was started with a different config ({'; '.join(diffs)}); "
                "use a new --run-id, or the original settings to resume")
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
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

    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.config, cfg.model_dump(mode="json"))
    atomic_write_json(paths.data / "manifest.json", store.manifest)
    copy_real_grid(store.path, paths.data)
    log.info("training %s on %s: %d images %s, %d steps of batch %d on %s",
             cfg.model.name, store.manifest["dataset"], num_images, tuple(store.images.shape[1:]),
             num_steps, batch, device)

    def save(at_step: int) -> Path:
        _write_table(rows, paths.train_metrics)  # table first: a resume truncates it to the checkpoint
        target = paths.checkpoints / ckpt.checkpoint_name(at_step)
        ckpt.save_checkpoint(target, {
            "step": at_step,
            "config": cfg.model_dump(mode="json"),
            "image_shape": [channels, height, height],
            "num_classes": store.num_classes,
            "generator": generator.state_dict(),
            "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "data": order.state_dict(),
            "rng": {"noise": noise.get_state(), "global": ckpt.capture_rng_state()},
        })
        return target

    window = torch.zeros(cfg.train.log_every, len(METRIC_COLUMNS), device=device)
    filled, t_start, t_flush = 0, time.perf_counter(), time.perf_counter()
    stopped_early = False
    images_per_sec = float("nan")
    while step < num_steps:
        real = to_unit_range(images.next_batch(order))
        z = torch.randn(batch, cfg.model.noise_dim, device=device, generator=noise)
        window[filled] = train_step(generator, discriminator, opt_g, opt_d, real, z)
        filled += 1
        step += 1

        last = step == num_steps
        if filled == cfg.train.log_every or last or step % cfg.train.checkpoint_every == 0:
            values = window[:filled].cpu().tolist()  # the loop's one host sync
            now = time.perf_counter()
            images_per_sec = filled * batch / max(now - t_flush, 1e-9)
            for i, v in enumerate(values):
                s = step - filled + i + 1
                rows.append({"step": s, "epoch": s * batch / num_images, **dict(zip(METRIC_COLUMNS, v)),
                             "images_per_sec": images_per_sec})
            record = {**rows[-1], "total_steps": num_steps,
                      "eta_s": (num_steps - step) * batch / images_per_sec}
            log.info("step %d/%d (%d%%) epoch %.2f | d_loss %.3f g_loss %.3f D(x) %.2f D(G(z)) %.2f | "
                     "%.0f img/s | ETA %s", step, num_steps, 100 * step // num_steps, record["epoch"],
                     record["d_loss"], record["g_loss"], record["d_real"], record["d_fake"],
                     images_per_sec, _format_eta(record["eta_s"]))
            if on_progress:
                on_progress(record)
            filled, t_flush = 0, time.perf_counter()
            if should_stop is not None and should_stop() and not last:
                stopped_early = True
                save(step)
                log.info("stop requested: checkpointed at step %d", step)
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


def load_generator(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The generator of a checkpoint, in eval mode on ``device``, and the checkpoint's metadata.

    Metadata: ``step``, ``config`` (dict), ``image_shape`` [C, H, W], ``num_classes``.
    """
    from ganlib.config import ModelConfig

    state = ckpt.load_checkpoint(path, map_location=device)
    channels, size, _ = state["image_shape"]
    with torch.random.fork_rng(devices=[]):
        generator, _ = build_models(ModelConfig.model_validate(state["config"]["model"]), channels, size)
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {str(err).splitlines()[0]}") from None
    generator.to(device).eval()
    meta = {k: state[k] for k in ("step", "config", "image_shape", "num_classes")}
    return generator, meta
