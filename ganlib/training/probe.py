"""Speed settings chosen by measuring: ``train.precision auto``, ``train.channels_last auto``, ``train.threads``.

Which settings make a training step fastest depends on the machine, and the flags of a CPU do not say:
bf16 autocast is 1.5-2.3x faster than fp32 on a CPU with AMX and slower on one with only AVX512-BF16
(bench/RESULTS.md); NHWC convolutions are faster with oneDNN for most shapes but not all; fewer threads
than cores can win for small steps. So on the CPU a probe times a few real training steps of the run's
own models, batch and settings, one setting at a time (precision, then layout, then threads), and moves
away from the usual choice only where the other is clearly faster (``SPEEDUP``). CUDA takes bf16 where
the GPU supports it and NHWC; other devices fp32.

The probe works on copies (fresh models from a fixed seed, their own optimizers and noise), inside
``torch.random.fork_rng``, restoring the thread count: the run itself starts exactly as it would with
the settings given by hand. The choices are written into the run's config, so a resumed run keeps them
without probing again. Each probe takes about a second per configuration timed (three for the mlp,
four for a conv model: a configuration timed for one setting is not timed again for the next); a step slower
than ``SLOW_STEP_SECONDS`` is timed once after one warm-up, and its thread count not probed (a 128-px dcgan at
batch 128, 2 cores of an AVX2 EPYC: 105 s before, 26 s now, the same choices);
nothing is cached between runs, because the answer depends on the run's model and batch and on the
moment (this project's VMs drift by 25% from hour to hour).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ganlib.models import build_models
from ganlib.training.ada import make_ada
from ganlib.training.step import Objective, cpu_has_native_bf16, make_optimizers, train_step, use_channels_last

if TYPE_CHECKING:
    from ganlib.config import RunConfig

# Seconds per step (and steps timed) by (precision, NHWC, threads): within one run's decisions each
# configuration is timed once (the layout probe's "on" is the precision probe's winner, and so on).
Timings = dict[tuple[str, bool, int], tuple[float, int]]

log = logging.getLogger("ganlib")

SPEEDUP = 1.2  # bf16 must be at least this much faster than fp32 to be chosen
LAYOUT_SPEEDUP = 1.1  # NCHW must be this much faster than NHWC (oneDNN's and cuDNN's preferred layout)
THREADS_SPEEDUP = 1.15  # half of torch's threads must be this much faster than all of them
PROBE_SECONDS = 1.0  # timed per setting, after warm-up (and at most MAX_STEPS steps)
WARMUP_STEPS, MIN_STEPS, MAX_STEPS = 2, 2, 20
# A step at least this slow (a conv model at 128 px on a CPU: seconds) is timed once after one warm-up step, and
# fewer threads are not tried: its time goes into large operations, which every thread speeds up.
SLOW_STEP_SECONDS = 1.0


def cpu_instruction_set() -> str:
    """The matrix instructions this CPU offers oneDNN, in words: 'AMX', 'AVX512-BF16', 'AVX512', 'AVX2' or
    'other', with ``ONEDNN_MAX_CPU_ISA`` named when it caps them (so every speed figure can say what it ran on)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    isa = next((name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"),
                                         ("avx2", "AVX2")) if flag in flags), "other")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{isa}, ONEDNN_MAX_CPU_ISA={cap}" if cap else isa


def cuda_precision(device: torch.device) -> tuple[str, str]:
    """bf16 on a GPU with bf16 units (compute capability 8.0 and up: A100, H100, RTX 30xx and later; ROCm),
    fp32 before them (V100, T4, RTX 20xx), where ``torch.cuda.is_bf16_supported()`` still answers yes
    because bf16 is emulated there, slower than fp32."""
    if torch.version.hip:
        return "bf16", "a ROCm GPU (bf16 units)"
    props = torch.cuda.get_device_properties(device)
    if props.major >= 8:
        return "bf16", f"{props.name} (compute capability {props.major}.{props.minor}) has bf16 units"
    return "fp32", (f"{props.name} (compute capability {props.major}.{props.minor}) has no bf16 units, so bf16 "
                    "would be emulated")


