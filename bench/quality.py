"""Sample quality at equal wall-time budgets: presets and options side by side.

    python -m bench.quality --minutes 4                     # the whole comparison table (about 40 min)
    python -m bench.quality --minutes 15 --only dcgan-ns-ema  # one row, the issue's 15-minute budget
    python -m bench.quality --minutes 15 --only mlp-ns-ema-bf16-b384  # the unconditional IS >= 9.0 run (AMX)
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python -m bench.quality --minutes 15 --only mlp-ns-ema-b512-lr4e-4 \
        --checkpoint-every 2500   # the same budget on a CPU without AMX (fp32)
    python -m bench.quality --minutes 2 --only dcgan-ns-ema --set train.lr_d=4e-4 --label lr-d-4e-4
    # RGB, unlabelled (python -m bench.rgb_data emoji --dest DIR first): the presets at 32 px, 20 minutes each
    python -m bench.quality --minutes 20 --only r3gan,dcgan,resnet --dataset folder --data-root DIR/emoji \
        --image-size 32
    # limited data, ADA against none at equal steps (python -m bench.rgb_data tuxpaint --dest DIR)
    python -m bench.quality --steps 2000 --only dcgan-ada,dcgan-noaug --dataset folder --data-root DIR/tuxpaint \
        --image-size 64 --set train.batch_size=64 --set eval.num_samples=2000
    python -m bench.curves RUN_DIR RUN_DIR --out curves.png   # their FD and memorisation over steps

Each row trains one configuration for ``--minutes`` of wall-clock training on the real MNIST
test digits (10,000 images, ``../shared/data/mnist``), one run after another so each has the
whole machine, then scores its checkpoints with the project's evaluator (the domain classifier:
classifier Inception Score, Fréchet distance in its features, class histogram; class accuracy
for conditional rows) and, for every dataset, in the self-supervised space learned from the real images
(``ssl_*``: the only scores an unlabelled folder has). It calls ganlib directly (no Prefect), so it
also runs on a GPU machine.

Prints a table and appends every row to ``bench/results/quality.csv`` with the date, device,
commit and settings; runs are kept under ``bench/results/quality-runs/``, each with the 10x10 grid of
its best checkpoint (by classifier FD on labelled data, else ssl FD) in ``bench-grid/grid_10x10.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import append_csv, parse_value, stamp
from bench.curves import training_seconds
from ganlib.config import RunConfig, build_config, set_dotted
from ganlib.data.store import prepare_dataset
from ganlib.evaluation.evaluate import evaluate_run
from ganlib.rendering.gallery import make_gallery
from ganlib.runs.device import resolve_device
from ganlib.runs.paths import RunDir
from ganlib.training.loop import train

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "quality.csv"
RUNS = ROOT / "results" / "quality-runs"

# name -> settings (dotted config fields) on top of the project defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "mlp-ns-ema": {"model.name": "mlp"},
    # The 15-minute recipe for the unconditional target on this CPU (bench/RESULTS.md):
    # bf16 autocast on AMX and batch 384, where the matrix units run at 1.8x the images/s of 128.
    "mlp-ns-ema-bf16-b384": {"model.name": "mlp", "train.precision": "bf16", "train.batch_size": 384},
    # Without AMX (fp32, which precision auto picks there): batch 512 at twice the default rate (issue #19).
    "mlp-ns-ema-b512-lr4e-4": {"model.name": "mlp", "train.batch_size": 512, "train.lr": 4e-4},
    "dcgan-ns-ema": {"model.name": "dcgan"},
    "dcgan-ns-noema": {"model.name": "dcgan", "train.ema_decay": 0.0},
    "dcgan-hinge-ema": {"model.name": "dcgan", "train.loss": "hinge"},
    "dcgan-ls-ema": {"model.name": "dcgan", "train.loss": "ls"},
    "dcgan-wgan-gp-ema": {"model.name": "dcgan", "train.loss": "wgan-gp", "train.d_steps": 2, "train.beta1": 0.0,
                          "train.beta2": 0.9},
    "resnet-hinge-sn-ema": {"model.name": "resnet", "data.image_size": 32, "model.ngf": 32, "model.ndf": 32,
                            "model.spectral_norm": True, "train.loss": "hinge",
                            "train.beta1": 0.0, "train.beta2": 0.9},
    "mlp-ns-ema-cond": {"model.name": "mlp", "model.conditional": True},
    "dcgan-ns-ema-cond": {"model.name": "dcgan", "model.conditional": True},
    # The presets with their own defaults (ganlib.config.PRESET_DEFAULTS), for RGB folders; checkpoints
    # spaced for about 5 to 10 of them in 20 minutes of this CPU.
    "r3gan": {"model.name": "r3gan", "train.checkpoint_every": 250},
    "r3gan-noada": {"model.name": "r3gan", "train.ada": "off", "train.checkpoint_every": 250},
    "dcgan": {"model.name": "dcgan", "train.checkpoint_every": 2500},
    "resnet": {"model.name": "resnet", "train.checkpoint_every": 100},
    # Limited data, ADA against no augmentation on the fast conv preset (equal steps, so curves compare).
    "dcgan-ada": {"model.name": "dcgan", "train.ada": "on", "train.diffaug": [], "train.checkpoint_every": 250},
    "dcgan-noaug": {"model.name": "dcgan", "train.ada": "off", "train.diffaug": [], "train.checkpoint_every": 250},
}


def _nested(settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in settings.items():
        set_dotted(out, dotted, value)
    return out


IS_TARGET = 9.0  # the unconditional quality target
CHECKPOINT_EVERY = 5000  # a row's checkpoint spacing where neither its preset nor --checkpoint-every says


def seconds_to_reach(run_dir: Path, table: pd.DataFrame, target: float = IS_TARGET) -> float:
    """Training seconds until the first checkpoint whose classifier IS reaches ``target`` (NaN if none;
    ``bench.curves.training_seconds``: checkpoint writing and evaluation are not counted)."""
    reached = table[table["is_mean"] >= target]
    if reached.empty:
        return float("nan")
    return training_seconds(run_dir, [int(reached["step"].min())])[0]


def run_one(label: str, settings: dict[str, Any], minutes: float | None, data: dict[str, Any], device: str,
            out: Path, checkpoint_every: int, steps: int | None = None) -> dict[str, Any]:
    """Train one configuration for ``minutes`` (or ``steps``), then score it (``score_run``)."""
    started = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    budget = f"{steps}steps" if steps else f"{minutes:g}m"
    base = {"out": str(out), "run_id": f"{label}-{budget}-{started}", "device": device, "data": dict(data),
            "eval": {"generators": "selected"},
            "train": {"steps": steps or 1_000_000, "max_minutes": None if steps else minutes,
                      "checkpoint_every": checkpoint_every, "log_every": 20}}
    merged = _nested(settings)
    for section, values in merged.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    cfg = build_config(base)
    store_dir = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store_dir)
    return score_run(cfg, store_dir, label, settings)


def score_run(cfg: RunConfig, store_dir: Path, label: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a trained run's checkpoints and summarise it as one table row."""
    table = evaluate_run(cfg, store_dir)
    if "generator" in table:  # the generator the run is judged by: its EMA when it keeps one
        table = table[table["generator"] == ("ema" if cfg.train.ema_decay > 0 else "raw")]
    table = table.reset_index(drop=True)
    final = table.iloc[-1]  # the checkpoint at the end of the budget
    labelled = table["is_mean"].notna().any()
    peak = table.loc[table["is_mean"].idxmax()] if labelled else final
    best = table.loc[table["fd" if labelled else "ssl_fd"].idxmin()]
    steps = pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")
    train_seconds = float((cfg.train.batch_size / steps["images_per_sec"]).sum())
    checkpoint = cfg.run_dir / "checkpoints" / str(best["checkpoint"])
    grid = make_gallery(checkpoint, cfg.run_dir / "bench-grid", 100, cfg.seed, use_ema=cfg.train.ema_decay > 0)
    ssl = {f"ssl_{m}_{which}": round(float(row.get(f"ssl_{m}", float("nan"))), 4)
           for m in ("fd", "kid_mean", "precision", "recall", "coverage") for which, row in
           (("final", final), ("best", best))}
    return {
        **stamp(resolve_device(cfg.device)), "label": label, "minutes": cfg.train.max_minutes,
        "settings": json.dumps(settings, sort_keys=True), "dataset": cfg.data.dataset,
        "steps": int(steps["step"].max()), "train_seconds": round(train_seconds, 1),
        "images_per_sec": round(len(steps) * cfg.train.batch_size / train_seconds, 1),
        "is_final": round(float(final["is_mean"]), 3), "fd_final": round(float(final["fd"]), 2),
        "classes_final": int(final["classes_present"]),
        "rarest_final": round(float(final["rarest_class_fraction"]), 4),
        "class_accuracy_final": round(float(final.get("class_accuracy", float("nan"))), 4),
        "is_best": round(float(peak["is_mean"]), 3), "is_best_step": int(peak["step"]),
        f"seconds_to_is{IS_TARGET:g}": round(seconds_to_reach(cfg.run_dir, table), 1),
        "real_is": round(float(final["real_is"]), 3), "run_dir": str(cfg.run_dir),
        "model": cfg.model.name, "image_size": cfg.data.image_size,
        "precision": RunDir(cfg.run_dir).read_config()["train"]["precision"],  # auto's choice, as the run saved it
        **ssl, "best_step": int(best["step"]),
        "ssl_fd_floor": round(float(final.get("ssl_fd_floor", float("nan"))), 4),
        "memorisation_final": round(float(final.get("memorisation_fraction", float("nan"))), 4),
        "ada_p_final": round(float(steps["ada_p"].iloc[-1]), 4) if "ada_p" in steps else 0.0,
        "grid": grid["grid_10x10"],
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget of each row")
    p.add_argument("--steps", type=int, default=None, help="train each row this many steps instead of --minutes")
    p.add_argument("--image-size", type=int, default=28, help="data.image_size of every row")
    p.add_argument("--only", default="", help="comma-separated preset names (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra setting for every row, e.g. train.lr_d=4e-4 (repeatable)")
    p.add_argument("--label", default="", help="suffix for the row labels (to tell --set variants apart)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default=str(ROOT.parent.parent / "shared" / "data" / "mnist"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RUNS))
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints; each is evaluated (the resolution of time-to-quality); "
                        f"default: the row's own ({CHECKPOINT_EVERY} unless its preset says)")
    p.add_argument("--csv", type=Path, default=RESULTS, help="the CSV the rows are appended to")
    p.add_argument("--rescore", nargs="+", metavar="RUN_DIR", default=[],
                   help="score finished runs again (e.g. after evaluation changed) instead of training")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    names = [n for n in args.only.split(",") if n] or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown preset {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr_d=4e-4")
        extra[key] = parse_value(value)
    if args.checkpoint_every is not None:  # over the row preset's own spacing, as a --set would be
        extra["train.checkpoint_every"] = args.checkpoint_every
    data = ({"dataset": args.dataset, "image_size": args.image_size}
            | ({"data_root": args.data_root} if args.dataset != "digits" else {}))

    rows = []
    jobs = [(PRESETS[n] | extra, n + (f"-{args.label}" if args.label else "")) for n in names]
    if args.rescore:
        jobs = [(None, Path(d)) for d in args.rescore]
    header = (f"{'label':<34} {'steps':>6} {'img/s':>6} {'IS':>6} {'FD':>7} {'cls':>3} {'rarest':>6} "
              f"{'cond acc':>8} {'best IS':>7} {'sslFD':>7} {'best':>7} {'floor':>7} {'memo':>5} {'ada p':>5}")
    for settings, label in jobs:
        if settings is None:  # --rescore: the run directory says everything
            cfg = RunDir(label).load_config()
            row = score_run(cfg, prepare_dataset(cfg.data, cfg.out), label.name, {})
        else:
            row = run_one(label, settings, args.minutes, data, args.device, Path(args.out), CHECKPOINT_EVERY,
                          args.steps)
        rows.append(row)
        append_csv(args.csv, row)
        print(header)
        for r in rows:
            print(f"{r['label']:<34} {r['steps']:>6} {r['images_per_sec']:>6.0f} {r['is_final']:>6.2f} "
                  f"{r['fd_final']:>7.1f} {r['classes_final']:>3} {r['rarest_final']:>6.3f} "
                  f"{r['class_accuracy_final']:>8.3f} {r['is_best']:>7.2f} {r['ssl_fd_final']:>7.3f} "
                  f"{r['ssl_fd_best']:>7.3f} {r['ssl_fd_floor']:>7.3f} {r['memorisation_final']:>5.2f} "
                  f"{r['ada_p_final']:>5.2f}", flush=True)
    print(f"appended to {args.csv} (real images: classifier IS {rows[-1]['real_is']}); grids: "
          + ", ".join(r["grid"] for r in rows))


if __name__ == "__main__":
    main()
