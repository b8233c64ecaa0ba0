"""The truncation trick on a trained run: fidelity against variety, measured in the run's own feature spaces.

    python -m bench.truncation --run-id default-zen1-1206                     # the default run's best checkpoint
    python -m bench.truncation --run-id R --thresholds none,2,1.5,1,0.7,0.5 --num 10000

``flows/generate.py --truncation T`` cuts the latents off at T standard deviations (``ganlib.sampling.truncate``:
BigGAN's trick, each latent mapped to the same quantile of the truncated normal). Smaller T should give more
typical images (precision, density up) and less variety (recall, coverage, and in the end FD, worse). This
scores the run's best checkpoint (its EMA generator where it keeps one, as evaluation does) with the samples of
evaluation's first seed, truncated at each threshold, in the spaces evaluation used: the domain classifier's
for labelled data (FD, IS, precision, recall, density, coverage, classes present, the rarest class's share)
and the self-supervised one (FD, precision, recall), against the same cached real references. Prints a table,
appends the rows to ``bench/results/truncation.csv`` (date, device, commit) and draws
``bench/results/truncation-<run>.png``: one row per threshold, the same 10 latents in each column.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import append_csv, stamp
from ganlib.data.store import load_store, prepare_dataset
from ganlib.errors import GanlibError
from ganlib.evaluation.evaluate import (
    EVAL_NOISE_OFFSET,
    domain_extras,
    domain_reference,
    domain_space,
    embed_samples,
    space_scores,
    ssl_reference,
    ssl_space,
)
from ganlib.rendering.gallery import resolve_checkpoint
from ganlib.rendering.pictures import save_grid
from ganlib.runs.paths import RunDir
from ganlib.sampling import fixed_noise, generate, load_generator, truncate

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "truncation.csv"


def parse_thresholds(text: str) -> list[float | None]:
    """``none,2,1`` -> [None, 2.0, 1.0]."""
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        value = None if item in ("none", "off", "") else float(item)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SystemExit(f"bench.truncation: --thresholds: {item!r} is not a cut-off above 0 (or 'none')")
        out.append(value)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m bench.truncation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-id", required=True)
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="the runs' root (default artifacts)")
    p.add_argument("--checkpoint", default="best", help="best (default), latest, a step or a file")
    p.add_argument("--thresholds", type=parse_thresholds, default=parse_thresholds("none,2,1.5,1,0.7,0.5"),
                   help="cut-offs in standard deviations, 'none' for the untruncated samples")
    p.add_argument("--num", type=int, default=None, help="samples per threshold (default: the run's eval.num_samples)")
    p.add_argument("--csv", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run = RunDir(args.out / args.run_id)
        cfg = run.load_config()
        store = load_store(prepare_dataset(cfg.data, cfg.out))
        path = resolve_checkpoint(run.root, args.checkpoint)
    except GanlibError as e:
        raise SystemExit(f"bench.truncation: {e}") from None
    ev, device = cfg.eval, torch.device("cpu")
    num = args.num or ev.num_samples
    spaces = []
    if store.labels is not None and store.num_classes >= 2:
        classifier, reference = domain_reference(store, cfg.out, ev, cfg.seed, device)
        spaces.append((domain_space(classifier, ev.batch_size, reference["tag"]), reference))
    encoder, reference = ssl_reference(store, cfg.out, ev, device)
    spaces.append((ssl_space(encoder, ev.batch_size, reference["tag"]), reference))
    generator, meta = load_generator(path, device, use_ema=getattr(ev, "use_ema", True))
    if meta["config"]["model"].get("conditional"):
        raise SystemExit("bench.truncation: a class-conditional run; this bench scores unconditional ones")
    seed = cfg.seed + EVAL_NOISE_OFFSET
    z = fixed_noise(num, meta["config"]["model"]["noise_dim"], seed)

    rows, pictures = [], []
    for threshold in args.thresholds:
        started = time.perf_counter()
        zt = truncate(z, threshold)
        embedded, _ = embed_samples([space for space, _ in spaces], generator, zt, None, ev.batch_size,
                                    f"truncation {threshold}")
        row: dict[str, Any] = {"run": args.run_id, "checkpoint": path.name, "step": int(meta["step"]),
                               "weights": meta["weights"], "num_samples": num,
                               "truncation": "none" if threshold is None else threshold}
        for space, reference in spaces:
            features, aux = embedded[space.kind]
            scores = space_scores(space.kind, features, aux, reference, ev, seed, device)
            prefix = "" if space.kind == "domain" else f"{space.kind}_"
            row.update({f"{prefix}{k}": v for k, v in scores.items()})
            if space.kind == "domain":
                extras = domain_extras(aux, store.num_classes, None)
                row.update({k: extras[k] for k in ("classes_present", "rarest_class_fraction")})
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        pictures.append(generate(generator, zt[:10], 10))
        append_csv(args.csv, {**stamp(device), **row})

    picture = save_grid(torch.cat(pictures), args.csv.parent / f"truncation-{args.run_id}.png", nrow=10)
    columns = [c for c in ("fd", "is_mean", "precision", "recall", "density", "coverage", "classes_present",
                           "rarest_class_fraction", "ssl_fd", "ssl_precision", "ssl_recall", "ssl_coverage")
               if c in rows[0]]
    print(f"\n{args.run_id} {path.name} ({meta['weights']}), {num} samples of seed {seed} per threshold:\n")
    print("| truncation | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        print(f"| {row['truncation']} | " + " | ".join(cells) + " |")
    print(f"\nrows appended to {args.csv}; the samples (a row per threshold, the same latents down each column): "
          f"{picture}")
    return rows


if __name__ == "__main__":
    main()