def choose_precision(cfg: RunConfig, real: torch.Tensor, device: torch.device,
                     timings: Timings | None = None) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why in one line) for ``train.precision auto``; ``real``: one batch of the run's
    images (uint8 or float, (N, C, H, W)) on ``device``."""
    if device.type == "cuda":
        return cuda_precision(device)
    if device.type != "cpu":
        return "fp32", f"bf16 autocast is used on CUDA and the CPU only, not {device.type}"
    if not cpu_has_native_bf16():
        return "fp32", f"this CPU ({cpu_instruction_set()}) has no native bf16, so bf16 would be emulated"
    return _compare(cfg, real, device, timings, "precision", "fp32", "bf16", SPEEDUP)


def choose_channels_last(cfg: RunConfig, real: torch.Tensor, device: torch.device,
                         timings: Timings | None = None) -> tuple[str, str]:
    """(``on`` or ``off``, why) for ``train.channels_last auto``: off for the mlp (no image-shaped weights)
    and devices other than CUDA and the CPU, on for CUDA (cuDNN's tensor cores want NHWC), measured on the
    CPU with ``cfg``'s precision (decided first)."""
    if cfg.model.name == "mlp":
        return "off", "the mlp has no convolutions"
    if device.type != "cpu":
        on = use_channels_last("auto", cfg.model.name, device)
        return ("on" if on else "off"), f"the usual layout for convolutions on {device.type}"
    return _compare(cfg, real, device, timings, "channels_last", "on", "off", LAYOUT_SPEEDUP)


def choose_threads(cfg: RunConfig, real: torch.Tensor, device: torch.device,
                   timings: Timings | None = None) -> tuple[int, str]:
    """(threads, why) for ``train.threads`` left unset, on the CPU: torch's default (one per core), or half of
    it where that is clearly faster (small steps, where waking the threads costs more than they save)."""
    n = torch.get_num_threads()
    if n < 2:
        return n, "torch has one thread here"
    timings = {} if timings is None else timings
    t_all, _ = _timed(_with_train(cfg, threads=n), real, device, timings)
    if t_all >= SLOW_STEP_SECONDS:
        return n, (f"a step of the run takes {t_all:.1f} s with {n} threads on this {_where(device)}: large "
                   "operations, which every thread speeds up, so fewer threads were not timed")
    return _compare(cfg, real, device, timings, "threads", n, n // 2, THREADS_SPEEDUP,
                    lambda v: f"{v} thread{'s' * (v > 1)}")


def _compare(cfg: RunConfig, real: torch.Tensor, device: torch.device, timings: Timings | None, name: str,
             usual: Any, other: Any, speedup: float, say: Callable[[Any], str] = str) -> tuple[Any, str]:
    """``other`` where one step of ``cfg`` with ``train.<name> = other`` is at least ``speedup`` times as fast
    as with ``usual``, else ``usual``; with the measured times in words. ``timings``: the configurations
    timed already (read, and filled in)."""
    timings = {} if timings is None else timings
    t_usual, n_usual = _timed(_with_train(cfg, **{name: usual}), real, device, timings)
    t_other, n_other = _timed(_with_train(cfg, **{name: other}), real, device, timings)
    ratio = t_usual / t_other
    choice = other if ratio >= speedup else usual
    return choice, (f"probe of the run's own step on this {_where(device)}: {say(usual)} {1000 * t_usual:.0f} ms "
                    f"({n_usual} step{'s' * (n_usual > 1)}), {say(other)} {1000 * t_other:.0f} ms ({n_other} "
                    f"step{'s' * (n_other > 1)}), {say(other)} {ratio:.2f}x as fast; {say(other)} is taken from "
                    f"{speedup}x")


def _where(device: torch.device) -> str:
    return f"CPU ({cpu_instruction_set()}, {torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def _with_train(cfg: RunConfig, **changes: Any) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=changes)})


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` (None: unchanged) inside, restored after."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _timed(cfg: RunConfig, real: torch.Tensor, device: torch.device, timings: Timings) -> tuple[float, int]:
    """``_seconds_per_step`` of ``cfg``, from ``timings`` where that configuration was timed already."""
    t = cfg.train
    nhwc = use_channels_last(t.channels_last, cfg.model.name, device)
    key = (t.precision, nhwc, t.threads or torch.get_num_threads())
    if key not in timings:
        timings[key] = _seconds_per_step(cfg, real, device)
    return timings[key]


def _seconds_per_step(cfg: RunConfig, real: torch.Tensor, device: torch.device) -> tuple[float, int]:
    """Median seconds of one training step of ``cfg`` (and how many were timed), on throwaway copies."""
    t = cfg.train
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), threads(t.threads):
        torch.manual_seed(0)
        g, d = build_models(cfg.model, real.shape[1], real.shape[2], 0 if not cfg.model.conditional else 2)
        nhwc = use_channels_last(t.channels_last, cfg.model.name, device)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        g, d = g.to(device, memory_format=fmt).train(), d.to(device, memory_format=fmt).train()
        opt_g, opt_d = make_optimizers(cfg, g, d)
        objective = Objective.from_config(cfg, device)
        x = real.float() / 127.5 - 1 if real.dtype == torch.uint8 else real
        x = x.repeat_interleave(objective.d_steps, dim=0).contiguous(memory_format=fmt)
        y = torch.arange(len(x), device=device) % 2 if cfg.model.conditional else None
        noise = torch.Generator(device=device).manual_seed(0)
        ada = make_ada(t, len(real), device)
        times: list[float] = []
        warmup = WARMUP_STEPS
        for i in range(WARMUP_STEPS + MAX_STEPS):
            z = torch.randn(len(x), cfg.model.noise_dim, device=device, generator=noise)
            start = time.perf_counter()
            train_step(g, d, opt_g, opt_d, x, z, objective, i, None, noise, y, ada)[0].item()  # .item(): wait for it
            seconds = time.perf_counter() - start
            if i == 0 and seconds >= SLOW_STEP_SECONDS:
                warmup = 1  # its one-time costs are paid, and one step more is long enough to time
            if i >= warmup:
                times.append(seconds)
                if warmup == 1 or (len(times) >= MIN_STEPS and sum(times) >= PROBE_SECONDS):
                    break
    times.sort()
    return times[len(times) // 2], len(times)


def measured_settings(cfg: RunConfig, saved_train: dict[str, Any] | None, first_batch: Callable[[], torch.Tensor],
                      device: torch.device, world_size: int = 1) -> tuple[RunConfig, list[str]]:
    """``cfg`` with its speed settings left to measurement decided, and one log line per decision.

    ``first_batch()`` gives one batch of the run's images on ``device`` for the probes; it is called only
    where something is probed.

    A run that has begun keeps the choices in ``saved_train`` (its newest checkpoint's ``train`` section,
    or config.json's when killed before the first checkpoint). Data-parallel ranks do not probe (they
    must agree, and on a CPU would time each other): fp32 and NHWC on CPU ranks, on CUDA bf16 where the
    GPU has bf16 units (``cuda_precision``), and the launcher's thread count.
    """
    saved_train = saved_train or {}
    lines: list[str] = []
    timings: Timings = {}
    real: torch.Tensor | None = None
    deciders = (
        ("precision", lambda v: v == "auto", choose_precision,
         lambda: cuda_precision(device)[0] if device.type == "cuda" else "fp32"),
        ("channels_last", lambda v: v == "auto", choose_channels_last,
         lambda: "on" if use_channels_last("auto", cfg.model.name, device) else "off"),
        ("threads", lambda v: v is None and device.type == "cpu", choose_threads, None),
    )
    for name, undecided, choose, for_ranks in deciders:
        if not undecided(getattr(cfg.train, name)):
            continue
        kept = saved_train.get(name)
        if kept is not None and not undecided(kept):
            value, why = kept, "the run's saved config"
        elif world_size > 1:
            if for_ranks is None:
                continue  # the launcher's setting (one thread per CPU rank)
            value, why = for_ranks(), "data-parallel ranks do not probe"
        else:
            real = first_batch() if real is None else real
            value, why = choose(cfg, real, device, timings)
        cfg = _with_train(cfg, **{name: value})
        lines.append(f"{name} auto: {value} ({why})")
    return cfg, lines
