"""Dataset preparation throughput and peak memory on a folder of PNGs the benchmark makes itself.

    python -m bench.prepare                                   # 50,000 32x32 PNGs -> 32 px store, all cores
    python -m bench.prepare --num-images 10000,50000,100000   # memory must not grow with the count
    python -m bench.prepare --workers 1,2 --image-size 64     # one core vs all; with resampling

The images (RGB 32x32 by default: smooth gradients plus noise, so they compress like photos, not
like flat colour) are written once to --images-dir and reused. Each measurement runs
``ganlib.data.store.prepare_dataset`` in a fresh process that never imports torch, exactly as
preparation runs, and reports

- images/s: images prepared per second of wall time (listing, fingerprint, decode, write, hash,
  validation, grid, manifest: all of it);
- peak RSS: the preparing process's maximum resident set (``ru_maxrss``), and the largest decoding
  worker's (forked workers share the parent's pages, which count in both);
- the baseline: the same process's RSS after imports, before preparing.

Prints a table and appends each row to ``bench/results/prepare.csv``. Targets (issue #3): at least
2,000 images/s on a 2-core machine and peak RSS under 500 MB.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "prepare.csv"
REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from pathlib import Path
from ganlib.config import DataConfig
from ganlib.data.store import prepare_dataset

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

root, out, size, channels, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
baseline = rss_mb()
t0 = time.perf_counter()
cfg = DataConfig(dataset="folder", data_root=root, image_size=size, channels=channels)
path = prepare_dataset(cfg, Path(out), workers=workers)
seconds = time.perf_counter() - t0
manifest = json.loads((path / "manifest.json").read_text())
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "count": manifest["count"], "shape": manifest["shape"],
                  "cpu_main_s": me.ru_utime + me.ru_stime, "cpu_workers_s": kids.ru_utime + kids.ru_stime,
                  "workers": manifest["workers"], "baseline_mb": baseline,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_images(directory: Path, count: int, size: int) -> Path:
    """``count`` RGB PNGs of ``size`` px in ``directory`` (made once; a marker file says it is complete)."""
    from PIL import Image

    marker = directory / ".complete"
    if marker.is_file():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    t0 = time.perf_counter()
    for i in range(count):
        fx, fy, phase = rng.uniform(0.5, 4, 3)
        wave = (x * fx + y * fy) / size * 6.28 + phase
        base = np.stack([128 + 100 * np.sin(wave + k) for k in range(3)], -1)
        noise = rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(directory / f"{i:06d}.png")
    marker.touch()
    print(f"made {count} {size}x{size} PNGs in {directory} ({time.perf_counter() - t0:.0f} s)")
    return directory


def measure(images: Path, image_size: int, channels: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ganlib-bench-prepare-") as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(images), out, str(image_size), channels,
                               str(workers)], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"preparation failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", default="50000", help="comma-separated counts (default 50000)")
    p.add_argument("--png-size", type=int, default=32, help="side of the generated PNGs (default 32)")
    p.add_argument("--image-size", type=int, default=32, choices=[28, 32, 64], help="prepared size (32)")
    p.add_argument("--channels", default="auto", choices=["auto", "grayscale", "rgb"])
    p.add_argument("--workers", default="0", help="comma-separated decoding processes (default 0: all cores)")
    p.add_argument("--images-dir", type=Path, default=Path(tempfile.gettempdir()) / "ganlib-bench-prepare",
                   help="where the generated PNGs are kept between runs")
    args = p.parse_args()

    from ganlib.data.writer import available_cores

    cores = available_cores()
    rows = []
    header = (f"{'images':>7} {'png':>4} {'size':>4} {'workers':>7} {'seconds':>8} {'images/s':>9} "
              f"{'CPU s main/workers':>18} {'peak RSS MB':>11} {'worker peak MB':>14} {'baseline MB':>11}")
    for count in (int(c) for c in args.num_images.split(",")):
        images = make_images(args.images_dir / f"{count}x{args.png_size}", count, args.png_size)
        for workers in (int(w) or cores for w in args.workers.split(",")):
            r = measure(images, args.image_size, args.channels, workers)
            assert not r["torch_imported"], "preparation imported torch"
            rows.append({
                "date": dt.datetime.now().isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()} x{cores} cores",
                "commit": _commit(),
                "num_images": r["count"], "png_size": args.png_size, "image_size": args.image_size,
                "shape": "x".join(map(str, r["shape"])), "workers": r["workers"],
                "seconds": round(r["seconds"], 2),
                "cpu_main_s": round(r["cpu_main_s"], 2), "cpu_workers_s": round(r["cpu_workers_s"], 2),
                "images_per_sec": round(r["count"] / r["seconds"], 1),
                "peak_rss_mb": round(r["peak_mb"], 1),
                "worker_peak_rss_mb": round(r["worker_peak_mb"], 1),
                "baseline_rss_mb": round(r["baseline_mb"], 1),
            })
    print(header)
    for row in rows:
        print(f"{row['num_images']:>7} {row['png_size']:>4} {row['image_size']:>4} {row['workers']:>7} "
              f"{row['seconds']:>8.2f} {row['images_per_sec']:>9.1f} "
              f"{row['cpu_main_s']:>9.1f}/{row['cpu_workers_s']:<8.1f} {row['peak_rss_mb']:>11.1f} "
              f"{row['worker_peak_rss_mb']:>14.1f} {row['baseline_rss_mb']:>11.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with open(RESULTS, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended to {RESULTS}  (targets: >= 2000 images/s, peak RSS < 500 MB)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
