"""ganlib's dcgan preset against the pytorch/examples DCGAN loop, side by side at identical settings.

    python -m bench.vs_reference --steps 40 --rounds 2 [--bf16]

Both train 64-px RGB images with ngf=ndf=64, nz=100, batch 64, Adam 2e-4 (0.5, 0.999), fp32, on
this machine's CPU, in alternating rounds (reference, ganlib, reference, ganlib, ...) so a change
in machine load hits both. The data is the same folder of 64-px PNGs (made once from the embedded
digits, coloured): the reference decodes it with 2 DataLoader workers every epoch
(``bench/reference_dcgan.py``); ganlib prepares it once into its uint8 store and runs its real
training loop (``ganlib.training.loop.train``: batches indexed from the resident store, per-step scalars
flushed every 10 steps, no checkpoints inside the timed window).

ganlib runs its defaults for these settings (fp32, channels-last on the CPU, fused Adam); ``--bf16``
adds a third contestant, ganlib with ``train.precision=bf16`` (not identical settings: bf16
autocast, which oneDNN runs on AMX where the CPU has it).

Also counts the floating-point operations of one ganlib training step (``FlopCounterMode``) and
reports the achieved rate against the measured dense-matmul rate of the same dtype (4096^2 fp32 or
bf16 matmuls; ``--peak-gflops`` overrides the fp32 one). Prints a table and appends a row per round
to ``bench/results/vs_reference.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.common import append_csv, matmul_gflops, stamp, train_step_flops_per_image
from bench.reference_dcgan import run as run_reference
from ganlib.config import ModelConfig, build_config
from ganlib.data.digits import generate_digits
from ganlib.data.store import prepare_dataset
from ganlib.models import build_models
from ganlib.training.loop import train
from ganlib.training.step import Objective

RESULTS = Path(__file__).resolve().parent / "results" / "vs_reference.csv"
BATCH, SIZE, WIDTH = 64, 64, 64


def make_folder(root: Path, num_images: int) -> Path:
    """``num_images`` 64-px RGB PNGs in one sub-folder per digit class (made once, then reused)."""
    marker = root / f".complete-{num_images}"
    if marker.exists():
        return root
    images, labels = generate_digits(num_images, seed=0, image_size=SIZE)
    rng = np.random.default_rng(0)
    for i, (img, label) in enumerate(zip(images, labels)):
        colour = rng.uniform(0.3, 1.0, size=3)
        rgb = (img.reshape(SIZE, SIZE, 1).astype(np.float32) * colour).astype(np.uint8)
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(folder / f"{i:06d}.png")
    marker.touch()
    return root


def run_ganlib(folder: Path, out: Path, steps: int, warmup: int, tag: str, precision: str = "fp32") -> dict[str, float]:
    """ganlib's training loop on the folder; images/s over the flushes after ``warmup`` steps."""
    cfg = build_config({
        "run_id": f"vs-reference-{tag}", "out": str(out), "device": "cpu",
        "data": {"dataset": "folder", "data_root": str(folder), "image_size": SIZE, "channels": "rgb"},
        "model": {"name": "dcgan", "ngf": WIDTH, "ndf": WIDTH, "noise_dim": 100},
        "train": {"steps": warmup + steps, "batch_size": BATCH, "log_every": 10, "ema_decay": 0.0, "diffaug": [],
                  "checkpoint_every": 10**9, "precision": precision},
    })
    store = prepare_dataset(cfg.data, cfg.out)
    result = train(cfg, store)
    rows = pd.read_parquet(Path(result.run_dir) / "metrics" / "train.parquet")
    timed = rows.loc[rows["step"] > warmup, "images_per_sec"]  # each row holds its flush's rate
    return {"images_per_sec": len(timed) * BATCH / float((BATCH / timed).sum())}


def flops_per_image() -> float:
    """Floating-point operations of one ganlib training step at these settings, per image."""
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="dcgan", ngf=WIDTH, ndf=WIDTH), 3, SIZE)
    return train_step_flops_per_image(g, d, (3, SIZE, SIZE), 100, Objective(ema_decay=0.0))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.vs_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the CPU's fp32 ceiling for the fraction (default: measured 4096^2 matmul rate)")
    p.add_argument("--bf16", action="store_true", help="also time ganlib with train.precision=bf16")
    args = p.parse_args()
    cpu = torch.device("cpu")
    peaks = {"fp32": args.peak_gflops or matmul_gflops(torch.float32, cpu)}
    if args.bf16:
        peaks["bf16"] = matmul_gflops(torch.bfloat16, cpu)
    print("measured matmul ceilings: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
    contestants = {"reference": "fp32", "ganlib": "fp32", **({"ganlib-bf16": "bf16"} if args.bf16 else {})}

    work = Path(__file__).resolve().parent / "results" / "vs-reference"
    folder = make_folder(work / "images", args.num_images)
    flops = flops_per_image()
    results: dict[str, list[float]] = {name: [] for name in contestants}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for r in range(args.rounds):
            for name in results:
                if name == "reference":
                    ips = run_reference(str(folder), args.steps, warmup=args.warmup)["images_per_sec"]
                else:
                    ips = run_ganlib(folder, Path(tmp), args.steps, args.warmup, f"{name}-r{r}",
                                     contestants[name])["images_per_sec"]
                results[name].append(ips)
                append_csv(RESULTS, {
                    **stamp(torch.device("cpu")), "torch": torch.__version__,
                    "implementation": name, "precision": contestants[name], "round": r, "image_size": SIZE,
                    "batch_size": BATCH, "ngf": WIDTH,
                    "ndf": WIDTH, "steps": args.steps, "images_per_sec": round(ips, 1),
                    "gflop_per_image": round(flops / 1e9, 3),
                    "peak_gflops": round(peaks[contestants[name]], 1),
                    "fraction_of_peak": round(ips * flops / 1e9 / peaks[contestants[name]], 3)})
                print(f"round {r}: {name:<9} {ips:7.1f} images/s", flush=True)

    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"\n{'implementation':<18} {'images/s':>9} {'vs ref':>7} {'GFLOP/s':>8} {'of peak':>8}   (median of "
          f"{args.rounds} rounds; {flops / 1e9:.2f} GFLOP per image per step; peak = measured matmul rate)")
    labels = {"reference": "pytorch/examples", "ganlib": "ganlib dcgan", "ganlib-bf16": "ganlib dcgan bf16"}
    for name, ips in medians.items():
        rate = ips * flops / 1e9
        print(f"{labels[name]:<18} {ips:>9.1f} {ips / medians['reference']:>6.2f}x {rate:>8.1f} "
              f"{rate / peaks[contestants[name]]:>8.1%}")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
