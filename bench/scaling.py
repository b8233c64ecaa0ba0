"""Training images/s against batch size, image size and dataset size (resident vs streamed).

    python -m bench.scaling --device cpu                      # 2-core CPU: batch 32..512
    python -m bench.scaling --device cuda --precision bf16 --compile --peak-tflops 790
    python -m bench.scaling --device cpu --quick              # a smoke check, seconds

Three sweeps of ganlib's real ``train_step`` (built by ``bench/common.make_step`` exactly as
``ganlib.training.loop`` builds it; unconditional dcgan, ns loss, Adam 2e-4, no EMA), synthetic images:

- ``batch``: batch sizes at ``--batch-image-size`` (default 64 px RGB, ngf=ndf=64, the
  pytorch/examples DCGAN): 32..4096 on CUDA, 32..512 on the CPU;
- ``size``: image sizes 28, 32, 64, 128 at batch ``--size-batch`` (default 64);
- ``data``: a uint8 store of N images at 64 px in a ``.npy`` memory map (10k and 100k, 1.2 GB for
  100k, in ``--tmp-dir``), resident on the device vs streamed from the map by ``BatchSource``
  (the page cache is warm: the file was just written).

Each point times ``--steps`` steps after ``--warmup`` and reports images/s, ms/step, peak memory,
the FLOPs of a step per image (``FlopCounterMode``: convolutions and matrix products) and the
achieved TFLOP/s, and with ``--peak-tflops`` the fraction of the device's peak (H200: about 790
dense bf16, 67 fp32 without tensor cores; this 2-core AVX-512/AMX CPU: 0.36-0.40 fp32 and about 2.0 bf16
as measured by ``common.matmul_gflops``). A point that runs out
of memory is recorded as ``oom``. Rows go to ``bench/results/scaling.csv`` (date, device, commit,
settings, load average); the plot to ``bench/results/scaling.png``. Needs torch, numpy, pandas and
matplotlib, not pydantic or prefect (run as a module from the repository root, ganlib need not be installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    ModelSpec,
    append_csv,
    make_step,
    peak_memory_mb,
    stamp,
    time_steps,
    train_step_flops_per_image,
)

RESULTS = Path(__file__).resolve().parent / "results"
GPU_BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
CPU_BATCHES = (32, 64, 128, 256, 512)
SIZES = (28, 32, 64, 128)
DATA_SIZES = (10_000, 100_000)
METRICS = ("status", "channels_last", "fused", "images_per_sec", "ms_per_step", "gflop_per_image", "achieved_tflops",
           "fraction_of_peak", "peak_memory_mb", "load_avg")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def random_images(num_images: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, C, size, size) noise: the step's cost does not depend on what the pixels show."""
    return np.random.default_rng(seed).integers(0, 256, (num_images, channels, size, size), dtype=np.uint8)


