"""``report.html``: one self-contained page per run that answers "is it working?" at a glance.

Everything comes from the files of the run folder, so the page can be rebuilt at any time
(``write_report(run_dir)``) and shows whatever a run has got so far. Sections: key numbers, real
vs generated images and the timelapse, training plots, evaluation plot and table, latent
interpolation, data summary and class histogram, health events, config, and the list of files.

Self-contained and offline: images are embedded as ``data:`` URIs, styles are inline, there is no
script, and a Content-Security-Policy forbids loading anything else (a stray external reference
fails loudly in the browser console, which the browser test checks, instead of silently
depending on the network). Links in the file list are relative, so they work when the page is
opened from the run folder.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ganlib.errors import RunError
from ganlib.runs.files import atomic_write_text
from ganlib.runs.paths import RunDir

DATA_FIELDS = ("dataset", "count", "shape", "num_classes", "key")  # shown in the data section
MAX_TABLE_ROWS = 200  # health events: the newest ones beyond this are summarised by a count

_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232a;
       background: #f4f5f7; }
header { background: #1d232a; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c8ced6; }
nav { padding: 8px 28px; background: #e6e9ee; font-size: 14px; }
nav a { margin-right: 14px; color: #1d4ed8; text-decoration: none; }
main { padding: 6px 28px 40px; max-width: 1500px; }
section { background: #fff; border-radius: 8px; padding: 14px 20px 18px; margin: 18px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 18px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 8px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #f4f5f7; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card b { display: block; font-size: 20px; }
.card span { color: #5b6470; font-size: 13px; }
.row { display: flex; flex-wrap: wrap; gap: 22px; align-items: flex-start; }
figure { margin: 0; }
figcaption { color: #5b6470; font-size: 13px; max-width: 640px; margin-top: 4px; }
img { max-width: 100%; height: auto; display: block; }
img.pixel { image-rendering: pixelated; }
.missing { color: #8a6d00; background: #fff8db; padding: 8px 12px; border-radius: 6px; }
table { border-collapse: collapse; font-size: 13.5px; }
.wide { overflow-x: auto; max-width: 100%; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; text-align: right; }
th { background: #f4f5f7; }
td.l, th.l { text-align: left; }
tr.best td { background: #fff3c4; font-weight: 600; }
.bar { display: inline-block; height: 10px; vertical-align: middle; }
.bar.real { background: #3b82f6; } .bar.gen { background: #f59e0b; }
pre { background: #f4f5f7; padding: 10px 14px; border-radius: 6px; overflow: auto; font-size: 12.5px; }
.muted { color: #5b6470; }
"""

