"""On a GPU: does bf16 (with channels-last, fused Adam, torch.compile) train like fp32, and how fast?

    PYTHONPATH=. python3 tests/gpu/gpu_checks.py                       # the GPU machine: a few minutes
    PYTHONPATH=. python3 tests/gpu/gpu_checks.py --device cpu --quick  # checks the script itself (no compile)
    .venv/bin/python -m pytest tests/gpu                # both as tests: CUDA's skipped without CUDA (marks: gpu, slow)

Run from the repository root: ``PYTHONPATH=.`` makes ``bench.common`` (and ganlib) importable, since
this file is run by path (``tests/`` is not an importable package: torch-fidelity installs a
top-level package named ``tests`` that would shadow it). ``tests/gpu/test_gpu_checks.py`` runs it.

Numerics. The same dcgan (``--image-size`` 64, ngf=ndf=64, batch 64), the same initial weights,
embedded digits and latents are trained ``--steps`` (200) steps with ganlib's real ``train_step``
in each variant:

    fp32            reference: fp32 with TF32 off, NCHW, foreach Adam
    fp32-reseeded   the reference with other weights, data order and latents: the run-to-run spread
    fp32+cl+fused   channels-last and fused Adam (TF32 off)
    bf16            autocast to bfloat16 (TF32 on), NCHW, foreach Adam
    bf16+cl+fused   ... with channels-last and fused Adam (training's CUDA defaults with --precision bf16)
    bf16+cl+fused+compile

and checked against the reference: every loss finite; the first step (same weights, same batch:
rounding only) within ``--first-step-tol``; the means over the last ``--window`` steps of d_loss,
g_loss, D(x), D(G(z)) and the sample spread within max(``--spread-factor`` x the reseeded run's
distance, 0.1 + 0.1 |reference|). GAN training amplifies any rounding difference within tens of
steps, so later steps are compared as statistics, against how much a different seed moves them.

Speed: images/s of each variant at ``--batches`` (64, 512, 2048) on random images resident on the
device. Prints both tables, appends rows to ``bench/results/gpu_checks.csv`` (``--csv``; with the
benchmarks' results, as the speed table is one), and exits 1 when a numerics check fails. Needs torch
and numpy only (not pydantic or prefect, which the GPU machines lack).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from bench.common import ModelSpec, append_csv, commit, device_name, make_step, time_steps
    from ganlib.data.digits import generate_digits
    from ganlib.training.health import METRIC_COLUMNS
except ModuleNotFoundError as err:  # run by path without the repository root on sys.path
    if err.name not in ("bench", "ganlib"):
        raise
    raise SystemExit(f"no module named {err.name!r}: run this from the repository root as "
                     "PYTHONPATH=. python3 tests/gpu/gpu_checks.py") from None

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "gpu_checks.csv"


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "fp32"
    channels_last: str = "off"
    fused_optimizer: str = "off"
    compile: bool = False
    seed: int = 0


VARIANTS = (
    Variant("fp32"),
    Variant("fp32-reseeded", seed=1),
    Variant("fp32+cl+fused", channels_last="on", fused_optimizer="on"),
    Variant("bf16", precision="bf16"),
    Variant("bf16+cl+fused", precision="bf16", channels_last="on", fused_optimizer="on"),
    Variant("bf16+cl+fused+compile", precision="bf16", channels_last="on", fused_optimizer="on", compile=True),
)


def runnable(v: Variant, device: torch.device) -> str | None:
    """Why ``v`` cannot run on ``device`` (None: it can)."""
    if v.precision == "bf16" and device.type not in ("cuda", "cpu"):
        return "bf16 autocast runs on CUDA and the CPU in ganlib"
    if v.compile and device.type != "cuda":
        return "compile is checked on CUDA only"
    return None


def trajectory(v: Variant, images: np.ndarray, args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """Per-step (d_loss, g_loss, D(x), D(G(z)), fake_std), float32 (steps, 5) on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # bf16 turns them on
    spec = ModelSpec(name="dcgan", ngf=args.ngf, ndf=args.ndf)
    bench = make_step(spec, images, args.batch_size, device, precision=v.precision, channels_last=v.channels_last,
                      fused_optimizer=v.fused_optimizer, compile=v.compile, seed=v.seed)
    out = torch.stack([bench.step() for _ in range(args.steps)])  # one host sync, at the end
    return out.float().cpu()


