"""Plots of a run's tables (matplotlib, PNG): training curves, evaluation metrics, throughput.

- ``training.png``: losses and D(x) / D(G(z)) over steps, raw (faint) and smoothed;
- ``evaluation.png``: each evaluation metric over checkpoints, the best checkpoint marked;
- ``throughput.png``: training images/s over steps.

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``: no global state, no
GUI backend, safe in worker threads and headless machines. Fonts are matplotlib's bundled DejaVu
Sans, so plots look the same offline on every machine.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ganlib.runs.files import atomic_path
from ganlib.runs.paths import RunDir

DPI = 100
REAL_COLOUR, FAKE_COLOUR, BEST_COLOUR = "tab:blue", "tab:orange", "tab:red"


def smoothing_span(num_points: int) -> int:
    """EMA span for a curve of ``num_points``: about 1/50 of the run, at least 1."""
    return max(1, num_points // 50)


def smooth(values: np.ndarray | pd.Series, span: int) -> np.ndarray:
    """Exponential moving average with bias correction (the start is not dragged towards 0).

    Non-finite values (a diverged step) are skipped rather than poisoning everything after them,
    and stay NaN in the result, so a plotted curve has a gap where there was no finite value
    instead of a flat line. Returns float64 of the same length.
    """
    series = pd.Series(np.asarray(values, dtype=np.float64)).replace([np.inf, -np.inf], np.nan)
    smoothed = series.ewm(span=span, adjust=True, ignore_na=True).mean()
    return smoothed.where(series.notna()).to_numpy()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 40), transform=ax.transAxes, ha="center", va="center", color="0.4")


LOSS_NAMES = {"ns": "non-saturating", "hinge": "hinge", "wgan-gp": "Wasserstein + GP", "ls": "least squares",
              "rpgan": "relativistic pairing + R1/R2"}


def plot_training(train: pd.DataFrame, path: Path, events: pd.DataFrame | None = None,
                  loss: str | None = None, ada_target: float = 0.6) -> Path:
    """Losses and discriminator outputs over steps, from ``metrics/train.parquet``.

    Top: ``d_loss`` and ``g_loss``. Bottom: ``d_real`` = D(x) and ``d_fake`` = D(G(z)), mean
    probabilities in [0, 1], with 0.5 (a discriminator that cannot tell) dashed. Raw values faint,
    smoothed ones solid; steps with a non-finite loss are marked by red lines, and health events
    (``events``: ``metrics/health.parquet`` rows with a ``step``, e.g. rollbacks) by dashed purple
    ones. What healthy looks like: both losses level off without one going to 0, D(x) stays above
    D(G(z)) without D(G(z)) collapsing to 0. ``loss``: the run's ``train.loss``, named on the axis.
    With adaptive augmentation (``ada_p`` above 0 somewhere) a third panel shows ADA's p and the
    overfitting signal r_t it follows, against ``ada_target`` (dashed): p rising means D was memorising.
    """
    ada = "ada_p" in train and len(train) and bool((train["ada_p"] > 0).any())
    fig = Figure(figsize=(9, 8.4 if ada else 6.2), layout="constrained")
    axes = fig.subplots(3 if ada else 2, 1, sharex=True)
    top, bottom = axes[0], axes[1]
    steps = train["step"].to_numpy() if len(train) else np.array([])
    span = smoothing_span(len(train))
    pairs = [(top, [("d_loss", "D loss", REAL_COLOUR), ("g_loss", "G loss", FAKE_COLOUR)]),
             (bottom, [("d_real", "D(x), real", REAL_COLOUR), ("d_fake", "D(G(z)), generated", FAKE_COLOUR)])]
    for ax, curves in pairs:
        for column, label, colour in curves:
            if column not in train or not len(train):
                continue
            ax.plot(steps, train[column].to_numpy(dtype=float), color=colour, alpha=0.22, linewidth=0.8)
            ax.plot(steps, smooth(train[column], span), color=colour, linewidth=1.8, label=label)
        ax.grid(alpha=0.3)
    if not len(train):
        _note(top, "no training steps recorded")
    else:
        losses = train[[c for c in ("d_loss", "g_loss") if c in train]].to_numpy(dtype=float)
        bad = steps[~np.isfinite(losses).all(axis=1)]
        if len(bad):  # a diverged stretch: a gap in the curves, and red lines so it is not missed
            top.vlines(bad, 0, 1, transform=top.get_xaxis_transform(), colors=BEST_COLOUR, alpha=0.35,
                       linewidth=1, label=f"non-finite loss ({len(bad)} steps)")
    if events is not None and "step" in events and len(events):
        for ax in (top, bottom):
            ax.vlines(events["step"].to_numpy(dtype=float), 0, 1, transform=ax.get_xaxis_transform(),
                      colors="tab:purple", linestyles="--", linewidth=1.2,
                      label=f"health event ({len(events)})" if ax is top else None)
    top.set_ylabel(f"loss ({LOSS_NAMES.get(loss, loss)})" if loss else "loss")
    top.set_title(f"Training losses and discriminator outputs (EMA span {span} steps; raw values faint)")
    bottom.axhline(0.5, color="0.5", linestyle="--", linewidth=1, label="0.5: D cannot tell")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("mean D probability")
    bottom.set_xlabel("step")
    if ada:
        third = axes[2]
        for column, label, colour in (("ada_p", "ADA p", BEST_COLOUR), ("r_t", "r_t, the overfitting signal", "0.35")):
            if column in train:
                third.plot(steps, smooth(train[column], span) if column == "r_t" else train[column].to_numpy(float),
                           color=colour, linewidth=1.6, label=label)
        third.axhline(ada_target, color="0.5", linestyle="--", linewidth=1, label=f"target {ada_target:g}")
        third.set_ylim(-1.02, 1.02)
        third.set_ylabel("ADA")
        third.grid(alpha=0.3)
        bottom.set_xlabel("")
        third.set_xlabel("step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            # Right-centre of the D panel is the band around 0.5 that the curves rarely cross.
            ax.legend(loc="upper right" if ax is top else "center right", fontsize=9)
    return save_figure(fig, path)


# (column, title, lower is better)
# Each title names the feature space of its number: the domain classifier's (labelled data) or the
# self-supervised encoder's (every dataset; what unlabelled data is scored in).
EVAL_PANELS = [
    ("fd", "FD, domain-classifier space (lower is better)", True),
    ("is_mean", "classifier Inception Score (higher is better)", False),
    ("ssl_fd", "FD, self-supervised space (lower is better)", True),
    ("ssl_coverage", "coverage, self-supervised space (higher is better)", False),
    ("classes_present", "classes present in the samples", False),
    ("rarest_class_fraction", "rarest class's share of the samples", False),
]
# Unlabelled data has no domain classifier: its panels would hold only the table's note, so the
# self-supervised space fills all six.
UNLABELLED_PANELS = [
    ("ssl_fd", "FD, self-supervised space (lower is better)", True),
    ("ssl_kid_mean", "KID, self-supervised space (lower is better)", True),
    ("ssl_precision", "precision, self-supervised space (realism; higher is better)", False),
    ("ssl_recall", "recall, self-supervised space (variety; higher is better)", False),
    ("ssl_coverage", "coverage, self-supervised space (higher is better)", False),
    ("memorisation_fraction", "memorised fraction (about 0.5 is healthy; near 1: copies, or blur)", False),
]
SSL_PANEL_COLUMNS = tuple(column for column, _, _ in UNLABELLED_PANELS)  # drawn whether or not the domain space scored
# Shown only when the table has values (conditional runs): is each image the class it was asked for?
CONDITIONAL_PANEL = ("class_accuracy", "generated images of the class asked for (higher is better)", False)


def evaluation_panels(table: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The panels of ``plot_evaluation`` for this table: ``EVAL_PANELS`` (labelled data, or nothing scored),
    ``UNLABELLED_PANELS`` where only the self-supervised space scored, plus ``CONDITIONAL_PANEL`` when it has
    values."""
    def has(column: str) -> bool:
        return column in table and bool(table[column].notna().any())

    panels = list(UNLABELLED_PANELS if has("ssl_fd") and not has("fd") else EVAL_PANELS)
    if has(CONDITIONAL_PANEL[0]):
        panels.append(CONDITIONAL_PANEL)
    return panels


