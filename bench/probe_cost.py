"""How long the speed probes take before a run starts (``train.precision auto``, ``channels_last auto``, threads).

    python -m bench.probe_cost --model dcgan --size 128        # RGB, batch 128, random images
    python -m bench.probe_cost --model mlp --size 28 --channels 1

Times ``ganlib.training.probe.measured_settings`` on the run's own model, batch and images (random pixels: the
cost does not depend on them) on this CPU, and prints the time and the log lines it would write (the choices and
the timings behind them). Prints a table and appends a row to ``bench/results/probe_cost.csv`` with the date,
device and commit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import append_csv, stamp

RESULTS = Path(__file__).resolve().parent / "results" / "probe_cost.csv"


def main(argv: list[str] | None = None) -> dict:
    from ganlib.config import build_config
    from ganlib.training.probe import measured_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--csv", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cfg = build_config({"data": {"dataset": "folder", "data_root": ".", "image_size": args.size},
                        "model": {"name": args.model}, "train": {"batch_size": args.batch_size}}
                       ).resolved(args.size, args.channels)
    real = torch.randint(0, 256, (args.batch_size, args.channels, args.size, args.size),
                         generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    t0 = time.perf_counter()
    resolved, lines = measured_settings(cfg, None, lambda: real, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    row = {**stamp(torch.device("cpu")), "model": args.model, "size": args.size, "channels": args.channels,
           "batch_size": args.batch_size, "seconds": round(seconds, 1), "precision": resolved.train.precision,
           "channels_last": resolved.train.channels_last, "threads": resolved.train.threads}
    print(f"{'model':<8} {'size':>5} {'batch':>6} {'probe s':>8}  choices")
    print(f"{args.model:<8} {args.size:>5} {args.batch_size:>6} {seconds:>8.1f}  precision {row['precision']}, "
          f"channels_last {row['channels_last']}, threads {row['threads']}")
    for line in lines:
        print("  " + line)
    append_csv(args.csv, row)
    return row


if __name__ == "__main__":
    main()
