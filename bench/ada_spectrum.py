"""Does ADA's resampling hide fine detail from the discriminator? Two measurements.

    python -m bench.ada_spectrum                          # the pipeline's high-frequency retention
    python -m bench.ada_spectrum --runs RUN_DIR RUN_DIR   # + the samples' power spectra against their real images

1. **Retention.** ADA's geometric transforms (``ganlib.training.ada``) resample almost every image once p is
   past 0.3 (fractional translation, scaling, rotation), and interpolation is a low-pass filter: detail near
   the pixel scale reaches D attenuated, so a generator is penalised less for getting it wrong. Stripe patterns
   of period 2 (the finest an image holds), 3, 4 and 8 pixels go through the geometric part of the pipeline at
   several p, with grid_sample's bilinear (what training uses by default) and bicubic interpolation at the
   image's own resolution, and bilinear at twice it between Lanczos filters ('bilinear 2x', what
   ``--ada-supersample`` uses); the table gives the
   median fraction of high-pass energy (the image minus its 3x3 box blur, away from the borders) that survives,
   the share of images keeping under a quarter of it, and the resampling's forward and backward time.
2. **Spectra** (``--runs``): each run's EMA generator at its last checkpoint (or ``--step``) makes
   ``--num-samples`` images; their radial power spectrum, divided by that of as many of the run's real images
   (a fixed random pick), per frequency (cycles per image). 1 everywhere is a generator with the real images'
   texture; above 1 at high frequencies is texture the real images do not have.

Prints both tables; appends the rows to ``bench/results/ada_spectrum.csv`` with date, device and commit.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import append_csv, stamp
from ganlib.data.store import load_store, prepare_dataset
from ganlib.runs.checkpoint import list_checkpoints
from ganlib.runs.paths import RunDir
from ganlib.sampling import fixed_noise, generate, load_generator, to_unit_range
from ganlib.training.ada import geometric_matrices, resample

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "ada_spectrum.csv"
# (name, grid_sample mode, supersampled): the ways ganlib.training.ada.resample can interpolate
MODES = {"bilinear": ("bilinear", False), "bicubic": ("bicubic", False), "bilinear 2x": ("bilinear", True)}


def stripes(period: int, size: int) -> torch.Tensor:
    """(size, size) vertical stripes in [-1, 1]: square waves of period 2 or 4 px, a sine of other periods (a
    square wave's harmonics would sit above the image's highest frequency)."""
    x = torch.arange(size, dtype=torch.float32)
    if period in (2, 4):
        row = ((x // (period // 2)) % 2) * 2 - 1
    else:
        row = torch.sin(x * 2 * math.pi / period)
    return row.expand(size, size).clone()


def high_pass_energy(x: torch.Tensor, margin: int) -> torch.Tensor:
    """(N,) mean squared difference between each image and its 3x3 box blur, ``margin`` px from the borders."""
    blur = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return (x - blur)[..., margin:-margin, margin:-margin].pow(2).mean(dim=(1, 2, 3))


def retention(period: int, p: float, mode: str, n: int = 512, size: int = 64, seed: int = 1) -> dict[str, float]:
    """How much of a stripe pattern's high-pass energy the geometric pipeline at ``p`` keeps, by ``mode``."""
    x = stripes(period, size).expand(n, 3, size, size).clone()
    mats = geometric_matrices(n, size, torch.tensor(p), x.device, torch.Generator().manual_seed(seed))
    kept = high_pass_energy(resample(x, mats, *MODES[mode]), size // 8) / high_pass_energy(x, size // 8)
    return {"median_kept": float(kept.median()), "share_below_quarter": float((kept < 0.25).float().mean())}


def resample_ms(mode: str, n: int = 128, size: int = 64, repeats: int = 5) -> float:
    """Forward and backward time of one resampling of (n, 3, size, size) images, in ms (median)."""
    x = torch.randn(n, 3, size, size, requires_grad=True)
    mats = geometric_matrices(n, size, torch.tensor(1.0), x.device, torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        resample(x, mats, *MODES[mode]).sum().backward()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[1:]))


