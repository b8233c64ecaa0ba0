"""Training throughput of the real training step on synthetic data.

    python bench/throughput.py --device cpu --image-size 64 --batch-size 64 --ngf 64 --ndf 64 --steps 20
    # the default run's model and batch:
    python bench/throughput.py --device cpu --image-size 28 --channels 1 --ngf 32 --ndf 32 --batch-size 128

Imports ganlib's own ``train_step``, ``BatchOrder`` and models, so what is timed is what trains.
Prints one table row (images/s after warm-up, ms/step, peak memory) and appends it to
``bench/results/throughput.csv`` with the date, device, commit and settings. Needs neither prefect
nor pydantic (``PYTHONPATH=.`` where ganlib is not installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import time
from pathlib import Path

import torch
from common import ModelSpec, append_csv, commit, device_name  # bench/common.py (scripts run from bench/)

from ganlib.models import build_models
from ganlib.train import BatchOrder, adam_implementation, to_unit_range, train_step

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="dcgan", choices=["mlp", "dcgan"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--noise-dim", type=int, default=100)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--num-images", type=int, default=2048, help="synthetic dataset size")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for models and batches")
    p.add_argument("--fused-optimizer", choices=["auto", "on", "off"], default="auto",
                   help="as train.fused_optimizer: auto is fused Adam where torch has it, off is foreach")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    g, d = build_models(ModelSpec(name=args.model, ngf=args.ngf, ndf=args.ndf, noise_dim=args.noise_dim),
                        args.channels, args.image_size)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    g.to(device, memory_format=fmt).train()
    d.to(device, memory_format=fmt).train()
    impl = adam_implementation(args.fused_optimizer, device)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
    size = (max(args.num_images, args.batch_size), args.channels, args.image_size, args.image_size)
    images = torch.randint(0, 256, size, dtype=torch.uint8, device=device)
    order = BatchOrder(len(images), args.batch_size, seed=0, device=device)
    noise = torch.Generator(device=device).manual_seed(1)

    def step() -> torch.Tensor:
        real = to_unit_range(images[order.next()]).contiguous(memory_format=fmt)
        z = torch.randn(args.batch_size, args.noise_dim, device=device, generator=noise)
        return train_step(g, d, opt_g, opt_d, real, z)

    for _ in range(args.warmup):
        step()
    out = step()
    out.cpu()  # synchronise before starting the clock
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = step()
    out.cpu()
    seconds = time.perf_counter() - t0

    images_per_sec = args.steps * args.batch_size / seconds
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    row = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(device),
        "commit": commit(),
        "torch": torch.__version__,
        "model": args.model, "image_size": args.image_size, "channels": args.channels,
        "batch_size": args.batch_size, "ngf": args.ngf, "ndf": args.ndf, "noise_dim": args.noise_dim,
        "channels_last": args.channels_last, "fused": "fused" in impl, "steps": args.steps,
        "images_per_sec": round(images_per_sec, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "peak_memory_mb": round(peak_mb, 1),
    }
    print(f"{'device':<28} {'model':<6} {'size':>4} {'batch':>5} {'ngf/ndf':>7} {'images/s':>9} "
          f"{'ms/step':>8} {'peak MB':>8}")
    print(f"{row['device'][:28]:<28} {args.model:<6} {args.image_size:>4} {args.batch_size:>5} "
          f"{args.ngf:>3}/{args.ndf:<3} {images_per_sec:>9.1f} {row['ms_per_step']:>8.2f} {peak_mb:>8.1f}")
    append_csv(RESULTS, row)
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
