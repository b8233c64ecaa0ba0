"""Training throughput of the real training step on synthetic data.

    python -m bench.throughput --device cpu --image-size 64 --batch-size 64 --ngf 64 --ndf 64 --steps 20
    python -m bench.throughput ... --precision bf16 --channels-last off   # speed options, one at a time
    python -m bench.throughput ... --compile --warmup 10                  # torch.compile G and D
    # the default run's model (mlp, hidden 512) and batch:
    python -m bench.throughput --device cpu --model mlp --image-size 28 --channels 1 --batch-size 128 --steps 200
    # where a step's time goes (torch.profiler over 100 more steps, grouped by kind of operator):
    python -m bench.throughput ... --diffaug translation --ema-decay 0.999 --profile 100

Times ganlib's own ``train_step`` with its models, batch source and optimizer rules
(``bench/common.make_step``), so what is timed is what trains; ``--diffaug translation --ema-decay
0.999`` adds the default run's augmentation and EMA (without them: the bare step).
Prints one table row (images/s after warm-up, ms/step, peak memory) and appends it to
``bench/results/throughput.csv`` with the date, device, commit and settings. Needs neither prefect
nor pydantic (run as a module from the repository root, ganlib need not be installed).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    ModelSpec,
    append_csv,
    make_step,
    parse_diffaug,
    peak_memory_mb,
    stamp,
    time_steps,
)

PROFILE_RESULTS = Path(__file__).resolve().parent / "results" / "profile.csv"
RESULTS = Path(__file__).resolve().parent / "results" / "throughput.csv"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="dcgan", choices=["mlp", "dcgan", "resnet"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--hidden-dim", type=int, default=ModelSpec.hidden_dim, help="mlp width")
    p.add_argument("--d-hidden-dim", type=int, default=None, help="mlp: D's width (default: --hidden-dim)")
    p.add_argument("--noise-dim", type=int, default=100)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--num-images", type=int, default=2048, help="synthetic dataset size")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="as train.precision")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="as train.channels_last")
    p.add_argument("--diffaug", default="none", help="as train.diffaug: e.g. translation or translation,cutout")
    p.add_argument("--ema-decay", type=float, default=0.0, help="as train.ema_decay (0: no EMA)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile this many more steps and print where the time goes")
    p.add_argument("--fused-optimizer", choices=["auto", "on", "off"], default="auto",
                   help="as train.fused_optimizer: auto is fused Adam where torch has it, off is foreach")
    p.add_argument("--compile", action="store_true", help="as train.compile: torch.compile G and D (use --warmup 10)")
    args = p.parse_args()

    device = torch.device(args.device)
    try:
        diffaug = parse_diffaug(args.diffaug)
    except ValueError as err:
        p.error(str(err))
    spec = ModelSpec(name=args.model, ngf=args.ngf, ndf=args.ndf, noise_dim=args.noise_dim, hidden_dim=args.hidden_dim,
                     d_hidden_dim=args.d_hidden_dim)
    size = (max(args.num_images, args.batch_size), args.channels, args.image_size, args.image_size)
    images = torch.randint(0, 256, size, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bench = make_step(spec, images, args.batch_size, device, precision=args.precision,
                      channels_last=args.channels_last, fused_optimizer=args.fused_optimizer,
                      diffaug=diffaug, ema_decay=args.ema_decay, compile=args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_steps(bench.step, args.steps, args.warmup, device)

    images_per_sec = args.steps * args.batch_size / seconds
    peak_mb = peak_memory_mb(device)
    row = {
        **stamp(device),
        "torch": torch.__version__,
        "model": args.model, "image_size": args.image_size, "channels": args.channels,
        "batch_size": args.batch_size, "ngf": args.ngf, "ndf": args.ndf, "hidden_dim": args.hidden_dim,
        "d_hidden_dim": args.d_hidden_dim or args.hidden_dim,
        "noise_dim": args.noise_dim, "precision": args.precision, "channels_last": bench.channels_last,
        "fused": bench.fused, "compile": args.compile, "diffaug": ",".join(diffaug) or "none",
        "ema_decay": args.ema_decay,
        "steps": args.steps,
        "images_per_sec": round(images_per_sec, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "peak_memory_mb": round(peak_mb, 1),
    }
    print(f"{'device':<28} {'model':<6} {'size':>4} {'batch':>5} {'prec':>4} {'NHWC':>4} {'images/s':>9} "
          f"{'ms/step':>8} {'peak MB':>8}")
    print(f"{row['device'][:28]:<28} {args.model:<6} {args.image_size:>4} {args.batch_size:>5} {args.precision:>4} "
          f"{'yes' if bench.channels_last else 'no':>4} {images_per_sec:>9.1f} {row['ms_per_step']:>8.2f} "
          f"{peak_mb:>8.1f}")
    append_csv(RESULTS, row)
    print(f"appended to {RESULTS}")
    if args.profile:
        profile_steps(bench.step, args.profile, row)


# Operator name fragments -> the kind of work, first match wins (torch's CPU operator names).
KINDS = (
    ("matrix products", ("addmm", "::mm", "bmm", "matmul", "linear", "convolution", "conv")),
    ("dtype casts", ("::to", "_to_copy", "copy_")),
    ("optimizer (Adam)", ("adam", "_foreach")),
    ("EMA", ("lerp",)),
    ("augmentation (translation)", ("gather", "scatter", "index", "pad")),
    ("activations and their gradients", ("relu", "tanh", "sigmoid", "threshold", "softplus", "leaky")),
    ("random numbers", ("randn", "normal", "randint", "randperm", "uniform")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, parts in KINDS if any(p in low for p in parts)), "other (elementwise, reductions)")


def profile_steps(step: Callable[[], torch.Tensor], steps: int, row: dict[str, Any]) -> None:
    """Profile ``steps`` steps; print self CPU time per kind of operator and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: Counter[str] = Counter()
    for e in events:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total
    print(f"\nwhere the time goes, {steps} steps profiled ({total / 1e3 / steps:.1f} ms of operator self time "
          f"per step; the profiler's overhead included):")
    settings = {k: row[k] for k in ("date", "device", "commit", "torch", "model", "batch_size", "hidden_dim",
                                    "precision", "diffaug", "ema_decay")}
    for kind, us in by_kind.most_common():
        print(f"  {kind:<36} {100 * us / total:5.1f}%  {us / 1e3 / steps:6.2f} ms/step")
        append_csv(PROFILE_RESULTS, settings | {"kind": kind, "percent": round(100 * us / total, 2),
                                                "ms_per_step": round(us / 1e3 / steps, 3)})
    print("  top operators:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"    {e.key:<44} {100 * e.self_cpu_time_total / total:5.1f}%  ({kind_of(e.key)})")
    print(f"appended to {PROFILE_RESULTS}")


if __name__ == "__main__":
    main()