def radial_power(x: torch.Tensor) -> torch.Tensor:
    """(S // 2 + 1,) mean power of images (N, C, S, S) at each integer radius of the centred 2-D spectrum
    (cycles per image; S // 2 is the highest), each image's mean removed."""
    x = x.double() - x.double().mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs().pow(2).mean(dim=(0, 1))
    s = x.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s) - s // 2, torch.arange(s) - s // 2, indexing="ij")
    radius = (yy.pow(2) + xx.pow(2)).double().sqrt().round().long()
    return torch.stack([power[radius == k].mean() for k in range(s // 2 + 1)])


def run_spectrum(run_dir: Path, step: int | None, num_samples: int) -> tuple[int, torch.Tensor]:
    """(the checkpoint's step, the radial power of its EMA generator's samples over that of the real images)."""
    cfg = RunDir(run_dir).load_config()
    checkpoints = dict(list_checkpoints(RunDir(run_dir).checkpoints))
    if not checkpoints:
        raise SystemExit(f"{run_dir} has no checkpoints")
    step = max(checkpoints) if step is None else step
    if step not in checkpoints:
        raise SystemExit(f"{run_dir} has no checkpoint at step {step}; it has {sorted(checkpoints)}")
    generator, _ = load_generator(checkpoints[step])
    store = load_store(prepare_dataset(cfg.data, cfg.out))
    # a fixed random pick: a store may be in class order
    pick = np.sort(np.random.default_rng(0).permutation(len(store.images))[:num_samples])
    real = to_unit_range(store.images[pick])
    fake = generate(generator, fixed_noise(num_samples, cfg.model.noise_dim, 0))
    return step, radial_power(fake) / radial_power(real)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m bench.ada_spectrum", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probabilities", default="0.2,0.55,0.8", help="ADA p values of the retention table")
    p.add_argument("--periods", default="2,3,4,8", help="stripe periods in pixels")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="runs whose samples' spectra to show")
    p.add_argument("--step", type=int, default=None, help="the runs' checkpoint (default: each run's last)")
    p.add_argument("--num-samples", type=int, default=600)
    p.add_argument("--csv", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    header = stamp(torch.device("cpu"))
    rows = []
    ms = {mode: resample_ms(mode, size=args.size) for mode in MODES}
    print(f"high-pass energy kept by ADA's geometric resampling ({args.size} px; median over 512 images; "
          f"share keeping < 25%)")
    print(f"{'period':>6} {'p':>5} " + " ".join(f"{m:>20}" for m in MODES))
    for period in map(int, args.periods.split(",")):
        for prob in map(float, args.probabilities.split(",")):
            kept = {m: retention(period, prob, m, size=args.size) for m in MODES}
            print(f"{period:>6} {prob:>5.2f} " + " ".join(
                f"{kept[m]['median_kept']:>12.3f} ({kept[m]['share_below_quarter']:>5.2f})" for m in MODES))
            for m in MODES:
                rows.append({**header, "part": "retention", "period": period, "p": prob, "mode": m, **kept[m],
                             "resample_ms": round(ms[m], 2)})
    print("resampling 128 images forward and backward: " + ", ".join(f"{m} {ms[m]:.1f} ms" for m in MODES))
    if args.runs:
        bins = [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]
        print(f"\nsamples' radial power over the real images' (cycles per image: {' '.join(map(str, bins))})")
        for run in map(Path, args.runs):
            step, ratio = run_spectrum(run, args.step, args.num_samples)
            shown = [b for b in bins if b < len(ratio)]
            print(f"{run.name[:40]:<40} step {step:>6}: " + " ".join(f"{ratio[b]:5.2f}" for b in shown))
            rows.append({**header, "part": "spectrum", "run": run.name, "step": step,
                         **{f"ratio_{b}": round(float(ratio[b]), 4) for b in shown}})
    for row in rows:
        append_csv(args.csv, row)
    print(f"\nappended to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