def plot_evaluation(table: pd.DataFrame, path: Path, num_classes: int | None = None) -> Path:
    """Each evaluation metric over checkpoints (``metrics/eval.parquet``), the best checkpoint marked.

    Panels: FD in the domain classifier's space, IS with its ±std band and the real data's IS
    dashed, FD and coverage in the self-supervised space (each with its floor, held-out real
    images, dashed), classes present (out of ``num_classes``, default: the number of ``class_<k>``
    columns), the rarest class's fraction with the uniform share 1/K dashed, and for conditional
    runs ``class_accuracy``. The best checkpoint (``best`` column) is a red star and a dotted
    vertical line on every panel. Unlabelled data (only the self-supervised space scored) gets that space's
    FD, KID, precision, recall and coverage and the memorisation fraction instead (``evaluation_panels``). A
    panel without values (the self-supervised ones with ``eval.ssl_space`` off) gets the table's note.
    """
    if "select_generator" in table and "generator" in table and len(table):
        # Raw and EMA rows per checkpoint: plot the generator the best checkpoint was chosen among.
        table = table[table["generator"] == table["select_generator"].iloc[0]].reset_index(drop=True)
    panels = evaluation_panels(table)
    rows = (len(panels) + 1) // 2
    fig = Figure(figsize=(10, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, sharex=True).ravel()
    for ax in axes[len(panels):]:  # an odd number of panels leaves one cell empty
        ax.set_visible(False)
    steps = table["step"].to_numpy() if len(table) else np.array([])
    best_rows = table[table["best"]] if "best" in table and len(table) else table.iloc[0:0]
    best_step = int(best_rows["step"].iloc[-1]) if len(best_rows) else None
    scored = any(c in table and table[c].notna().any() for c in ("fd", "ssl_fd"))
    if num_classes is None:
        num_classes = sum(1 for c in table.columns if re.fullmatch(r"class_\d+", str(c))) or None
    for ax, (column, title, _) in zip(axes, panels, strict=False):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        domain_scored = "fd" in table and table["fd"].notna().any()  # classes_present is 0, not NaN, without
        if (column not in table or not table[column].notna().any()
                or (column not in SSL_PANEL_COLUMNS and not domain_scored)):
            _note(ax, str(table["note"].iloc[0]) if "note" in table and len(table) else "not scored")
            continue
        values = table[column].to_numpy(dtype=float)
        ax.plot(steps, values, marker="o", markersize=4, color="tab:blue")
        if column == "is_mean" and "is_std" in table:
            std = table["is_std"].to_numpy(dtype=float)
            ax.fill_between(steps, values - std, values + std, color="tab:blue", alpha=0.15, label="± std")
        if column == "is_mean" and "real_is" in table and table["real_is"].notna().any():
            ax.axhline(float(table["real_is"].iloc[0]), color="0.4", linestyle="--", linewidth=1,
                       label="real images")
        floor = table[f"{column}_floor"].iloc[0] if f"{column}_floor" in table else float("nan")
        if column.startswith("ssl_") and np.isfinite(floor):
            ax.axhline(float(floor), color="0.4", linestyle="--", linewidth=1, label="floor: held-out real")
        if column == "classes_present" and num_classes:
            ax.axhline(num_classes, color="0.4", linestyle="--", linewidth=1, label=f"all {num_classes}")
            ax.set_ylim(0, num_classes + 0.8)
        if column == "class_accuracy":
            ax.set_ylim(-0.02, 1.02)
        if column == "memorisation_fraction":
            ax.axhline(0.5, color="0.4", linestyle="--", linewidth=1, label="held-out real: 0.5")
            ax.set_ylim(-0.02, 1.02)
        if column == "rarest_class_fraction" and num_classes:
            ax.axhline(1 / num_classes, color="0.4", linestyle="--", linewidth=1,
                       label=f"uniform 1/{num_classes}")
        if best_step is not None:
            b = table.index[table["step"] == best_step][-1]
            ax.axvline(best_step, color=BEST_COLOUR, linestyle=":", linewidth=1.2)
            ax.plot([best_step], [table.at[b, column]], marker="*", markersize=15, color=BEST_COLOUR,
                    linestyle="none", label=f"best: step {best_step:,}", zorder=5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels) - 2:len(panels)]:  # the bottom panel of each column
        ax.set_xlabel("checkpoint step")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle("Evaluation per checkpoint" + ("" if scored else " (not scored)")
                 + (" (unlabelled: the self-supervised space)" if panels[0] == UNLABELLED_PANELS[0] else ""))
    return save_figure(fig, path)


