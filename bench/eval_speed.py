"""Time to evaluate one checkpoint: the domain feature space, and Inception-v3 (random weights).

    python -m bench.eval_speed                                    # MNIST test digits if present, else digits
    python -m bench.eval_speed --num-samples 10000 --inception-samples 500   # Inception on a CPU: a sample
    python -m bench.eval_speed --device cuda --inception-samples 10000

Trains a default-size DCGAN for a few steps (what is timed is evaluation, so its quality does not
matter), then runs the project's own ``evaluate_run`` on its one checkpoint, one generator:

- ``domain cold``: the first evaluation, training the domain classifier and computing the real
  data's reference (features, statistics, k-NN radii, floors, memorisation baseline);
- ``domain``: the checkpoint scored again (``rescore``) from the cached reference: generation, one
  classifier pass, FD, KID, IS, precision/recall/density/coverage and the pixel memorisation check;
- ``inception cold`` / ``inception``: the same with ``eval.inception='on'`` and a randomly initialised
  Inception-v3 in torch-fidelity's layout (its cost is the real network's; its numbers mean nothing),
  at ``--inception-samples`` samples (on a CPU, 10,000 take most of an hour: time a sample and read
  the per-10,000 column, a linear extrapolation).

Then breaks one domain evaluation down by step, calling the same functions. Prints a table and
appends every row to ``bench/results/eval_speed.csv`` with the date, device, commit, load average
and settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import append_csv, stamp
from ganlib.config import build_config
from ganlib.data.store import load_store, prepare_dataset
from ganlib.evaluation.classifier import classify
from ganlib.evaluation.evaluate import EVAL_NOISE_OFFSET, domain_reference, evaluate_run, pixel_reference, real_split
from ganlib.evaluation.inception import write_random_weights
from ganlib.evaluation.memorisation import nearest_training, pixel_vectors
from ganlib.evaluation.metrics import (
    classifier_inception_score,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    precision_recall_density_coverage,
)
from ganlib.runs.device import resolve_device
from ganlib.sampling import fixed_noise, generate, load_generator, to_uint8
from ganlib.training.loop import train

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "eval_speed.csv"
MNIST = ROOT.parent.parent / "shared" / "data" / "mnist"


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _evaluate(cfg_data: dict[str, Any], store_dir: Path, rescore: bool) -> tuple[float, float]:
    """(wall seconds of evaluate_run, the row's own seconds: generation and scoring only)."""
    cfg = build_config(cfg_data)
    table, seconds = _timed(evaluate_run, cfg, store_dir, rescore=rescore)
    return seconds, float(table["seconds"].iloc[-1])


def breakdown(cfg_data: dict[str, Any], store_dir: Path) -> dict[str, float]:
    """One domain-space evaluation step by step, with ganlib's own functions (the reference is cached)."""
    cfg = build_config(cfg_data)
    ev, device = cfg.eval, resolve_device(cfg.device)
    store = load_store(store_dir)
    classifier, reference = domain_reference(store, cfg.out, ev, cfg.seed, device)
    generator, meta = load_generator(cfg.run_dir / "checkpoints" / f"step_{cfg.train.steps:06d}.pt", device)
    z = fixed_noise(ev.num_samples, meta["config"]["model"]["noise_dim"], cfg.seed + EVAL_NOISE_OFFSET)
    parts: dict[str, float] = {}
    images, parts["generate"] = _timed(generate, generator, z, ev.batch_size)
    (features, probs), parts["classifier features"] = _timed(classify, classifier, images, ev.batch_size)
    t0 = time.perf_counter()
    frechet_distance(*feature_statistics(features), reference["mu"], reference["sigma"])
    classifier_inception_score(probs)
    parts["FD + IS"] = time.perf_counter() - t0
    _, parts["KID"] = _timed(kernel_inception_distance, features, reference["features"], ev.kid_subsets,
                             ev.kid_subset_size)
    _, parts["precision/recall/density/coverage"] = _timed(
        precision_recall_density_coverage, reference["features"].double(), features.double(), ev.nearest_k,
        reference["radii"])
    ref_idx, _ = real_split(len(store.images), ev.num_real or ev.num_samples)
    pixel_reference(store, cfg.out, ev)
    _, parts["memorisation (pixels)"] = _timed(nearest_training, pixel_vectors(to_uint8(images)),
                                               pixel_vectors(torch.from_numpy(store.images[ref_idx])))
    return parts


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.eval_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-samples", type=int, default=10_000, help="samples of the domain evaluation")
    p.add_argument("--inception-samples", type=int, default=None,
                   help="samples of the Inception evaluation (default: 10000 on CUDA, 500 on a CPU; 0 skips it)")
    p.add_argument("--train-steps", type=int, default=20, help="training steps before the one checkpoint")
    p.add_argument("--dataset", choices=("auto", "mnist", "digits"), default="auto",
                   help="mnist: the real test digits (10,000: a 5,000-image reference); digits: the embedded "
                   "generator's 20,000 (a 10,000-image reference); auto: mnist when present")
    p.add_argument("--out", type=Path, default=None, help="output root (default: a temporary directory)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    inception_samples = args.inception_samples
    if inception_samples is None:
        inception_samples = 10_000 if device.type == "cuda" else 500
    have_mnist = (MNIST / "t10k-images-idx3-ubyte.gz").is_file()
    use_mnist = args.dataset == "mnist" or (args.dataset == "auto" and have_mnist)
    data = {"dataset": "mnist", "data_root": str(MNIST)} if use_mnist else {"dataset": "digits"}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "out"
        base = {"run_id": "eval-speed", "out": str(out), "device": args.device, "data": data,
                "train": {"steps": args.train_steps, "checkpoint_every": args.train_steps, "log_every": 10}}
        cfg = build_config(base)
        store_dir = prepare_dataset(cfg.data, cfg.out)
        train(cfg, store_dir)
        domain = {**base, "eval": {"num_samples": args.num_samples, "generators": "selected"}}
        rows = []
        header = {**stamp(device), "torch": torch.__version__, "dataset": data["dataset"],
                 "images": len(load_store(store_dir).images)}

        def record(label: str, num_samples: int, wall: float, row_seconds: float) -> None:
            rows.append({**header, "what": label, "num_samples": num_samples, "wall_s": round(wall, 2),
                         "row_s": round(row_seconds, 2), "row_s_per_10k": round(row_seconds * 10_000 / num_samples, 1),
                         "load_avg_1m": round(os.getloadavg()[0], 2)})

        record("domain cold", args.num_samples, *_evaluate(domain, store_dir, rescore=True))
        record("domain", args.num_samples, *_evaluate(domain, store_dir, rescore=True))
        parts = breakdown(domain, store_dir)
        if inception_samples:
            weights = Path(out) / "random-inception.pth"
            sha = write_random_weights(weights)
            inception = {**base, "eval": {"num_samples": inception_samples, "num_real": inception_samples,
                                          "generators": "selected", "inception": "on",
                                          "inception_weights": str(weights), "inception_weights_sha256": sha}}
            record("inception cold", inception_samples, *_evaluate(inception, store_dir, rescore=True))
            record("inception", inception_samples, *_evaluate(inception, store_dir, rescore=True))

    print(f"{'what':<16} {'samples':>8} {'wall s':>8} {'row s':>8} {'row s / 10k':>12} {'load':>6}")
    for r in rows:
        print(f"{r['what']:<16} {r['num_samples']:>8} {r['wall_s']:>8} {r['row_s']:>8} {r['row_s_per_10k']:>12} "
              f"{r['load_avg_1m']:>6}")
    print(f"\none domain evaluation of {args.num_samples} samples, by step:")
    for name, seconds in parts.items():
        print(f"  {name:<36} {seconds:6.2f} s")
    for r in rows:
        append_csv(RESULTS, {**r, "breakdown": "; ".join(f"{k} {v:.2f}" for k, v in parts.items())})
    print(f"appended {len(rows)} rows to {RESULTS}")


if __name__ == "__main__":
    main()
