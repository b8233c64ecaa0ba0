"""ganlib's dcgan preset against the pytorch/examples DCGAN loop, side by side at identical settings.

    python bench/vs_reference.py --steps 40 --rounds 2

Both train 64-px RGB images with ngf=ndf=64, nz=100, batch 64, Adam 2e-4 (0.5, 0.999), fp32, on
this machine's CPU, in alternating rounds (reference, ganlib, reference, ganlib, ...) so a change
in machine load hits both. The data is the same folder of 64-px PNGs (made once from the embedded
digits, coloured): the reference decodes it with 2 DataLoader workers every epoch
(``bench/reference_dcgan.py``); ganlib prepares it once into its uint8 store and runs its real
training loop (``ganlib.train.train``: batches indexed from the resident store, per-step scalars
flushed every 10 steps, no checkpoints inside the timed window).

Also counts the floating-point operations of one ganlib training step (``FlopCounterMode``) and
reports the achieved rate against ``--peak-gflops`` (2 cores x AVX2 FMA here: about 166 GFLOP/s).
Prints a table and appends a row per round to ``bench/results/vs_reference.csv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import append_csv, commit, device_name, train_step_flops_per_image  # bench/common.py
from PIL import Image
from reference_dcgan import run as run_reference

from ganlib.config import ModelConfig, build_config
from ganlib.data.digits import generate_digits
from ganlib.data.store import prepare_dataset
from ganlib.models import build_models
from ganlib.train import Objective, train

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


def run_ganlib(folder: Path, out: Path, steps: int, warmup: int, tag: str) -> dict[str, float]:
    """ganlib's training loop on the folder; images/s over the flushes after ``warmup`` steps."""
    cfg = build_config({
        "run_id": f"vs-reference-{tag}", "out": str(out), "device": "cpu",
        "data": {"dataset": "folder", "data_root": str(folder), "image_size": SIZE, "channels": "rgb"},
        "model": {"name": "dcgan", "ngf": WIDTH, "ndf": WIDTH, "noise_dim": 100},
        "train": {"steps": warmup + steps, "batch_size": BATCH, "log_every": 10, "ema_decay": 0.0, "diffaug": [],
                  "checkpoint_every": 10**9},
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--peak-gflops", type=float, default=166.0, help="the CPU's FP32 peak, for the fraction")
    args = p.parse_args()

    work = Path(__file__).resolve().parent / "results" / "vs-reference"
    folder = make_folder(work / "images", args.num_images)
    flops = flops_per_image()
    results: dict[str, list[float]] = {"reference": [], "ganlib": []}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for r in range(args.rounds):
            for name in results:
                if name == "reference":
                    ips = run_reference(str(folder), args.steps, warmup=args.warmup)["images_per_sec"]
                else:
                    ips = run_ganlib(folder, Path(tmp), args.steps, args.warmup, f"r{r}")["images_per_sec"]
                results[name].append(ips)
                append_csv(RESULTS, {
                    "date": dt.datetime.now().isoformat(timespec="seconds"),
                    "device": device_name(torch.device("cpu")), "commit": commit(), "torch": torch.__version__,
                    "implementation": name, "round": r, "image_size": SIZE, "batch_size": BATCH, "ngf": WIDTH,
                    "ndf": WIDTH, "steps": args.steps, "images_per_sec": round(ips, 1),
                    "gflop_per_image": round(flops / 1e9, 3),
                    "fraction_of_peak": round(ips * flops / 1e9 / args.peak_gflops, 3)})
                print(f"round {r}: {name:<9} {ips:7.1f} images/s", flush=True)

    ref, ours = statistics.median(results["reference"]), statistics.median(results["ganlib"])
    print(f"\n{'implementation':<16} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8}   (median of {args.rounds} rounds; "
          f"{flops / 1e9:.2f} GFLOP per image per step)")
    for name, ips in (("pytorch/examples", ref), ("ganlib dcgan", ours)):
        print(f"{name:<16} {ips:>9.1f} {ips * flops / 1e9:>8.1f} {ips * flops / 1e9 / args.peak_gflops:>8.1%}")
    print(f"speed-up: {ours / ref:.2f}x   appended to {RESULTS}")


if __name__ == "__main__":
    main()