def plot_throughput(train: pd.DataFrame, path: Path) -> Path:
    """Training speed (images/s) over steps, from ``metrics/train.parquet``, with its median dashed.

    The speed is measured per flush window (``log_every`` steps), so it is drawn as steps; dips
    show stalls (checkpoints, evaluation elsewhere on the machine, a resume).
    """
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    if "images_per_sec" in train and train["images_per_sec"].notna().any():
        speed = train["images_per_sec"].to_numpy(dtype=float)
        ax.plot(train["step"].to_numpy(), speed, drawstyle="steps-post", color="tab:green", linewidth=1.3)
        median = float(np.nanmedian(speed))
        ax.axhline(median, color="0.4", linestyle="--", linewidth=1, label=f"median {median:,.0f} images/s")
        ax.set_ylim(0, max(1.0, float(np.nanmax(speed))) * 1.1)
        ax.legend(loc="lower right", fontsize=9)
    else:
        _note(ax, "no throughput recorded")
    ax.set_xlabel("step")
    ax.set_ylabel("images / s")
    ax.set_title("Training throughput")
    return save_figure(fig, path)


def plot_run(run_dir: Path, plots_dir: Path | None = None) -> dict[str, str]:
    """All plots of a run whose tables exist, into ``plots_dir`` (default ``<run>/plots``).

    Returns {"training": path, "evaluation": path, "throughput": path} for the plots made.
    """
    run = RunDir(run_dir)
    plots_dir = Path(plots_dir) if plots_dir is not None else run.plots
    made: dict[str, str] = {}
    train = run.read_table(run.train_metrics)
    if train is not None:
        saved = run.read_saved_config().get("train") or {}
        events = run.read_table(run.health_metrics)
        made["training"] = str(plot_training(train, plots_dir / "training.png", events, saved.get("loss"),
                                             saved.get("ada_target", 0.6)))
        made["throughput"] = str(plot_throughput(train, plots_dir / "throughput.png"))
    evals = run.read_table(run.eval_metrics)
    if evals is not None:
        num_classes = run.read_manifest().get("num_classes") or None
        made["evaluation"] = str(plot_evaluation(evals, plots_dir / "evaluation.png", num_classes))
    return made
