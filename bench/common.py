"""What every benchmark records with its numbers (date, device, commit, a CSV to append to), and
the training step they time, built from ganlib's own pieces without pydantic or prefect."""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ganlib.data.loader import BatchOrder, BatchSource
from ganlib.models import BATCH_INDEPENDENT_DISCRIMINATORS, build_models
from ganlib.sampling import to_unit_range
from ganlib.training.probe import cpu_instruction_set
from ganlib.training.step import Objective, adam_implementation, train_step, use_channels_last


def commit(checkout: Path | None = None) -> str:
    """The short commit hash of ``checkout`` (default: this one; ``unknown`` outside git), with
    ``+dirty`` for local changes."""
    here = checkout or Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def parse_diffaug(text: str) -> tuple[str, ...]:
    """A ``--diffaug`` value as ``train.diffaug`` reads it: a comma list of policies, or none."""
    from ganlib.training.augment import POLICIES

    policy = tuple(x.strip() for x in text.split(",") if x.strip() and x.strip().lower() not in ("none", "off"))
    if unknown := set(policy) - set(POLICIES):
        raise ValueError(f"--diffaug: unknown {', '.join(sorted(unknown))}; use a comma list of "
                         f"{', '.join(POLICIES)} or none")
    return policy


def parse_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value: JSON where it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # The instruction set is part of every CPU figure: bf16 is 1.8x faster with AMX and slower without it.
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads, {cpu_instruction_set()}"