# No script, no fetches: only inline styles and data: images may load.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: Path) -> str:
    """``data:<mime>;base64,...`` of an image file (PNG, GIF or JPEG)."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(path: Path, alt: str, caption: str = "", display_width: int | None = None,
            pixel: bool = False) -> str:
    """An embedded image with a caption, or a note saying the file is missing.

    ``display_width``: CSS width in pixels (images of enlarged cells can be shown larger than their
    file with ``pixel``, which keeps the pixels sharp instead of blurring them).
    """
    path = Path(path)
    if not path.is_file():
        return f'<p class="missing">{_e(alt)}: not made yet (<code>{_e(path.name)}</code> is missing).</p>'
    with Image.open(path) as im:
        width, height = im.size
    # The figure takes the picture's width, so a long caption wraps instead of widening it.
    shown = display_width or width
    cls = ' class="pixel"' if pixel else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f'<figure style="width:{shown}px; max-width:100%"><img src="{data_uri(path)}" alt="{_e(alt)}" '
            f'width="{width}" height="{height}" style="width:100%"{cls}>{cap}</figure>')


def _read_table(run: RunDir, path: Path) -> pd.DataFrame | None:
    try:
        return run.read_table(path)
    except RunError:  # a report shows what it can
        return None


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""  # not reached


def _cards(config: dict, summary: dict, train: pd.DataFrame | None, evals: pd.DataFrame | None,
           manifest: dict) -> str:
    cards: list[tuple[str, str]] = []
    last_step = int(train["step"].iloc[-1]) if train is not None and len(train) else None
    if last_step is not None:
        cards.append((f"{last_step:,}", "steps trained"))
    if evals is not None and len(evals) and "best" in evals:
        best = evals[evals["best"]].iloc[-1]
        chosen_by = best.get("select_metric") if "select_metric" in best else "fd"
        cards.append((f"step {int(best['step']):,}", f"best checkpoint (by {chosen_by})"))
        if pd.notna(best.get("fd")):
            cards.append((_fmt(float(best["fd"]), 2), "FD, domain-classifier space (lower is better)"))
            real_is = best.get("real_is")
            ref = f" (real data {float(real_is):.2f})" if real_is is not None and pd.notna(real_is) else ""
            cards.append((_fmt(float(best["is_mean"]), 2), f"classifier IS{ref}"))
            k = manifest.get("num_classes") or "?"
            cards.append((f"{int(best['classes_present'])} / {k}", "classes present in samples"))
        if pd.notna(best.get("ssl_fd", float("nan"))):
            floor = best.get("ssl_fd_floor", float("nan"))
            ref = f" (real data {float(floor):.2f})" if pd.notna(floor) else ""
            cards.append((_fmt(float(best["ssl_fd"]), 2), f"FD, self-supervised space{ref}"))
    if train is not None and len(train):
        tail = train.tail(max(1, len(train) // 20))  # the last 5% of the run, where it ended up
        cards.append((f"{tail['d_real'].mean():.2f} / {tail['d_fake'].mean():.2f}",
                      "D(x) / D(G(z)), last 5% of steps"))
        if "ada_p" in train and (train["ada_p"] > 0).any():
            cards.append((f"{train['ada_p'].iloc[-1]:.2f}", "ADA probability p at the end (max "
                          f"{train['ada_p'].max():.2f})"))
        speed = train["images_per_sec"].median() if "images_per_sec" in train else float("nan")
        if pd.notna(speed):
            cards.append((f"{speed:,.0f}", "images/s (median)"))
    seconds = (summary.get("train") or {}).get("seconds")
    if seconds:
        shown = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        cards.append((shown, "training time (this attempt)"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards) + "</div>"


def _percent(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.1f}%"


def _eval_table(evals: pd.DataFrame) -> str:
    # Conditional runs add how often an image is of the class it was asked for; EMA runs say so. Columns of a
    # space that did not score (the classifier's on unlabelled data, Inception skipped) are left out: the
    # notes below say why, where a column of dashes said nothing.
    def scored(key: str) -> bool:
        return key in evals and bool(evals[key].notna().any())

    conditional = scored("class_accuracy")
    domain = scored("fd") or "ssl_fd" not in evals  # tables from before the self-supervised space: as they were
    extra = [(key, title, digits) for key, title, digits in EXTRA_COLUMNS if scored(key)]
    weights = "generator" in evals
    head = ("<tr><th>step</th><th class='l'>checkpoint</th>" + ("<th class='l'>weights</th>" if weights else "")
            + ("<th>FD ↓ (classifier)</th><th>classifier IS ↑</th><th>classes present</th><th>rarest class</th>"
               if domain else "")
            + ("<th>class asked for ↑</th>" if conditional else "")
            + "".join(f"<th>{_e(title)}</th>" for _, title, _ in extra)
            + "<th>samples</th><th>seconds</th></tr>")
    rows = []
    nan = float("nan")
    for r in evals.to_dict("records"):
        best = bool(r.get("best"))
        rows.append(
            f"<tr class='{'best' if best else ''}'><td>{int(r['step']):,}</td>"
            f"<td class='l'>{_e(r['checkpoint'])}{' ★ best' if best else ''}</td>"
            + (f"<td class='l'>{_e(r.get('generator', ''))}</td>" if weights else "")
            + (f"<td>{_fmt(r.get('fd', nan))}</td>"
               f"<td>{_fmt(r.get('is_mean', nan))} ± {_fmt(r.get('is_std', nan))}</td>"
               f"<td>{_e(r.get('classes_present', ''))}</td><td>{_percent(r.get('rarest_class_fraction'))}</td>"
               if domain else "")
            + (f"<td>{_percent(r.get('class_accuracy'))}</td>" if conditional else "")
            + "".join(f"<td>{_fmt(r.get(key, nan), digits)}</td>" for key, _, digits in extra)
            + f"<td>{_e(r.get('num_samples', ''))}</td><td>{_fmt(r.get('seconds', nan), 1)}</td></tr>")
    note = ""
    if "note" in evals and len(evals):
        note = f"<p class='muted'>{_e(evals['note'].iloc[0])}</p>"
    spaces = ("<p class='muted'>Feature spaces: FD, KID, IS, precision, recall, density and coverage without a "
              "prefix are in the domain classifier's features (labelled data only); “SSL” columns in the "
              "self-supervised encoder's, learned from the real images without labels (every dataset: read these "
              "for unlabelled data, and to compare datasets); “Inception” columns in Inception-v3's.</p>")
    return (f"<div class='wide'><table>{head}{''.join(rows)}</table></div>{note}{spaces}"
            f"{_evaluation_notes(evals)}")


# Issue #5's metrics and the self-supervised space's, shown when the table has them: (column, heading, decimals).
EXTRA_COLUMNS = [
    ("kid_mean", "KID ↓", 4), ("precision", "precision ↑", 3), ("recall", "recall ↑", 3),
    ("density", "density", 3), ("coverage", "coverage ↑", 3),
    ("ssl_fd", "SSL FD ↓", 3), ("ssl_kid_mean", "SSL KID ↓", 4), ("ssl_precision", "SSL precision ↑", 3),
    ("ssl_recall", "SSL recall ↑", 3), ("ssl_coverage", "SSL coverage ↑", 3),
    ("inception_fid", "Inception FID ↓", 2),
    ("inception_is_mean", "Inception IS ↑", 2), ("dinov2_fd", "DINOv2 FD ↓", 2),
    ("memorisation_fraction", "closer than real", 3),
]


def _evaluation_notes(evals: pd.DataFrame) -> str:
    """The floors (held-out real images scored like a checkpoint), the Inception status and the selection."""
    if not len(evals) or "best" not in evals or not evals["best"].any():
        return ""
    best = evals[evals["best"]].iloc[-1]
    parts = []
    floors = [(title, best.get(f"{key}_floor"), digits) for key, title, digits in
              [("fd", "FD", 3), *EXTRA_COLUMNS[:10], ("inception_fid", "Inception FID", 2),
               ("dinov2_fd", "DINOv2 FD", 2)]]
    shown = [f"{title.rstrip(' ↑↓')} {_fmt(float(value), digits)}" for title, value, digits in floors
             if value is not None and pd.notna(value)]
    if shown:
        parts.append(f"Floor ({_e(best.get('floor_num_samples', '?'))} held-out real images scored like a "
                     f"checkpoint): {_e(', '.join(shown))}.")
    if "inception_status" in best:
        parts.append(f"Inception metrics: {_e(best['inception_status'])}.")
    if "dinov2_status" in best:
        parts.append(f"DINOv2 metrics: {_e(best['dinov2_status'])}.")
    if "memorisation_fraction" in best:
        parts.append("“closer than real”: share of samples nearer a training image than the median held-out "
                     f"real image ({_e(best.get('memorisation_space', ''))}); about 0.5 is healthy, far above "
                     "means near-copies.")
    if "select_metric" in best:
        parts.append(f"Best: {_e(best['select_metric'])} ({_e(best.get('select_direction', ''))}) among the "
                     f"{_e(best.get('select_generator', ''))} rows. {_e(best.get('select_note', '') or '')}")
    return "".join(f"<p class='muted'>{p}</p>" for p in parts)


def _class_histogram(manifest: dict, evals: pd.DataFrame | None) -> str:
    """Real class shares (manifest) beside the best checkpoint's sample shares, as CSS bars."""
    hist = {int(k): int(v) for k, v in (manifest.get("class_histogram") or {}).items()}
    if not hist:
        return "<p class='muted'>No class labels: the dataset is unlabelled.</p>"
    names = manifest.get("class_names") or [str(k) for k in sorted(hist)]
    total = sum(hist.values()) or 1
    generated: dict[int, float] = {}
    if evals is not None and len(evals) and "best" in evals:
        best = evals[evals["best"]].iloc[-1]
        generated = {k: float(best[f"class_{k}"]) for k in hist
                     if f"class_{k}" in best and pd.notna(best[f"class_{k}"])}
    scale = 300 / max([hist[k] / total for k in hist] + list(generated.values()) + [1e-9])
    rows = []
    for k in sorted(hist):
        real = hist[k] / total
        name = names[k] if k < len(names) else str(k)
        gen = generated.get(k)
        gen_cell = ("<td class='l'>–</td>" if gen is None else
                    f"<td class='l'><span class='bar gen' style='width:{gen * scale:.1f}px'></span> "
                    f"{100 * gen:.1f}%</td>")
        rows.append(f"<tr><td class='l'>{_e(name)}</td><td>{hist[k]:,}</td>"
                    f"<td class='l'><span class='bar real' style='width:{real * scale:.1f}px'></span> "
                    f"{100 * real:.1f}%</td>{gen_cell}</tr>")
    gen_head = "generated at the best checkpoint (classifier's label)" if generated else "generated"
    return ("<table><tr><th class='l'>class</th><th>real images</th><th class='l'>real share</th>"
            f"<th class='l'>{gen_head}</th></tr>{''.join(rows)}</table>")