def compare(name: str, run: torch.Tensor, ref: torch.Tensor, spread: torch.Tensor,
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per check of ``run`` against the reference ``ref``; ``spread``: the reseeded run's window means."""
    finite = bool(torch.isfinite(run).all())
    checks = [{"variant": name, "check": "all finite", "value": float(not finite), "tolerance": 0.0, "ok": finite,
               "reference": None, "run": None}]
    for i in (0, 1):  # step 0's losses: the same weights and batch, so only rounding differs
        r, x = float(ref[0, i]), float(run[0, i])
        checks.append({"variant": name, "check": f"first step {METRIC_COLUMNS[i]}", "value": abs(x - r),
                       "tolerance": args.first_step_tol, "ok": abs(x - r) <= args.first_step_tol,
                       "reference": r, "run": x})
    w = args.window
    for i, metric in enumerate(METRIC_COLUMNS):
        r, x, s = float(ref[-w:, i].mean()), float(run[-w:, i].mean()), float(spread[i])
        tol = max(args.spread_factor * abs(s - r), 0.1 + 0.1 * abs(r))
        checks.append({"variant": name, "check": f"last {w} steps mean {metric}", "value": abs(x - r),
                       "tolerance": tol, "ok": abs(x - r) <= tol, "reference": r, "run": x})
    return checks


def main() -> None:
    p = argparse.ArgumentParser(prog="python tests/gpu/gpu_checks.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64, help="batch of the numerics runs")
    p.add_argument("--steps", type=int, default=200, help="steps of each numerics run")
    p.add_argument("--window", type=int, default=50, help="last steps averaged for the statistics")
    p.add_argument("--first-step-tol", type=float, default=0.05, help="largest |loss difference| at step 0")
    p.add_argument("--spread-factor", type=float, default=3.0,
                   help="a variant may differ from fp32 by this many times the reseeded run's difference")
    p.add_argument("--batches", default="64,512,2048", help="batch sizes timed, comma-separated")
    p.add_argument("--speed-steps", type=int, default=30)
    p.add_argument("--speed-warmup", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    p.add_argument("--csv", type=Path, default=None, help="default bench/results/gpu_checks.csv")
    args = p.parse_args()
    if args.quick:
        args.image_size, args.num_images, args.ngf, args.ndf = 28, 256, 8, 8
        args.batch_size, args.steps, args.window, args.batches = 32, 12, 4, "32"
        args.speed_steps, args.speed_warmup = 3, 1
    args.csv = args.csv or RESULTS.with_name("gpu_checks-quick.csv" if args.quick else "gpu_checks.csv")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: these checks are for the GPU machine (--device cpu --quick checks them)")
    common = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": device_name(device),
              "commit": commit(), "torch": torch.__version__}
    print(f"{common['device']}, torch {torch.__version__}, {common['commit']}", flush=True)

    images, _ = generate_digits(args.num_images, seed=0, image_size=args.image_size)
    variants = [v for v in VARIANTS if runnable(v, device) is None]
    for v in VARIANTS:
        if runnable(v, device) is not None:
            print(f"skipped {v.name}: {runnable(v, device)}")
    runs = {}
    for v in variants:
        runs[v.name] = trajectory(v, images, args, device)
        print(f"{v.name:<24} {args.steps} steps: last-{args.window} means "
              + " ".join(f"{m} {x:.3f}" for m, x in zip(METRIC_COLUMNS, runs[v.name][-args.window:].mean(0).tolist())),
              flush=True)
    ref, spread = runs["fp32"], runs["fp32-reseeded"][-args.window:].mean(0)
    checks = [c for v in variants if v.name not in ("fp32", "fp32-reseeded")
              for c in compare(v.name, runs[v.name], ref, spread, args)]
    print(f"\n{'variant':<24} {'check':<28} {'|difference|':>12} {'tolerance':>10}")
    for c in checks:
        print(f"{c['variant']:<24} {c['check']:<28} {c['value']:>12.4f} {c['tolerance']:>10.4f}"
              f"{'' if c['ok'] else '   OUT OF TOLERANCE'}")
        append_csv(args.csv, {**common, "kind": "numerics", "image_size": args.image_size, "ngf": args.ngf,
                              "batch_size": args.batch_size, "steps": args.steps, **c, "images_per_sec": None})

    print(f"\n{'variant':<24} {'batch':>6} {'images/s':>10} {'ms/step':>8}")
    speed = np.random.default_rng(0).integers(0, 256, (4 * max(int(b) for b in args.batches.split(",")), 3,
                                                       args.image_size, args.image_size), dtype=np.uint8)
    for v in variants:
        if v.name == "fp32-reseeded":
            continue
        for batch in (int(b) for b in args.batches.split(",")):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            bench = make_step(ModelSpec(name="dcgan", ngf=args.ngf, ndf=args.ndf), speed, batch, device,
                              precision=v.precision, channels_last=v.channels_last,
                              fused_optimizer=v.fused_optimizer, compile=v.compile)
            seconds = time_steps(bench.step, args.speed_steps, args.speed_warmup, device)
            ips = args.speed_steps * batch / seconds
            print(f"{v.name:<24} {batch:>6} {ips:>10.1f} {1000 * seconds / args.speed_steps:>8.2f}", flush=True)
            append_csv(args.csv, {**common, "kind": "speed", "image_size": args.image_size, "ngf": args.ngf,
                                  "batch_size": batch, "steps": args.speed_steps, "variant": v.name, "check": None,
                                  "value": None, "tolerance": None, "ok": None, "reference": None, "run": None,
                                  "images_per_sec": round(ips, 1)})
    failed = [c for c in checks if not c["ok"]]
    print(f"\nappended to {args.csv}")
    if failed:
        print(f"FAIL: {len(failed)} of {len(checks)} numerics checks out of tolerance", file=sys.stderr)
        sys.exit(1)
    print(f"PASS: {len(checks)} numerics checks within tolerance")


if __name__ == "__main__":
    main()