def memmap_store(path: Path, num_images: int, channels: int, size: int) -> np.ndarray:
    """A ``.npy`` of ``num_images`` random uint8 images written in chunks, opened as a read-only memory map."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(num_images, channels, size, size))
    rng = np.random.default_rng(0)
    for start in range(0, num_images, 8192):
        stop = min(start + 8192, num_images)
        out[start:stop] = rng.integers(0, 256, (stop - start, channels, size, size), dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


class Runner:
    """Times one point at a time and records it (CSV row, printed line)."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.flops: dict[tuple, float] = {}
        self.rows: list[dict[str, Any]] = []
        self.common = {
            **stamp(device), "torch": torch.__version__,
        }

    def spec(self) -> ModelSpec:
        return ModelSpec(name="dcgan", ngf=self.args.ngf, ndf=self.args.ndf, noise_dim=100)

    def flops_per_image(self, spec: ModelSpec, channels: int, size: int) -> float:
        key = (spec, channels, size)
        if key not in self.flops:
            bench = make_step(spec, random_images(8, channels, size), 4, torch.device("cpu"), fused_optimizer="off")
            self.flops[key] = train_step_flops_per_image(bench.generator, bench.discriminator, (channels, size, size),
                                                         spec.noise_dim)
        return self.flops[key]

    def point(self, sweep: str, images: np.ndarray, batch_size: int, data: str = "resident") -> dict[str, Any]:
        a, spec = self.args, self.spec()
        channels, size = int(images.shape[1]), int(images.shape[2])
        row: dict[str, Any] = {
            **self.common, "sweep": sweep, "model": spec.name, "image_size": size, "channels": channels,
            "ngf": spec.ngf, "ndf": spec.ndf, "batch_size": batch_size, "num_images": len(images), "data": data,
            "precision": a.precision, "compile": a.compile, "steps": a.steps,
            **dict.fromkeys(METRICS),  # every row has every column, an out-of-memory one too
        }
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            budget = 0 if data == "streamed" else images.nbytes // 2**20 + 1
            bench = make_step(spec, images, batch_size, self.device, precision=a.precision,
                              channels_last=a.channels_last, fused_optimizer=a.fused_optimizer,
                              compile=a.compile, budget_mb=budget)
            seconds = time_steps(bench.step, a.steps, a.warmup, self.device)
        except torch.cuda.OutOfMemoryError:
            row.update(status="oom")
            print(f"{sweep:<5} size {size:>3} batch {batch_size:>5} {data:<8} N {len(images):>7}: out of memory",
                  flush=True)
            self.rows.append(row)
            return row
        ips = a.steps * batch_size / seconds
        flops = self.flops_per_image(spec, channels, size)
        achieved = ips * flops / 1e12
        row.update(
            status="ok", channels_last=bench.channels_last, fused=bench.fused,
            images_per_sec=round(ips, 1), ms_per_step=round(1000 * seconds / a.steps, 2),
            gflop_per_image=round(flops / 1e9, 4), achieved_tflops=round(achieved, 4),
            fraction_of_peak=round(achieved / a.peak_tflops, 4) if a.peak_tflops else None,
            peak_memory_mb=round(peak_memory_mb(self.device), 1),
            load_avg=round(os.getloadavg()[0], 2),
        )
        peak = f" {row['fraction_of_peak']:>7.1%}" if a.peak_tflops else ""
        print(f"{sweep:<5} size {size:>3} batch {batch_size:>5} {data:<8} N {len(images):>7}: {ips:>9.1f} images/s "
              f"{row['ms_per_step']:>8.2f} ms/step {achieved * 1000:>8.1f} GFLOP/s{peak} "
              f"{row['peak_memory_mb']:>8.0f} MB", flush=True)
        self.rows.append(row)
        return row


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Up to three panels: images/s against batch size, image size, and dataset size (resident vs streamed)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib); the CSV has the numbers",
              file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    panels = [p for p in (("batch", "batch_size", "batch size", True), ("size", "image_size", "image size, px", True),
                          ("data", "num_images", "images in the store", True))
              if any(r["sweep"] == p[0] for r in ok)]  # one panel per sweep that ran
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (sweep, x, label, logx) in zip(axes[0], panels):
        for data in ("resident", "streamed"):
            pts = sorted((r[x], r["images_per_sec"]) for r in ok if r["sweep"] == sweep and r["data"] == data)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=data if sweep == "data" else None)
        xs = sorted({r[x] for r in ok if r["sweep"] == sweep})
        if logx and xs:
            ax.set_xscale("log", base=2 if sweep != "data" else 10)
            ax.set_xticks(xs, [f"{v:,}" for v in xs])
            ax.minorticks_off()
        ax.set_xlabel(label)
        ax.set_ylabel("training images/s")
        ax.grid(True, alpha=0.3)
        if sweep == "data" and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--sweeps", default="batch,size,data", help="which sweeps, comma-separated")
    p.add_argument("--batches", type=_ints, help="batch sizes of the batch sweep (default: 32..4096 on CUDA, "
                   "32..512 on the CPU)")
    p.add_argument("--batch-image-size", type=int, default=64, help="image size of the batch sweep")
    p.add_argument("--sizes", type=_ints, default=SIZES, help="image sizes of the size sweep")
    p.add_argument("--size-batch", type=int, default=64, help="batch size of the size and data sweeps")
    p.add_argument("--data-sizes", type=_ints, default=DATA_SIZES, help="store sizes of the data sweep")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps per point (default 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5, 10 with --compile)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast (CUDA, or the CPU via oneDNN)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="as train.channels_last (auto: on for the conv models)")
    p.add_argument("--fused-optimizer", choices=["auto", "on", "off"], default="auto",
                   help="as train.fused_optimizer (auto: fused Adam where torch has it)")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (each shape compiles anew)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak for the fraction: H200 ~790 (bf16), ~67 (fp32); "
                   "this 2-core CPU ~0.38 (fp32), ~2.0 (bf16)")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the data sweep's memory maps go")
    p.add_argument("--quick", action="store_true", help="a few tiny points: checks the script works")
    p.add_argument("--csv", type=Path, default=None, help="default bench/results/scaling.csv (-quick.csv)")
    p.add_argument("--plot", type=Path, default=None, help="default bench/results/scaling.png (-quick.png)")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    cuda = device.type == "cuda"
    batches = args.batches or (GPU_BATCHES if cuda else CPU_BATCHES)
    if args.quick:
        args.ngf, args.ndf = min(args.ngf, 8), min(args.ndf, 8)
        batches, args.sizes, args.data_sizes = batches[:2], (28, 64), (600,)
        args.size_batch, args.batch_image_size = min(args.size_batch, 32), 32
        args.steps, args.warmup = args.steps or 2, 1 if args.warmup is None else args.warmup
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.compile else 5)
    sweeps = {s.strip() for s in args.sweeps.split(",") if s.strip()}
    name = "scaling-quick" if args.quick else "scaling"  # smoke checks stay out of the real table
    args.csv, args.plot = args.csv or RESULTS / f"{name}.csv", args.plot or RESULTS / f"{name}.png"

    runner = Runner(args, device)
    print(f"{runner.common['device']}, torch {torch.__version__}, {args.precision}, channels_last "
          f"{args.channels_last}, fused {args.fused_optimizer}, compile {args.compile}, {args.steps} steps per point, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if "batch" in sweeps:
        for batch in batches:
            images = random_images(max(4 * batch, 2048 if not args.quick else 2 * batch), args.channels,
                                   args.batch_image_size)
            runner.point("batch", images, batch)
    if "size" in sweeps:
        for size in args.sizes:
            runner.point("size", random_images(max(4 * args.size_batch, 512), args.channels, size), args.size_batch)
    if "data" in sweeps:
        with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="ganlib-scaling-") as tmp:
            for n in args.data_sizes:
                images = memmap_store(Path(tmp) / f"images-{n}.npy", n, args.channels, 64)
                for data in ("resident", "streamed"):
                    runner.point("data", images, args.size_batch, data)
                del images

    for row in runner.rows:
        append_csv(args.csv, row)
    print(f"appended {len(runner.rows)} rows to {args.csv}")
    title = (f"ganlib dcgan ngf={args.ngf} ndf={args.ndf}, {runner.common['device']}, {args.precision}, "
             f"channels_last {args.channels_last}, fused {args.fused_optimizer}, compile {args.compile}, "
             f"{runner.common['commit']}")
    plot(runner.rows, args.plot, title)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
