"""Speed settings chosen by measuring: ``train.precision auto``.

bf16 autocast is 1.5-2.3x faster than fp32 on a CPU with AMX and slower on one with only AVX512-BF16
(bench/RESULTS.md), and the flags of a CPU do not say which: so on the CPU a probe times a few real
training steps of the run's own models, batch and settings in both precisions and takes bf16 only where
it is clearly faster (``SPEEDUP``). CUDA takes bf16 where the GPU supports it; other devices fp32.

The probe works on copies (fresh models from a fixed seed, their own optimizers and noise), inside
``torch.random.fork_rng``: the run itself starts exactly as it would with the precision given by hand.
The choice is written into the run's config, so a resumed run keeps it without probing again.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ganlib.models import build_models
from ganlib.training.ada import AdaptiveAugment
from ganlib.training.step import Objective, cpu_has_native_bf16, make_optimizers, train_step, use_channels_last

if TYPE_CHECKING:
    from ganlib.config import RunConfig

log = logging.getLogger("ganlib")

SPEEDUP = 1.2  # bf16 must be at least this much faster than fp32 to be chosen
PROBE_SECONDS = 1.0  # timed per precision, after warm-up (and at most MAX_STEPS steps)
WARMUP_STEPS, MIN_STEPS, MAX_STEPS = 2, 2, 20


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


def choose_precision(cfg: RunConfig, real: torch.Tensor, device: torch.device) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why in one line) for ``train.precision auto``; ``real``: one batch of the run's
    images (uint8 or float, (N, C, H, W)) on ``device``."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "CUDA with bf16 support") if ok else ("fp32", "this GPU has no bf16")
    if device.type != "cpu":
        return "fp32", f"bf16 autocast is used on CUDA and the CPU only, not {device.type}"
    if not cpu_has_native_bf16():
        return "fp32", f"this CPU ({cpu_instruction_set()}) has no native bf16, so bf16 would be emulated"
    fp32, steps32 = _seconds_per_step(cfg, "fp32", real, device)
    bf16, steps16 = _seconds_per_step(cfg, "bf16", real, device)
    ratio = fp32 / bf16
    choice = "bf16" if ratio >= SPEEDUP else "fp32"
    return choice, (f"probe of the run's own step on this CPU ({cpu_instruction_set()}): fp32 {1000 * fp32:.0f} ms "
                    f"({steps32} steps), bf16 {1000 * bf16:.0f} ms ({steps16} steps), bf16 {ratio:.2f}x as fast; "
                    f"bf16 is taken from {SPEEDUP}x")


def _seconds_per_step(cfg: RunConfig, precision: str, real: torch.Tensor, device: torch.device) -> tuple[float, int]:
    """Median seconds of one training step in ``precision`` (and how many were timed), on throwaway copies."""
    t = cfg.train
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        g, d = build_models(cfg.model, real.shape[1], real.shape[2], 0 if not cfg.model.conditional else 2)
        nhwc = use_channels_last(t.channels_last, cfg.model.name, device)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        g, d = g.to(device, memory_format=fmt).train(), d.to(device, memory_format=fmt).train()
        opt_g, opt_d = make_optimizers(cfg, g, d)
        timed = cfg.model_copy(update={"train": t.model_copy(update={"precision": precision})})
        objective = Objective.from_config(timed, device)
        x = real.float() / 127.5 - 1 if real.dtype == torch.uint8 else real
        x = x.repeat_interleave(objective.d_steps, dim=0).contiguous(memory_format=fmt)
        y = torch.arange(len(x), device=device) % 2 if cfg.model.conditional else None
        noise = torch.Generator(device=device).manual_seed(0)
        ada = AdaptiveAugment(t.ada_target, t.ada_kimg, t.ada_interval, len(real), device) if t.ada == "on" else None
        times: list[float] = []
        for i in range(WARMUP_STEPS + MAX_STEPS):
            z = torch.randn(len(x), cfg.model.noise_dim, device=device, generator=noise)
            start = time.perf_counter()
            train_step(g, d, opt_g, opt_d, x, z, objective, i, None, noise, y, ada)[0].item()  # .item(): wait for it
            if i >= WARMUP_STEPS:
                times.append(time.perf_counter() - start)
                if len(times) >= MIN_STEPS and sum(times) >= PROBE_SECONDS:
                    break
    times.sort()
    return times[len(times) // 2], len(times)
