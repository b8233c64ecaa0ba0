"""How low can a generator's FD go on this dataset? A flawless generator's expected score, measured.

    python -m bench.fd_floor --dataset folder --data-root DIR/emoji --image-size 32   # issue #17's emoji set
    python -m bench.fd_floor --dataset mnist --data-root ../shared/data/mnist          # + the classifier space
    python -m bench.fd_floor ... --set eval.num_samples=5000 --repeats 200             # any config field

The evaluator scores a checkpoint's ``eval.num_samples`` samples (10,000) against a reference set of real
images and reports, beside it, the *floor*: the held-out real images (as many as the reference) scored the
same way. FD is biased upwards by finite samples, and the bias is close to linear in 1/n (Chong and Forsyth,
"Effectively Unbiased FID and Inception Score and Where to Find Them", CVPR 2020), so the floor of 1,893
held-out images is *above* what 10,000 samples of the real distribution itself would score. This script
measures that curve: random subsets of n held-out images (``--repeats`` draws per n, without replacement),
each scored against the fixed reference set exactly as the evaluator scores samples; a least-squares fit
FD(n) = a + b/n over the means; and the fit's value at ``--at`` samples (default the evaluator's sample
count): the score a generator that draws from the real distribution would get there, on average. Subsets of
a finite held-out set vary as (1/n - 1/N) around the full set, which only moves the intercept ``a`` to the
infinite-sample value, so ``a + b/m`` holds for m fresh samples. Beyond N it is an extrapolation.

Spaces: the self-supervised one (``ssl_fd``; its encoder trained and cached as an evaluation would, under
``--out``) always; the domain classifier's (``fd``) too for labelled data. Prints a table per space and the
fit; appends one row per space to ``bench/results/fd_floor.csv`` with date, device and commit.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import append_csv, parse_value, stamp
from ganlib.config import build_config, set_dotted
from ganlib.data.sources import sized_config
from ganlib.data.store import load_store, prepare_dataset
from ganlib.errors import GanlibError
from ganlib.evaluation.evaluate import domain_reference, domain_space, real_split, ssl_reference, ssl_space
from ganlib.evaluation.metrics import feature_statistics, frechet_distance
from ganlib.sampling import to_unit_range

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "fd_floor.csv"
RUNS = ROOT / "results" / "quality-runs"  # where bench.quality's runs cache their encoders and references


def subset_sizes(num_holdout: int, smallest: int, count: int) -> list[int]:
    """``count`` sizes spaced evenly in 1/n from ``smallest`` to ``num_holdout`` (the fit is linear in 1/n)."""
    if num_holdout < smallest:
        raise SystemExit(f"only {num_holdout} held-out images: fewer than --smallest {smallest}; lower it")
    inverse = np.linspace(1 / smallest, 1 / num_holdout, count)
    return sorted({int(round(1 / v)) for v in inverse})


def fit_inverse(sizes: list[int], means: list[float]) -> tuple[float, float]:
    """Least squares ``means ≈ a + b / sizes``: (a, b)."""
    design = np.stack([np.ones(len(sizes)), 1 / np.asarray(sizes, dtype=float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(means, dtype=float), rcond=None)
    return float(a), float(b)


def floor_curve(features: torch.Tensor, reference: dict[str, Any], sizes: list[int], repeats: int,
                seed: int = 0) -> list[dict[str, float]]:
    """FD of random subsets of ``features`` (the held-out set) against ``reference``: per size, the mean and
    standard deviation over ``repeats`` draws (one for the whole set)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        draws = 1 if n == len(features) else repeats
        fds = []
        for _ in range(draws):
            pick = torch.randperm(len(features), generator=generator)[:n]
            mu, sigma = feature_statistics(features[pick])
            fds.append(frechet_distance(mu, sigma, reference["mu"], reference["sigma"]))
        rows.append({"n": n, "draws": draws, "fd_mean": float(np.mean(fds)),
                     "fd_std": float(np.std(fds, ddof=1)) if draws > 1 else 0.0})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m bench.fd_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="folder")
    p.add_argument("--data-root", default=None, help="the source (not for the embedded digits)")
    p.add_argument("--image-size", type=int, default=None, help="data.image_size (default: the dataset's own)")
    p.add_argument("--out", type=Path, default=RUNS, help="output root holding the prepared store and caches")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config field, e.g. eval.num_samples=5000 (it sets the reference and held-out sizes, as "
                        "in a run) or eval.ssl_steps=100; repeatable")
    p.add_argument("--at", type=int, default=None, help="the sample count to predict the floor at (default: "
                   "eval.num_samples, the samples a checkpoint is scored with)")
    p.add_argument("--smallest", type=int, default=200, help="the smallest subset")
    p.add_argument("--sizes", type=int, default=6, help="how many subset sizes, spaced evenly in 1/n")
    p.add_argument("--repeats", type=int, default=20, help="random subsets per size")
    p.add_argument("--csv", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    settings: dict[str, Any] = {"out": str(args.out), "device": "cpu", "data": {"dataset": args.dataset}}
    if args.data_root is not None:
        settings["data"]["data_root"] = args.data_root
    if args.image_size is not None:
        settings["data"]["image_size"] = args.image_size
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE, e.g. eval.num_samples=5000")
        set_dotted(settings, key, parse_value(value))
    try:
        cfg = sized_config(build_config(settings)).resolved()
        store = load_store(prepare_dataset(cfg.data, cfg.out))
    except GanlibError as e:  # a bad option or a missing source: one line, no traceback
        raise SystemExit(f"bench.fd_floor: {e}") from None
    ev = cfg.eval
    at = args.at or ev.num_samples
    _, held_idx = real_split(len(store.images), ev.num_real or ev.num_samples)
    held = to_unit_range(store.images[held_idx])
    device = torch.device("cpu")
    encoder, ssl_ref = ssl_reference(store, cfg.out, ev, device)
    spaces = [("ssl_fd", ssl_space(encoder, ev.batch_size, ssl_ref["tag"]), ssl_ref)]
    if store.labels is not None and store.num_classes >= 2:
        classifier, domain_ref = domain_reference(store, cfg.out, ev, cfg.seed, device)
        spaces.append(("fd", domain_space(classifier, ev.batch_size, domain_ref["tag"]), domain_ref))

    sizes = subset_sizes(len(held_idx), args.smallest, args.sizes)
    header = {**stamp(device), "dataset": args.dataset, "data_root": args.data_root,
             "image_size": store.images.shape[-1], "num_reference": int(ssl_ref["num_real"]),
             "num_holdout": len(held_idx)}
    rows = []
    for name, space, reference in spaces:
        features = torch.cat([space.embed(held[i: i + ev.batch_size])[0] for i in range(0, len(held), ev.batch_size)])
        curve = floor_curve(features, reference, sizes, args.repeats)
        a, b = fit_inverse([r["n"] for r in curve], [r["fd_mean"] for r in curve])
        worst = max(abs(r["fd_mean"] - (a + b / r["n"])) for r in curve)
        print(f"\n{name}: held-out subsets of n images against the {header['num_reference']}-image reference "
              f"({args.repeats} draws per n)")
        print(f"{'n':>6} {'FD mean':>9} {'sd':>7} {'fit':>9}")
        for r in curve:
            print(f"{r['n']:>6} {r['fd_mean']:>9.4f} {r['fd_std']:>7.4f} {a + b / r['n']:>9.4f}")
        print(f"fit FD(n) = {a:.4f} + {b:.1f}/n (largest residual {worst:.4f}); the floor the evaluator reports "
              f"(n={len(held_idx)}): {curve[-1]['fd_mean']:.4f}; a flawless generator's {at} samples: "
              f"{a + b / at:.4f}")
        row = {**header, "space": name, "sizes": " ".join(str(r["n"]) for r in curve),
               "fd_means": " ".join(f"{r['fd_mean']:.4f}" for r in curve), "repeats": args.repeats,
               "fit_a": round(a, 5), "fit_b": round(b, 3), "max_residual": round(worst, 5),
               "floor_reported": round(curve[-1]["fd_mean"], 5), "at": at, "floor_at": round(a + b / at, 5)}
        append_csv(args.csv, row)
        rows.append(row)
    print(f"\nappended to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