def stamp(device: torch.device | None = None) -> dict[str, str]:
    """The columns every benchmark row starts with: when (``date``), on what (``device``: the GPU, or the CPU
    with its threads and instruction set; left out when ``device`` is None) and which code (``commit``)."""
    row = {"date": dt.datetime.now().isoformat(timespec="seconds")}
    if device is not None:
        row["device"] = device_name(device)
    return {**row, "commit": commit()}


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path``, writing the header when the file is new.

    A file written by an older version of the script (other columns) is rewritten with the union
    of the columns, so no earlier row is lost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(row):
            rows = pd.read_csv(path)
            pd.concat([rows, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)
            return
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# --- building and timing the real training step, without pydantic ---------------------------------
# The GPU machines have torch but not pydantic or prefect, so the benchmarks build models from this
# stand-in rather than ganlib.config.ModelConfig (tests/bench/test_common.py keeps the two in step).

@dataclass(frozen=True)
class ModelSpec:
    """The fields of ``ganlib.config.ModelConfig`` that ``build_models`` reads, with the mlp preset's defaults."""

    name: str = "mlp"
    conditional: bool = False
    noise_dim: int = 100
    hidden_dim: int = 512
    d_hidden_dim: int | None = None
    ngf: int = 32
    ndf: int = 32
    blocks: int = 1
    spectral_norm: bool = False


def variant_parser(doc: str, variants: tuple[str, ...], num_help: str) -> argparse.ArgumentParser:
    """The flags of a benchmark that measures each of ``variants`` in a fresh process (``in_fresh_process``):
    ``--num``, ``--size`` (RGB side), ``--device``, ``--csv`` and the hidden ``--child``; add the script's own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help=f"{num_help} (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels, RGB (default 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--child", choices=variants, help=argparse.SUPPRESS)
    return parser


def in_fresh_process(module: str, variant: str, argv: list[str]) -> dict[str, Any]:
    """Run ``python -m <module> --child <variant> <argv>`` in a process of its own (so its peak memory is its
    own) from the repository root, and return the JSON object its last line prints."""
    out = subprocess.run([sys.executable, "-m", module, "--child", variant, *argv], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_step_flops_per_image(generator: nn.Module, discriminator: nn.Module, image_shape: tuple[int, int, int],
                               noise_dim: int, objective: Objective | None = None, batch: int = 4) -> float:
    """Floating-point operations of one ganlib ``train_step`` per image of the batch.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions, forward
    and backward (element-wise ops, batch norm and Adam are not counted: a few percent). The step runs
    once on CPU copies of the models (left untouched) at a small batch, in fp32: these counts grow
    linearly with the batch and do not depend on the precision or the memory format.
    """
    from torch.utils.flop_counter import FlopCounterMode

    objective = replace(objective or Objective(), bf16=False)
    g, d = copy.deepcopy(generator).cpu().train(), copy.deepcopy(discriminator).cpu().train()
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    rows = batch * objective.d_steps
    real = torch.rand(rows, *image_shape) * 2 - 1
    z = torch.randn(rows, noise_dim)
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        train_step(g, d, opt_g, opt_d, real, z, objective, noise=torch.Generator().manual_seed(0))
    return counter.get_total_flops() / batch


@dataclass
class StepBench:
    """One model pair, its optimizers and a batch source, ready to time ``train_step`` (see ``make_step``)."""

    step: Callable[[], torch.Tensor]
    generator: nn.Module
    discriminator: nn.Module
    source: BatchSource
    objective: Objective
    channels_last: bool
    fused: bool
    ema: nn.Module | None = None


def make_step(spec: ModelSpec, images: np.ndarray | torch.Tensor, batch_size: int, device: torch.device, *,
              precision: str = "fp32", channels_last: str = "auto", fused_optimizer: str = "auto",
              compile: bool = False, budget_mb: int | None = None, seed: int = 0,
              diffaug: tuple[str, ...] = (), ema_decay: float = 0.0) -> StepBench:
    """The training step as ``ganlib.training.loop._train`` runs it, on ``images`` uint8 (N, C, H, W).

    ``precision`` 'bf16' autocasts (CUDA and the CPU, as in training); ``channels_last`` and
    ``fused_optimizer`` take the training config's values ('auto', 'on', 'off') and go through the
    same rules (``use_channels_last``, ``adam_implementation``); ``budget_mb`` is ``BatchSource``'s
    (0 streams the batches from ``images``, e.g. a memory map). ``diffaug`` and ``ema_decay`` as
    ``train.diffaug`` / ``train.ema_decay`` (the training defaults are ('translation',) and 0.999;
    the benches' default is neither, the bare step). Adam lr 2e-4, betas (0.5, 0.999).
    """
    if precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--precision bf16 is for CUDA and the CPU in ganlib, not {device.type}")
    if precision == "bf16" and device.type == "cuda":  # as ganlib.training.loop._train does
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    channels, size = int(images.shape[1]), int(images.shape[2])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g, d = build_models(spec, channels, size)
    nhwc = use_channels_last(channels_last, spec.name, device)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    g.to(device, memory_format=fmt).train()
    d.to(device, memory_format=fmt).train()
    impl = adam_implementation(fused_optimizer, device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    source = BatchSource(images.numpy() if isinstance(images, torch.Tensor) else images, device, budget_mb)
    order = BatchOrder(len(source), batch_size, seed=seed, device=device)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    objective = Objective(bf16=precision == "bf16", joint_d=spec.name in BATCH_INDEPENDENT_DISCRIMINATORS,
                          diffaug=tuple(diffaug), ema_decay=ema_decay)
    ema = copy.deepcopy(g).eval().requires_grad_(False) if ema_decay > 0 else None
    if compile:  # compiled afresh: shapes compiled for earlier settings would make dynamo go dynamic
        torch._dynamo.reset()
    step_g, step_d = (torch.compile(g), torch.compile(d)) if compile else (g, d)
    count = [0]

    def step() -> torch.Tensor:
        real = to_unit_range(source.next_batch(order)[0].contiguous(memory_format=fmt))
        z = torch.randn(batch_size, spec.noise_dim, device=device, generator=noise)
        out = train_step(step_g, step_d, opt_g, opt_d, real, z, objective, count[0], ema, noise)
        count[0] += 1
        return out

    return StepBench(step, g, d, source, objective, nhwc, "fused" in impl, ema)


def time_steps(step: Callable[[], torch.Tensor], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones (synchronised both ends)."""
    for _ in range(warmup):
        step()
    step().cpu()  # the warm-up is done when its last step is
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step()
    out.cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """Measured dense matmul rate (n x n by n x n), GFLOP/s: the practical compute ceiling to quote
    fractions of peak against (this 2-core AVX-512 CPU: ~400 fp32, ~2,000 bf16 with AMX)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds = time_steps(lambda: a @ b, repeats, 0, device)
    return 2 * n**3 * repeats / seconds / 1e9


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or this process's peak RSS on the CPU, MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
