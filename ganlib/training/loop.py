"""The training loop: ``train()`` owns order and cadence; everything else lives in its own module.

- ``ganlib.training.state``: what a checkpoint holds (``TrainingState``), saved and resumed by one pair
  of functions;
- ``ganlib.training.step``: the maths of one D/G update (``train_step``), which the benchmarks import,
  so what is timed is what trains;
- ``ganlib.training.health``: non-finite losses, D saturation and mode collapse;
- ``ganlib.training.distributed``: the process context, always present (one process: collectives are
  identities).

Per-step scalars stay on the device and are copied to the host once every ``log_every`` steps (the
loop's only sync). On the CPU a resumed run continues bit-identically (``ganlib.training.state``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ganlib.data.loader import BatchSource
from ganlib.errors import DeviceMemoryError, TrainingDiverged
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.device import device_memory_detail, is_out_of_device_memory, resolve_device
from ganlib.runs.files import remove_temporary_files
from ganlib.runs.paths import RunDir
from ganlib.sampling import to_unit_range
from ganlib.training.distributed import ProcessContext
from ganlib.training.health import METRIC_COLUMNS, HealthMonitor, NonFiniteLoss, record_health_event
from ganlib.training.probe import measured_settings, threads
from ganlib.training.state import TrainingState
from ganlib.training.step import Objective, check_precision, lr_factor, top_k_fraction, train_step

if TYPE_CHECKING:
    from ganlib.config import RunConfig

log = logging.getLogger("ganlib")

HEARTBEAT_S = 30.0  # between flushes of slow steps, a line at most this often says how far training is


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


def train(
    cfg: RunConfig,
    store_dir: Path,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    ctx: ProcessContext | None = None,
) -> TrainResult:
    """Train (or resume training) the run ``cfg.run_dir`` on the prepared store ``store_dir``.

    If the run directory holds checkpoints, training continues from the newest valid one; a
    checkpoint whose config differs in anything that changes the run is refused with the
    difference named. ``on_progress`` receives each flushed progress record; ``should_stop`` is
    polled at each flush and, when it returns True, training checkpoints and returns early.

    The run directory is locked for the duration (a second process training the same run id is
    refused). A fresh run seeds Python's, NumPy's and torch's global RNGs from ``cfg.seed``, as a
    training script would; a resumed run restores them from the checkpoint. Non-finite losses roll
    back to the last checkpoint with lower learning rates (``train.max_rollbacks`` times at most).

    ``ctx``: this process's place in a data-parallel run (``ganlib.training.launch`` makes it);
    default: a process on its own, on ``cfg.device``.
    """
    from ganlib.data.store import prepared_size

    cfg = cfg.resolved(image_size=prepared_size(Path(store_dir)))  # 'auto': the size of the images given
    ctx = ctx or ProcessContext(resolve_device(cfg.device))
    run = RunDir(cfg.run_dir)
    with ctx.run_lock(run.root):
        if ctx.is_writer:  # nobody else writes here while the lock is held: temporary files are a killed writer's
            remove_temporary_files(run.root)
        health: dict[str, Any] | None = None  # None: take the checkpoint's
        with threads(None):  # the run's train.threads while it trains, torch's own count after
            while True:
                try:
                    with contextlib.ExitStack() as cleanup:  # closes the batch source, however _train ends
                        return _train(cfg, Path(store_dir), ctx, on_progress, should_stop, health, cleanup)
                except NonFiniteLoss as err:  # roll back to the last checkpoint with lower learning rates
                    health = {"rollbacks": err.health["rollbacks"] + 1,
                              "lr_scale": err.health["lr_scale"] * cfg.train.rollback_lr_factor}
                    failed = health["rollbacks"] > cfg.train.max_rollbacks
                    if ctx.is_writer:
                        record_health_event(run, err.step, "non-finite-loss", str(err),
                                            "fail" if failed else "rollback", health["lr_scale"])
                    if failed:
                        raise TrainingDiverged(
                            f"training diverged: {err} at step {err.step}, still after {cfg.train.max_rollbacks} "
                            f"rollbacks with learning rates down to x{err.health['lr_scale']:g}; lower --lr or "
                            "change the loss or model") from None
                    log.warning("%s at step %d: rolling back to the last checkpoint with learning rates x%g "
                                "(rollback %d of at most %d)", err, err.step, health["lr_scale"],
                                health["rollbacks"], cfg.train.max_rollbacks)
                except Exception as err:  # torch's out-of-memory errors are one line; anything else as it is
                    if not is_out_of_device_memory(err):
                        raise
                    raise DeviceMemoryError(_out_of_memory_message(cfg, ctx, err, run)) from None


def _out_of_memory_message(cfg: RunConfig, ctx: ProcessContext, err: BaseException, run: RunDir) -> str:
    """One line for a GPU that ran out of memory training: what, and the settings that need less. The run's
    config.json says what training resolved (the preset, precision auto) where it got that far."""
    try:
        saved = run.saved_config() or {}
    except Exception:  # noqa: BLE001 (the message must not fail: fall back to the settings given)
        saved = {}
    model = saved.get("model", {}).get("name", cfg.model.name)
    precision = saved.get("train", {}).get("precision", cfg.train.precision)
    per_rank = cfg.train.batch_size // ctx.world_size
    size = f"{cfg.data.image_size}-px " if isinstance(cfg.data.image_size, int) else ""
    batch = f"batches of {per_rank}" + (f" per process ({cfg.train.batch_size} in all)" if ctx.world_size > 1 else "")
    resume = [*(["--precision bf16 (where the GPU has bf16)"] if precision != "bf16" else []),
              *(["more GPUs (--nproc-per-node)"] if ctx.device.type == "cuda" else [])]
    widths = "--hidden-dim/--d-hidden-dim" if model == "mlp" else "--ngf/--ndf"
    where = device_memory_detail(err, ctx.device)
    return (f"out of memory on {where}, training {model} on {size}images in {batch}: "
            + (f"resume with {' or '.join(resume)}, or " if resume else "")
            + f"start another --run-id with a smaller --batch-size or {widths}; the checkpoints saved so far are kept")


def _train(cfg: RunConfig, store_dir: Path, ctx: ProcessContext, on_progress, should_stop,
           health: dict[str, Any] | None, cleanup: contextlib.ExitStack) -> TrainResult:
    from ganlib.config import check_resumable, total_steps  # here: the step imports without pydantic
    from ganlib.data.store import check_same_data, copy_real_grid, load_store

    # --- Data, models, optimizers --------------------------------------------------------------
    run, device = RunDir(cfg.run_dir), ctx.device
    store = load_store(store_dir)
    found = ctx.latest_checkpoint(run.checkpoints)  # the newest checkpoint, if the run has one
    if found is not None and (changed := check_same_data(run.read_manifest(), store, cfg.run_id, "training")):
        if ctx.is_writer:
            log.warning("%s", changed)
    chosen_now = cfg.model.name == "auto"  # else the caller resolved it and said so
    cfg = cfg.keeping_preset(found[1]["config"] if found is not None else None)
    cfg = cfg.resolved(*map(int, store.images.shape[1:3]))  # 'auto' settings: for these images
    if chosen_now and cfg.preset_note and ctx.is_writer:
        log.info(cfg.preset_note)
    images = cleanup.enter_context(BatchSource(store.images, device, cfg.data.resident_limit_mb,
                                               mirror=cfg.train.mirror))
    labels = torch.from_numpy(store.labels).to(device) if cfg.model.conditional else None
    num_images, image_shape = len(images), tuple(store.images.shape[1:])
    saved = found[1]["config"] if found is not None else run.saved_config()
    cfg = _with_measured_settings(cfg, saved, store.images, ctx)
    t = cfg.train
    num_steps, batch = total_steps(t, num_images), t.batch_size
    objective = Objective.from_config(cfg, device)
    check_precision(t.precision, device)
    state = TrainingState(cfg, image_shape, store.num_classes, num_images, ctx,
                          health={"rollbacks": 0, "lr_scale": 1.0, **(health or {})})

    # --- Resume from the newest checkpoint, or start afresh ------------------------------------
    if found is not None:
        path, saved = found
        check_resumable(saved["config"], cfg)
        state.load_state_dict(saved, health)
        log.info("resuming run %s from %s (step %d of %d)", cfg.run_id, path.name, state.step, num_steps)
    else:
        ckpt.seed_global_rngs(cfg.seed)
    rows = run.read_train_rows(up_to_step=state.step)  # rows after the checkpoint are redone
    resumed_from = state.step
    if ctx.is_writer:
        run.write_run_files(cfg, store.manifest)
        copy_real_grid(store.path, run.data)
    log.info("training %s (%s loss) on %s: %d images %s, %d steps of batch %d on %s", cfg.model.name,
             objective.loss, store.manifest["dataset"], num_images, image_shape, num_steps, batch, device)

    def epoch(step: int) -> float:
        """Passes over the data after ``step`` steps (each D update takes a batch)."""
        return step * batch * objective.d_steps / num_images

    def save() -> None:
        if ctx.is_writer:
            run.write_train_rows(rows)  # table first: a resume truncates it to the checkpoint
            ckpt.save_checkpoint(run.checkpoint(state.step), state.state_dict())

    # --- The loop -------------------------------------------------------------------------------
    # The step runs wrapped (data-parallel) or compiled modules; checkpoints and the EMA use the originals.
    step_g, step_d = ctx.wrap(state.generator), ctx.wrap(state.discriminator)
    if t.compile:
        step_g = torch.compile(step_g)
        if objective.double_backward:
            log.info("compile: G only; D runs eagerly, because its %s penalty differentiates D's gradient, which "
                     "torch.compile cannot (double backward)", "gradient" if objective.loss == "wgan-gp" else "R1/R2")
        else:
            step_d = torch.compile(step_d)
    monitor = HealthMonitor(run, t.health_window, t.stop_on_health, state.health, write=ctx.is_writer)
    window = torch.zeros(t.log_every, len(METRIC_COLUMNS), device=device)
    filled, t_start, t_flush, stopped_early = 0, time.perf_counter(), time.perf_counter(), False
    t_said = t_start  # the last progress line
    while state.step < num_steps:
        # (1) Real images and latents: every rank draws the global latents and keeps its rows.
        batches, indices = zip(*(images.next_batch(state.order) for _ in range(objective.d_steps)))
        real = batches[0] if len(batches) == 1 else torch.cat(batches)  # no copy for the usual one D update
        real = to_unit_range(real.contiguous(memory_format=state.memory_format))
        y = labels[torch.cat(indices)] if labels is not None else None
        z = ctx.local_rows(torch.randn(batch * objective.d_steps, cfg.model.noise_dim, device=device,
                                       generator=state.noise), objective.d_steps)
        if t.lr_decay != "none":  # a function of the step: resumes exactly
            state.set_learning_rates(state.health["lr_scale"] * lr_factor(t, state.step, num_steps))

        # (2) Update D, then G.
        g_keep = top_k_fraction(t.top_k, t.top_k_decay, epoch(state.step))
        window[filled] = train_step(step_g, step_d, state.opt_g, state.opt_d, real, z, objective, state.step,
                                    state.ema, ctx.step_noise(state.noise, cfg.seed, state.step), y, state.ada,
                                    g_keep)
        filled, state.step = filled + 1, state.step + 1
        if state.ada is not None and state.step % t.ada_interval == 0:
            state.ada.adjust(ctx.mean_over_ranks)  # p follows r_t, the same on every rank
        last = state.step == num_steps
        stop_requested = should_stop is not None and should_stop()  # a Python flag: no sync
        now = time.perf_counter()  # the host's clock, no sync
        out_of_time = t.max_minutes is not None and now - t_start > 60 * t.max_minutes

        # (3) Every log_every steps: copy the scalars to the host, check health, report, maybe stop.
        # A stop request or a spent time budget is served at once where this process decides alone (steps of
        # seconds, 128 px on a CPU, overran a one-minute budget by 50 steps), else at the next flush.
        if (filled == t.log_every or last or state.step % t.checkpoint_every == 0
                or ((stop_requested or out_of_time) and ctx.decides_alone)):
            values = ctx.mean_over_ranks(window[:filled]).cpu().tolist()  # the loop's one host sync
            monitor.check_finite(state.step, values)
            monitor.observe(state.step, values)
            now = time.perf_counter()
            images_per_sec = filled * batch / max(now - t_flush, 1e-9)
            for i, v in enumerate(values):
                s = state.step - filled + i + 1
                rows.append({"step": s, "epoch": epoch(s),
                             **dict(zip(METRIC_COLUMNS, v)), "images_per_sec": images_per_sec})
            _report(rows[-1], num_steps, batch, t.max_minutes, now - t_start, on_progress)
            filled, t_flush = 0, time.perf_counter()
            t_said = t_flush
            out_of_time = t.max_minutes is not None and now - t_start > 60 * t.max_minutes
            if not last and ctx.any_rank(out_of_time or stop_requested):  # all ranks stop at one step, or none
                stopped_early = True
                save()
                log.info("%s: checkpointed at step %d", "time budget spent" if out_of_time else "stop requested",
                         state.step)
                break
        elif ctx.is_writer and now - t_said >= HEARTBEAT_S:  # slow steps: say it is alive between flushes
            t_said = now
            at = min(state.step + t.log_every - filled, num_steps,
                     (state.step // t.checkpoint_every + 1) * t.checkpoint_every)  # the next flush
            log.info("step %d/%d: %.1f s a step; losses at step %d", state.step, num_steps,
                     (now - t_flush) / filled, at)

        # (4) Checkpoint.
        if last or state.step % t.checkpoint_every == 0:
            save()

    seconds, trained = time.perf_counter() - t_start, state.step - resumed_from
    return TrainResult(
        run_dir=str(run.root), final_step=state.step, total_steps=num_steps, resumed_from_step=resumed_from,
        checkpoints=[str(p) for _, p in ckpt.list_checkpoints(run.checkpoints)],
        metrics_path=str(run.train_metrics), seconds=round(seconds, 3),
        images_per_sec=round(trained * batch / seconds, 1) if trained else 0.0, stopped_early=stopped_early)


def _with_measured_settings(cfg: RunConfig, saved_config: dict[str, Any] | None, images: np.ndarray,
                            ctx: ProcessContext) -> RunConfig:
    """The speed settings left to measurement (``train.precision``/``channels_last`` auto, ``train.threads``
    unset) decided by ``ganlib.training.probe`` on one batch of the run's images, or kept from the run's
    saved config; the thread count applied (``train()`` restores torch's afterwards)."""
    def first_batch() -> torch.Tensor:
        return torch.from_numpy(np.array(images[: cfg.train.batch_size])).to(ctx.device)  # a writable copy

    probed, lines = measured_settings(cfg, (saved_config or {}).get("train"), first_batch, ctx.device, ctx.world_size)
    if ctx.is_writer:
        for line in lines:
            log.info("%s", line)
    if probed.train.threads is not None and ctx.device.type == "cpu":
        torch.set_num_threads(probed.train.threads)
    return probed


def _report(row: dict[str, Any], num_steps: int, batch: int, max_minutes: float | None, elapsed_s: float,
            on_progress: Callable[[dict[str, Any]], None] | None) -> None:
    """Log a progress line for the newest flushed row and pass it (with total steps and ETA) to ``on_progress``."""
    eta = (num_steps - row["step"]) * batch / row["images_per_sec"]
    if max_minutes is not None:  # the time budget ends this attempt first
        eta = min(eta, max(0.0, 60 * max_minutes - elapsed_s))
    log.info("step %d/%d (%d%%) epoch %.2f | d_loss %.3f g_loss %.3f D(x) %.2f D(G(z)) %.2f | %.0f img/s | ETA %s",
             row["step"], num_steps, 100 * row["step"] // num_steps, row["epoch"], row["d_loss"], row["g_loss"],
             row["d_real"], row["d_fake"], row["images_per_sec"], _format_eta(eta))
    if on_progress:
        on_progress({**row, "total_steps": num_steps, "eta_s": eta})


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
