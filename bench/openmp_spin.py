"""The training step under OpenMP spin settings, alone and with copies of itself sharing the CPU.

    python -m bench.openmp_spin                                  # the settings ganlib chose between
    python -m bench.openmp_spin --settings passive,1000,10000 --concurrent 1,2 --precision bf16

torch's CPU kernels run on libgomp threads that spin between parallel regions before they sleep.
How long they spin decides the speed of a GAN step (many small kernels) on an idle machine and
how badly runs sharing the cores slow each other down. Each setting runs the default mlp step
(``bench/ab_step.py``'s measurement: DiffAugment translation and EMA, random batches) in
``--concurrent`` processes started together; a setting is ``passive`` (OMP_WAIT_POLICY=PASSIVE:
no spin), ``default`` (libgomp's own: neither variable set) or a number (GOMP_SPINCOUNT).
ganlib sets GOMP_SPINCOUNT=10000 on import unless the user set either variable (ganlib/__init__.py).
Prints images/s per process and appends rows to ``bench/results/openmp_spin.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench.ab_step import result, start
from bench.common import append_csv, stamp

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "openmp_spin.csv"


def environment(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif setting != "default":
        env["GOMP_SPINCOUNT"] = setting
    return env


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.openmp_spin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="passive,default,3000,10000",
                   help="comma list of passive, default or GOMP_SPINCOUNT numbers")
    p.add_argument("--concurrent", default="1,2", help="comma list: processes sharing the CPU")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=200, help="timed steps per process (40 is enough when "
                   "several share the CPU with a long spin: they crawl)")
    p.add_argument("--csv", type=Path, default=RESULTS)
    args = p.parse_args()
    settings = [s.strip().lower() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in ("passive", "default") and not s.isdigit():
            p.error(f"--settings: {s!r} is not passive, default or a number (a GOMP_SPINCOUNT)")
    try:
        counts = [int(c) for c in args.concurrent.split(",")]
    except ValueError:
        p.error(f"--concurrent {args.concurrent!r}: expected a comma list of integers, e.g. 1,2")

    print(f"{'setting':>8} {'processes':>9} {'images/s each':>14} {'in all':>8}")
    for setting in settings:
        for count in counts:
            steps = args.steps if count == 1 else max(10, args.steps // 5)
            run = {"model": "mlp", "hidden_dim": args.hidden_dim, "batch_size": args.batch_size,
                   "precision": args.precision, "diffaug": ["translation"], "ema_decay": 0.999,
                   "steps": steps, "warmup": 10, "threads": 0}
            children = [start(REPO, run, environment(setting)) for _ in range(count)]
            rates = [result(child, REPO)["images_per_sec"] for child in children]
            each = statistics.median(rates)
            print(f"{setting:>8} {count:>9} {each:>14,.0f} {sum(rates):>8,.0f}", flush=True)
            append_csv(args.csv, {**stamp(), "setting": setting, "processes": count, "batch_size": args.batch_size,
                                  "hidden_dim": args.hidden_dim, "precision": args.precision, "steps": steps,
                                  "images_per_sec_each": round(each, 1), "images_per_sec_all": round(sum(rates), 1)})
    print(f"appended to {args.csv}")


if __name__ == "__main__":
    main()
