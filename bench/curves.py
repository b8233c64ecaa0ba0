"""Evaluation curves of several runs side by side: FD and memorisation over steps, one line per run.

    python -m bench.curves RUN_DIR [RUN_DIR ...] --out curves.png [--metrics ssl_fd,memorisation_fraction]
    python -m bench.curves RUN_DIR [RUN_DIR ...] --x seconds   # against training time (runs of other speeds)

Reads each run's ``metrics/eval.parquet`` (the selected generator's rows: EMA where the run keeps one)
and draws one panel per metric, with the real-data floor dashed where the table has it. Prints the
values as a table too, so a note can quote them. ``--x seconds``: the training seconds up to each
checkpoint (``training_seconds``), so runs at different images/s compare at equal wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def selected_rows(run_dir: Path) -> pd.DataFrame:
    table = pd.read_parquet(run_dir / "metrics" / "eval.parquet")
    if "generator" in table and (table["generator"] == "ema").any():
        table = table[table["generator"] == "ema"]
    return table.sort_values("step")


def training_seconds(run_dir: Path, steps: pd.Series | list[int]) -> list[float]:
    """Training seconds up to each of ``steps`` (checkpoint writing and evaluation not counted).

    Each row of ``metrics/train.parquet`` holds its flush's images/s, so step s ends at the sum of
    batch / rate over the rows up to s.
    """
    rows = pd.read_parquet(run_dir / "metrics" / "train.parquet").sort_values("step")
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    elapsed = (batch / rows["images_per_sec"]).cumsum().to_numpy()
    at = rows["step"].searchsorted(list(steps), side="right") - 1  # the last row at or before each step
    return [float(elapsed[i]) if i >= 0 else 0.0 for i in at]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metrics", default="ssl_fd,memorisation_fraction")
    p.add_argument("--out", type=Path, default=Path("bench/results/curves.png"))
    p.add_argument("--x", choices=("step", "seconds"), default="step",
                   help="the horizontal axis: steps, or training seconds (from each run's train.parquet)")
    args = p.parse_args()
    metrics = [m for m in args.metrics.split(",") if m]
    fig = Figure(figsize=(5 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for run in args.runs:
        table = selected_rows(run)
        if args.x == "seconds":
            table = table.assign(seconds=[round(t, 1) for t in training_seconds(run, table["step"])])
        print(f"{run.name}:")
        print(table[[*dict.fromkeys(["step", args.x]), *[m for m in metrics if m in table]]].to_string(index=False))
        for ax, metric in zip(axes, metrics):
            if metric in table:
                ax.plot(table[args.x], table[metric], marker="o", label=run.name)
    for ax, metric in zip(axes, metrics):
        floor = f"{metric}_floor"
        table = selected_rows(args.runs[0])
        if floor in table:
            ax.axhline(float(table[floor].iloc[-1]), color="0.5", linestyle="--", label="real images (floor)")
        if metric == "memorisation_fraction":
            ax.axhline(0.5, color="0.5", linestyle=":", label="0.5: no memorisation")
        ax.set_title(metric)
        ax.set_xlabel("training seconds" if args.x == "seconds" else "step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
