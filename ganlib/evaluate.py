"""Checkpoint evaluation in a domain classifier's feature space.

Inception features are the wrong tool for 28-pixel digits, so each dataset gets its own small CNN
classifier, trained once on the prepared real images and cached with the real data's feature
statistics. For every checkpoint, ``num_samples`` images from fixed latents are scored by

- ``fd``: the Fréchet distance between real and generated penultimate features (lower is better);
- ``is_mean``/``is_std``: the classifier Inception Score exp E[KL(p(y|x) || p(y))] over 10 splits;
- the class histogram of the samples: ``classes_present`` and the rarest class's fraction.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ganlib import checkpoint as ckpt
from ganlib.classifier import DomainClassifier, classify, load_classifier, save_classifier, train_classifier
from ganlib.config import EvalConfig, RunConfig
from ganlib.data.store import PreparedStore, load_store
from ganlib.errors import DataError
from ganlib.gallery import fixed_noise, generate
from ganlib.io import atomic_path
from ganlib.metrics import class_histogram, classifier_inception_score, feature_statistics, frechet_distance
from ganlib.run import RunPaths, resolve_device
from ganlib.train import load_generator

log = logging.getLogger("ganlib")

FEATURE_SPACE = "domain-classifier"
CLASSIFIER_VERSION = 1
# Latents of the evaluation samples are derived from the run seed, offset so they differ from
# the training noise and the gallery's.
EVAL_NOISE_OFFSET = 1_000_003


def _to_float(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images_uint8)).float().div_(127.5).sub_(1.0)


def domain_reference(
    store: PreparedStore, out: Path, cfg: EvalConfig, seed: int, device: torch.device
) -> tuple[DomainClassifier, dict[str, Any]]:
    """The dataset's classifier and the real data's feature statistics, trained and cached once.

    Cached under ``<out>/_cache/classifiers/<store key>-s<steps>-seed<seed>.pt`` (the model) and
    ``....stats.pt`` (mean, covariance and scores of the real images). Returns (classifier, reference),
    reference holding ``mu``, ``sigma`` (float64), ``holdout_accuracy``, ``real_is``, ``num_real``.
    """
    if store.labels is None or store.num_classes < 2:
        raise DataError(f"evaluation needs a labelled dataset with at least 2 classes; {store.path} has none")
    base = Path(out) / "_cache" / "classifiers" / (
        f"{store.manifest['key']}-v{CLASSIFIER_VERSION}-s{cfg.classifier_steps}-seed{seed}")
    model_path, stats_path = base.with_suffix(".pt"), base.with_suffix(".stats.pt")
    if model_path.is_file() and stats_path.is_file():
        model, meta = load_classifier(model_path, device)
        stats = torch.load(stats_path, map_location="cpu", weights_only=True)
        log.info("evaluation: reusing domain classifier %s (holdout accuracy %.4f)",
                 model_path.name, meta["holdout_accuracy"])
        return model, {**stats, "holdout_accuracy": meta["holdout_accuracy"]}

    log.info("evaluation: training the domain classifier (%d steps) on %d real images",
             cfg.classifier_steps, len(store.images))
    model, info = train_classifier(
        torch.from_numpy(np.array(store.images)), torch.from_numpy(store.labels), store.num_classes,
        num_steps=cfg.classifier_steps, seed=seed, device=device)
    save_classifier(model, {**info, "store_key": store.manifest["key"]}, model_path)
    features, probs = classify(model, _to_float(store.images), batch_size=cfg.batch_size)
    mu, sigma = feature_statistics(features)
    real_is, _ = classifier_inception_score(probs)
    stats = {"mu": mu, "sigma": sigma, "real_is": real_is, "num_real": len(features)}
    with atomic_path(stats_path) as tmp:
        torch.save(stats, tmp)
    log.info("evaluation: classifier holdout accuracy %.4f, real-data IS %.3f (%.0f s)",
             info["holdout_accuracy"], real_is, info["seconds"])
    return model, {**stats, "holdout_accuracy": info["holdout_accuracy"]}


def score_images(
    images: torch.Tensor, classifier: DomainClassifier, reference: dict[str, Any], num_classes: int,
    batch_size: int = 500, asked: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Scores of images (N, C, H, W) float in [-1, 1] against the real reference; plain floats.

    ``asked``: for a conditional generator, the class each image was generated for (N,); adds
    ``class_accuracy``, the fraction the classifier assigns to that class (NaN otherwise).
    """
    features, probs = classify(classifier, images, batch_size=batch_size)
    accuracy = float((probs.argmax(dim=1) == asked).double().mean()) if asked is not None else float("nan")
    mu, sigma = feature_statistics(features)
    is_mean, is_std = classifier_inception_score(probs)
    counts = class_histogram(probs.argmax(dim=1), num_classes)
    fractions = (counts.double() / counts.sum()).tolist()
    return {
        "fd": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
        "is_mean": is_mean,
        "is_std": is_std,
        "class_accuracy": accuracy,
        "classes_present": int((counts > 0).sum()),
        "rarest_class_fraction": float(min(fractions)),
        **{f"class_{c}": float(f) for c, f in enumerate(fractions)},
    }


