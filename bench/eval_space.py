"""Does the self-supervised feature space mean something? The evidence of issue 18, as one table.

    python -m bench.eval_space                       # both parts (about 15 minutes on 2 CPU cores)
    python -m bench.eval_space --skip-mnist-run      # only the ranking on the two synthetic datasets
    python -m bench.eval_space --skip-ranking        # only the MNIST run
    python -m bench.eval_space --mnist-steps 3000 --checkpoint-every 300

1. **Ranking**: on two datasets (the embedded synthetic digits, 28 px grey; and ``shapes``, coloured
   shapes on coloured backgrounds generated here, 32 px RGB), FD in the self-supervised space
   (``ssl_fd``, ``ganlib.evaluation.contrastive`` through ``evaluate.ssl_reference``) of held-out
   real images, the same images slightly blurred, with noise added, and one of them repeated
   (mode collapse), each against the reference set. It should read real < blurred < noisy < collapsed.
   For the labelled digits the domain classifier's FD is printed beside it.
2. **Agreement**: a short run on the real MNIST test digits (``../shared/data/mnist``); every
   checkpoint scored in both spaces; Spearman's rho between ``fd`` (classifier space) and ``ssl_fd``
   over the checkpoints (EMA rows, and all rows).

Prints the tables; appends rows to ``bench/results/eval_space.csv`` with date, device and commit.
Everything it writes goes under ``bench/results/eval-space-runs/`` (the encoders are cached there).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.common import append_csv, stamp
from ganlib.config import EvalConfig, build_config
from ganlib.data.store import PreparedStore, load_store, prepare_dataset
from ganlib.evaluation.contrastive import embed
from ganlib.evaluation.evaluate import (
    domain_reference,
    domain_space,
    evaluate_run,
    real_split,
    space_scores,
    ssl_reference,
)
from ganlib.sampling import to_unit_range
from ganlib.training.loop import train

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "eval_space.csv"
RUNS = ROOT / "results" / "eval-space-runs"
MNIST = ROOT.parent.parent / "shared" / "data" / "mnist"
KINDS = ("real", "blurred", "noisy", "collapsed")


# --- data ------------------------------------------------------------------------------------------

def shapes(num_images: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Synthetic RGB images, uint8 (N, 3, size, size): a disc, square or triangle of a random colour,
    size and place on a background of another random colour with a soft vertical gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = np.empty((num_images, 3, size, size), np.uint8)
    for i in range(num_images):
        bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = bg[:, None, None] * (0.8 + 0.4 * yy / size)[None]
        r = rng.uniform(0.15, 0.35) * size
        cy, cx = rng.uniform(r, size - r, 2)
        kind = rng.integers(3)
        if kind == 0:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif kind == 1:
            inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
        else:
            inside = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
        image[:, inside] = fg[:, None]
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def in_memory_store(images: np.ndarray, key: str, labels: np.ndarray | None = None,
                    num_classes: int = 0) -> PreparedStore:
    """A prepared store held in memory (what the evaluator reads: images, labels, the manifest's key)."""
    return PreparedStore(Path(key), {"key": key, "num_classes": num_classes}, images, labels)


BLUR_WEIGHT = 0.1  # "slightly blurred": a [0.1, 0.8, 0.1] kernel in each direction
NOISE_STD = 0.3  # "noisy": Gaussian noise of std 0.3 in [-1, 1] units (about 38 of 255)


def degrade(images: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images uint8 (N, C, H, W) as the four kinds of ``KINDS``, float (N, C, H, W) in [-1, 1]:
    unchanged; slightly blurred (``BLUR_WEIGHT``); with noise (``NOISE_STD``); the first image
    repeated N times (mode collapse). The blur changes pixels less than the noise does (RMSE
    0.03-0.07 against 0.22-0.28 on the two datasets; the bench prints them)."""
    x = to_unit_range(images)
    c = x.shape[1]
    kernel = torch.tensor([BLUR_WEIGHT, 1 - 2 * BLUR_WEIGHT, BLUR_WEIGHT])
    kernel = (kernel[:, None] * kernel[None, :]).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return {"real": x, "blurred": blurred, "noisy": (x + NOISE_STD * noise).clamp(-1, 1),
            "collapsed": x[:1].expand_as(x).contiguous()}


def ranking(store: PreparedStore, out: Path, cfg: EvalConfig, with_domain: bool) -> dict[str, dict[str, float]]:
    """FD of each kind of ``degrade(held-out images)`` against the reference set, per space:
    ``{"ssl": {kind: fd}, "domain": {...}, "pixel_rmse": {kind: RMSE from the unchanged images}}`` (domain
    only ``with_domain``)."""
    _, held_idx = real_split(len(store.images), cfg.num_real or cfg.num_samples)
    kinds = degrade(store.images[held_idx])
    device = torch.device("cpu")
    encoder, ssl_ref = ssl_reference(store, out, cfg, device)
    result = {"pixel_rmse": {k: float((x - kinds["real"]).pow(2).mean().sqrt()) for k, x in kinds.items()},
              "ssl": {k: space_scores("ssl", embed(encoder, x), x.new_empty(len(x), 0), ssl_ref, cfg, 0)["fd"]
                      for k, x in kinds.items()}}
    if with_domain:
        classifier, domain_ref = domain_reference(store, out, cfg, 0, device)
        space = domain_space(classifier, cfg.batch_size, domain_ref["tag"])
        result["domain"] = {k: space_scores("domain", *space.embed(x), domain_ref, cfg, 0)["fd"]
                            for k, x in kinds.items()}
    return result


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return float(np.corrcoef(a.rank().to_numpy(), b.rank().to_numpy())[0, 1])


# --- the two parts ---------------------------------------------------------------------------------

def run_ranking(num_samples: int, ssl_steps: int) -> list[dict[str, Any]]:
    out = RUNS / "ranking"
    cfg = EvalConfig(num_samples=num_samples, ssl_steps=ssl_steps, kid_subsets=1)  # the ranking reads FD only
    digits_cfg = build_config({"out": str(out), "data": {"dataset": "digits"}})
    digits = load_store(prepare_dataset(digits_cfg.data, out))
    rows = []
    for name, store, labelled in (
        ("digits (28 px grey, embedded)", digits, True),
        ("shapes (32 px RGB, generated)", in_memory_store(shapes(2 * num_samples), f"shapes-{2 * num_samples}"), False),
    ):
        t0 = time.perf_counter()
        fds = ranking(store, out, cfg, with_domain=labelled)
        rmse = fds.pop("pixel_rmse")
        for space, values in fds.items():
            ordered = all(values[a] < values[b] for a, b in zip(KINDS, KINDS[1:]))
            rows.append({"part": "ranking", "dataset": name, "space": space, "num_images": len(store.images),
                         **{f"fd_{k}": round(v, 4) for k, v in values.items()}, "ordered": ordered,
                         **{f"pixel_rmse_{k}": round(v, 3) for k, v in rmse.items() if k != "real"},
                         "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def run_agreement(steps: int, checkpoint_every: int, num_samples: int, ssl_steps: int) -> dict[str, Any]:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the real MNIST test digits are not at {MNIST}; pass --skip-mnist-run")
    cfg = build_config({
        "run_id": f"mnist-mlp-{steps}", "out": str(RUNS), "device": "cpu",
        "data": {"dataset": "mnist", "data_root": str(MNIST)},
        "train": {"steps": steps, "checkpoint_every": checkpoint_every},
        "eval": {"num_samples": num_samples, "ssl_steps": ssl_steps},
    }).resolved()
    store = prepare_dataset(cfg.data, cfg.out)
    t0 = time.perf_counter()
    train(cfg, store)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = evaluate_run(cfg, store)
    ema = table[table["generator"] == "ema"]
    return {"part": "agreement", "dataset": "mnist (real test digits)", "steps": steps,
            "num_checkpoints": int(table["step"].nunique()), "num_samples": num_samples,
            "rho_ema": round(spearman(ema["fd"], ema["ssl_fd"]), 4),
            "rho_all_rows": round(spearman(table["fd"], table["ssl_fd"]), 4),
            "best_step_fd": int(ema.loc[ema["fd"].idxmin(), "step"]),
            "best_step_ssl_fd": int(ema.loc[ema["ssl_fd"].idxmin(), "step"]),
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
            "table": table[["step", "generator", "fd", "ssl_fd", "is_mean", "precision", "ssl_precision",
                            "recall", "ssl_recall"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=5000, help="images per set in the ranking and per "
                        "checkpoint in the MNIST run (default 5000)")
    parser.add_argument("--ssl-steps", type=int, default=EvalConfig().ssl_steps, help="encoder training steps")
    parser.add_argument("--mnist-steps", type=int, default=3000, help="training steps of the MNIST run")
    parser.add_argument("--checkpoint-every", type=int, default=300)
    parser.add_argument("--skip-mnist-run", action="store_true")
    parser.add_argument("--skip-ranking", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("ganlib").setLevel(logging.INFO)

    header = stamp(torch.device("cpu"))
    if not args.skip_ranking:
        rows = run_ranking(args.num_samples, args.ssl_steps)
        print("\nFD against the reference set (lower is closer to the real data):")
        print(pd.DataFrame(rows).drop(columns="part").to_string(index=False))
        for row in rows:
            append_csv(RESULTS, {**header, "ssl_steps": args.ssl_steps, **row})
    if not args.skip_mnist_run:
        agreement = run_agreement(args.mnist_steps, args.checkpoint_every, args.num_samples, args.ssl_steps)
        print("\nMNIST checkpoints in both spaces:")
        print(agreement.pop("table").to_string(index=False))
        print(pd.Series(agreement).to_string())
        append_csv(RESULTS, {**header, "ssl_steps": args.ssl_steps, **agreement})


if __name__ == "__main__":
    main()