def _health(health: pd.DataFrame | None) -> str:
    if health is None or not len(health):
        return "<p>none recorded</p>"
    shown = health.tail(MAX_TABLE_ROWS)
    more = len(health) - len(shown)
    if "time" in shown and pd.api.types.is_numeric_dtype(shown["time"]):  # unix seconds -> readable
        readable = pd.to_datetime(shown["time"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S UTC")
        shown = shown.assign(time=readable)
    table = shown.to_html(index=False, escape=True, na_rep="", border=0,
                          float_format=lambda x: f"{x:.4g}")
    prefix = f"<p class='muted'>{more} earlier events not shown.</p>" if more else ""
    return f"<p>{len(health)} event(s).</p>{prefix}{table}"


def _files(run_dir: Path) -> str:
    rows = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if rel.name == RunDir(run_dir).report.name or rel.name.startswith(".") or ".tmp-" in rel.name:
            continue
        link = "/".join(_e(part) for part in rel.parts)
        rows.append(f"<tr><td class='l'><a href='{link}'>{_e(rel.as_posix())}</a></td>"
                    f"<td>{_size(path.stat().st_size)}</td></tr>")
    return f"<table><tr><th class='l'>file</th><th>size</th></tr>{''.join(rows)}</table>"


def build_report(run_dir: Path) -> str:
    """The HTML of a run's report, from the files in ``run_dir``; missing parts say so."""
    run = RunDir(run_dir)
    run_dir = run.root
    config, summary, manifest = run.read_saved_config(), run.read_summary(), run.read_manifest()
    train, evals = _read_table(run, run.train_metrics), _read_table(run, run.eval_metrics)
    health = _read_table(run, run.health_metrics)
    gallery, plots = run.gallery, run.plots
    run_id = config.get("run_id") or run_dir.name
    model, data, train_cfg = config.get("model") or {}, config.get("data") or {}, config.get("train") or {}
    shape = manifest.get("shape")
    best_step = None
    if evals is not None and len(evals) and "best" in evals:
        best_step = int(evals[evals["best"]]["step"].iloc[-1])
    weights = (summary.get("gallery") or {}).get("weights")
    weights_note = ", EMA weights" if weights == "ema" else ""

    subtitle = (f"{_e(model.get('name', '?'))} on {_e(data.get('dataset', '?'))}"
                + (f" ({manifest.get('count', '?'):,} images of {'×'.join(map(str, shape))})"
                   if shape and isinstance(manifest.get('count'), int) else "")
                + f" · batch {_e(train_cfg.get('batch_size', '?'))} · lr {_e(train_cfg.get('lr', '?'))}"
                + f" · seed {_e(config.get('seed', '?'))}"
                + f" · report made {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    sections = [
        ("glance", "At a glance", _cards(config, summary, train, evals, manifest) + '<div class="row">'
         + _figure(run_dir / "data" / "real_grid.png", "real images",
                   "Real images from the prepared dataset.", display_width=400)
         + _figure(gallery / "grid_10x10.png", "generated images, best checkpoint",
                   f"Generated at the best checkpoint: step {best_step if best_step is not None else '?'}"
                   f"{weights_note}, fixed latents.", display_width=400)
         + _figure(gallery / "progress.gif", "timelapse of training",
                   "Timelapse: the same 64 latents at every checkpoint, so each cell shows one sample "
                   "learning.", display_width=400)
         + "</div>"),
        ("training", "Training", _figure(plots / "training.png", "losses and D outputs")
         + _figure(plots / "throughput.png", "throughput")),
        ("evaluation", "Evaluation", _figure(plots / "evaluation.png", "evaluation metrics")
         + (_eval_table(evals) if evals is not None else "<p class='missing'>Not evaluated yet.</p>")),
        ("interpolation", "Latent interpolation", '<div class="row">'
         + _figure(gallery / "interpolation.png", "interpolation grid",
                   "Each row walks the great circle between two fixed latents (slerp): smooth changes "
                   "mean a continuous latent space.", display_width=600)
         + _figure(gallery / "interpolation.gif", "interpolation animation",
                   "Each cell loops through four fixed latents.", display_width=366, pixel=True)
         + "</div>"),
        ("data", "Data", "<p>" + _e(", ".join(f"{k}: {manifest[k]}" for k in DATA_FIELDS if k in manifest)
                                    or "no data/manifest.json") + "</p>"
         + _class_histogram(manifest, evals)),
        ("health", "Health events", _health(health)),
        ("config", "Config", f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True))}</pre>"),
        ("files", "Files", f"<p class='muted'>In <code>{_e(run_dir)}</code>, besides this page.</p>"
         + _files(run_dir)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>GAN run {_e(run_id)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>GAN run <code>{_e(run_id)}</code></h1><p>{subtitle}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Build ``<run_dir>/report.html`` (atomically) and return its path."""
    path = RunDir(run_dir).report
    atomic_write_text(path, build_report(run_dir))
    return path