def evaluate_run(cfg: RunConfig, store_dir: Path) -> pd.DataFrame:
    """Score every checkpoint of the run; write and return ``metrics/eval.parquet``.

    One row per checkpoint (columns: step, checkpoint, fd, is_mean, is_std, classes_present,
    rarest_class_fraction, class_<k>, num_samples, feature_space, seconds) and a ``best`` column
    marking the lowest Fréchet distance. Checkpoints already scored with the same settings (same
    checkpoint bytes, sample count and seed) are not scored again, so a retry is cheap.
    """
    cfg = cfg.resolved()
    paths = RunPaths(cfg.run_dir)
    checkpoints = ckpt.list_checkpoints(paths.checkpoints)
    if not checkpoints:
        raise DataError(f"run {cfg.run_id!r} has no checkpoints in {paths.checkpoints}; train it first")
    device = resolve_device(cfg.device)
    store = load_store(store_dir)
    if store.labels is None or store.num_classes < 2:  # no classes to train the domain classifier on
        return _unscored_table(paths, checkpoints, store, cfg.eval.num_samples)
    classifier, reference = domain_reference(store, cfg.out, cfg.eval, cfg.seed, device)

    previous: dict[tuple, dict[str, Any]] = {}
    if paths.eval_metrics.is_file():
        for row in pd.read_parquet(paths.eval_metrics).to_dict("records"):
            previous[(row["checkpoint_sha256"], row["num_samples"], row["eval_seed"], row.get("use_ema"))] = row

    eval_seed = cfg.seed + EVAL_NOISE_OFFSET
    rows: list[dict[str, Any]] = []
    for step, path in checkpoints:
        sidecar = path.with_name(path.name + ".sha256")
        digest = sidecar.read_text().strip() if sidecar.is_file() else ""
        key = (digest, cfg.eval.num_samples, eval_seed, cfg.eval.use_ema)
        if digest and key in previous:
            rows.append(previous[key])
            continue
        t0 = time.perf_counter()
        generator, meta = load_generator(path, device, use_ema=cfg.eval.use_ema)
        z = fixed_noise(cfg.eval.num_samples, meta["config"]["model"]["noise_dim"], eval_seed)
        # A conditional generator is asked for every class in turn; it is scored on how often the
        # classifier agrees with the class asked for.
        asked = (torch.arange(cfg.eval.num_samples) % store.num_classes
                 if meta["config"]["model"].get("conditional") else None)
        images = generate(generator, z, batch_size=cfg.eval.batch_size, labels=asked)
        scores = score_images(images, classifier, reference, store.num_classes, cfg.eval.batch_size, asked)
        row = {"step": step, "checkpoint": path.name, "generator": meta["weights"], **scores,
               "num_samples": cfg.eval.num_samples,
               "feature_space": FEATURE_SPACE, "eval_seed": eval_seed, "use_ema": cfg.eval.use_ema,
               "checkpoint_sha256": digest,
               "seconds": round(time.perf_counter() - t0, 3)}
        log.info("evaluation: step %d  FD %.3f  IS %.3f  classes %d/%d  (%.1f s)", step, row["fd"],
                 row["is_mean"], row["classes_present"], store.num_classes, row["seconds"])
        rows.append(row)
        # Saved after every checkpoint, so an evaluation killed part-way keeps what it scored.
        _write_table(rows, reference, paths)
    return _write_table(rows, reference, paths)


def _write_table(rows: list[dict[str, Any]], reference: dict[str, Any], paths: RunPaths) -> pd.DataFrame:
    table = pd.DataFrame(rows).sort_values("step").reset_index(drop=True)
    table["best"] = table["fd"] == table["fd"].min()
    table["real_is"] = float(reference["real_is"])
    table["classifier_holdout_accuracy"] = float(reference["holdout_accuracy"])
    with atomic_path(paths.eval_metrics) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def _unscored_table(paths: RunPaths, checkpoints: list[tuple[int, Path]], store: PreparedStore,
                    num_samples: int) -> pd.DataFrame:
    """The evaluation table of a run on unlabelled data: one row per checkpoint, metrics NaN.

    The domain classifier needs labels, so there is nothing to score yet; the newest checkpoint is
    marked best, and ``note`` says why.
    """
    why = "unlabelled dataset" if store.labels is None else f"{store.num_classes} class"
    note = f"not scored: {why}, so there is no domain classifier; the newest checkpoint is marked best"
    nan = float("nan")
    table = pd.DataFrame([
        {"step": step, "checkpoint": path.name, "fd": nan, "is_mean": nan, "is_std": nan,
         "classes_present": 0, "rarest_class_fraction": nan, "num_samples": num_samples,
         "feature_space": "none", "seconds": 0.0}
        for step, path in checkpoints]).sort_values("step").reset_index(drop=True)
    table["best"] = table["step"] == table["step"].max()
    table["real_is"] = nan
    table["classifier_holdout_accuracy"] = nan
    table["note"] = note
    log.info("evaluation: %s", note)
    with atomic_path(paths.eval_metrics) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def best_checkpoint(table: pd.DataFrame, run_dir: Path) -> Path:
    """Path of the checkpoint marked best in an evaluation table."""
    name = table.loc[table["best"], "checkpoint"].iloc[-1]
    return RunPaths(Path(run_dir)).checkpoints / name
