"""Checkpoint evaluation: standard and domain metrics, their floors, memorisation, the best checkpoint.

Every checkpoint's samples (``eval.num_samples`` images from fixed latents, per seed, for the raw
and the EMA generator) pass once through each feature space, and that one pass feeds every metric
of the space:

- **domain-classifier** (labelled datasets): a small CNN trained once per dataset on the real
  images (``ganlib.evaluation.classifier``); Inception features are the wrong tool for 28-pixel digits.
  Columns ``fd`` (Fréchet distance), ``kid_mean``/``kid_std``, ``is_mean``/``is_std`` (classifier
  Inception Score), ``precision``, ``recall``, ``density``, ``coverage`` (k-NN manifolds, k =
  ``eval.nearest_k``), the class histogram, and ``class_accuracy`` for conditional runs.
- **self-supervised** (every dataset, labelled or not, unless ``eval.ssl_space`` is off): a small
  contrastive encoder trained once per dataset on the real images without labels
  (``ganlib.evaluation.contrastive``). Columns ``ssl_fd``, ``ssl_kid_mean``/``_std``, ``ssl_precision``,
  ``ssl_recall``, ``ssl_density``, ``ssl_coverage`` (no IS: the space has no classes). Unlabelled data
  is scored and its best checkpoint chosen in this space.
- **inception-v3** (torch-fidelity's network and weights, ``ganlib.evaluation.inception``): the standard
  ``inception_fid``, ``inception_kid_mean``/``_std``, ``inception_is_mean``/``_std`` and the same
  four k-NN metrics. ``inception_status`` says whether they were computed, or why not.
- **dinov2** (Meta's DINOv2 ViT from a weights file the user supplies, ``ganlib.evaluation.dinov2``;
  Stein et al. 2023 recommend FD in it): ``dinov2_fd``, ``dinov2_kid_mean``/``_std`` and the four
  k-NN metrics (no IS: no classes). ``dinov2_status`` says whether they were computed, or why not.
- **memorisation** (``ganlib.evaluation.memorisation``): the share of samples nearer a training image than
  the median held-out real image is (``memorisation_fraction``, about 0.5 for a generator that
  does not copy), and a picture of the 16 closest pairs in ``<run>/eval/``.

The real images are split once per dataset, deterministically, into a reference set (the
statistics every checkpoint is compared with) and an equally large held-out set. The held-out
images are scored exactly like a checkpoint's samples: those ``<metric>_floor`` columns are the
best a perfect generator could expect at these sample counts. Reference features, statistics
(float64), k-NN radii and floors are cached per dataset, feature space and sample count under
``<out>/_cache/eval-reference/``, so evaluating a checkpoint does not recompute them.

The GAN trains on every image of the store, held-out ones included: for memorisation the held-out
images are only held out of the nearest-neighbour search, and a sample that copies one of them is
not caught.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ganlib.config import EvalConfig, RunConfig
from ganlib.data.store import PreparedStore, check_same_data, load_store, prepared_size
from ganlib.errors import DataError
from ganlib.evaluation.classifier import DomainClassifier, classify, load_classifier, save_classifier, train_classifier
from ganlib.evaluation.contrastive import ContrastiveEncoder, load_encoder, save_encoder, train_encoder
from ganlib.evaluation.contrastive import embed as ssl_embed
from ganlib.evaluation.dinov2 import FEATURE_SPACE as DINOV2_SPACE
from ganlib.evaluation.dinov2 import Dinov2Net, dinov2_features, load_dinov2
from ganlib.evaluation.inception import FEATURE_SPACE as INCEPTION_SPACE
from ganlib.evaluation.inception import InceptionNet, inception_features, load_inception
from ganlib.evaluation.memorisation import memorisation_scores, nearest_training, pixel_vectors, save_closest_pairs
from ganlib.evaluation.metrics import (
    class_histogram,
    classifier_inception_score,
    feature_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_score_from_logits,
    kernel_inception_distance,
    knn_radii,
    precision_recall_density_coverage,
)
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.device import fitting_batches, float64_device, resolve_device
from ganlib.runs.files import atomic_path, atomic_torch_save
from ganlib.runs.lock import computing
from ganlib.runs.paths import CacheDir, RunDir
from ganlib.sampling import fixed_noise, generate, load_generator, to_uint8, to_unit_range

log = logging.getLogger("ganlib")

FEATURE_SPACE = "domain-classifier"
SSL_SPACE = "self-supervised"
CLASSIFIER_VERSION = 1
SSL_VERSION = 1  # part of the encoder's cache name: bump when its architecture or training changes
# The encoder's seed is fixed, not the run's: every run on a dataset shares one encoder, so their
# ssl_* columns are comparable.
SSL_SEED = 0
REFERENCE_VERSION = 1  # bump when what a cached reference holds, or how it is computed, changes
EVAL_VERSION = 2  # part of the key that decides whether an old row can be reused
# Latents of the evaluation samples are derived from the run seed, offset so they differ from
# the training noise and the gallery's; seed i of several adds i * SEED_STRIDE.
EVAL_NOISE_OFFSET = 1_000_003
SEED_STRIDE = 7_919
SPLIT_SEED = 0  # the reference / held-out split of the real images, the same for every run
PROGRESS_EVERY_S = 30  # a progress line this often while images go through the feature spaces
# How a user starts evaluation in smaller batches (said when the GPU ran out of memory in larger ones).
EVAL_BATCH_FLAG = "--eval-batch-size {n} (flows/evaluate.py: --batch-size {n})"
MIN_REFERENCE = 10  # fewer real images in each half than this, and there is nothing to compare with

# The metrics each feature space computes, in the space's own names; columns are prefixed per space.
SPACE_METRICS = ("fd", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "density", "coverage")
# Which direction is better, for the metrics the best checkpoint can be chosen by (eval.select_metric).
SELECT_DIRECTIONS: dict[str, str] = {
    "fd": "min", "kid_mean": "min", "is_mean": "max", "precision": "max", "recall": "max",
    "density": "max", "coverage": "max", "class_accuracy": "max",
    "ssl_fd": "min", "ssl_kid_mean": "min", "ssl_precision": "max", "ssl_recall": "max", "ssl_density": "max",
    "ssl_coverage": "max",
    "inception_fid": "min", "inception_kid_mean": "min", "inception_is_mean": "max",
    "inception_precision": "max", "inception_recall": "max", "inception_density": "max",
    "inception_coverage": "max",
    "dinov2_fd": "min", "dinov2_kid_mean": "min", "dinov2_precision": "max", "dinov2_recall": "max",
    "dinov2_density": "max", "dinov2_coverage": "max",
}
_MAIN_METRICS = ("fd", "kid_mean", "is_mean", "precision", "recall", "density", "coverage")
# Metrics whose spread over latent seeds is reported (<metric>_seed_std) when eval.num_seeds > 1.
SEED_STD_METRICS = (*_MAIN_METRICS, "class_accuracy", "rarest_class_fraction", "memorisation_fraction",
                    *(f"inception_{'fid' if m == 'fd' else m}" for m in _MAIN_METRICS),
                    *(f"{kind}_{m}" for kind in ("ssl", "dinov2") for m in _MAIN_METRICS if m != "is_mean"))
SPACE_KINDS = ("domain", "ssl", "inception", "dinov2")


def space_metrics(space_kind: str) -> tuple[str, ...]:
    """The metrics a space computes: ``SPACE_METRICS``, less IS for the spaces without classes (ssl, dinov2)."""
    return tuple(m for m in SPACE_METRICS if not (space_kind in ("ssl", "dinov2") and m.startswith("is_")))


def column(space_kind: str, metric: str) -> str:
    """The eval-table column of a space's metric: domain metrics unprefixed, ``fd`` -> ``ssl_fd``,
    ``inception_fid``, ``dinov2_fd``."""
    if space_kind == "domain":
        return metric
    if space_kind == "inception":
        return f"inception_{'fid' if metric == 'fd' else metric}"
    return f"{space_kind}_{metric}"


# --- the real data: split, feature spaces, cached references ---------------------------------------

def real_split(num_images: int, num_real: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint indices of the reference set and the held-out set, ``min(num_real, num_images // 2)``
    each, drawn by a fixed seed (the same for every run on the dataset)."""
    n = min(num_real, num_images // 2)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    return np.sort(order[:n]), np.sort(order[n: 2 * n])


@dataclass
class Space:
    """A feature space: ``embed`` maps images (N, C, H, W) float in [-1, 1] to (features (N, D), aux),
    aux being class probabilities (domain), Inception logits (inception) or empty (N, 0) (ssl, dinov2)."""

    kind: str  # "domain", "ssl", "inception" or "dinov2"
    name: str  # FEATURE_SPACE, SSL_SPACE, INCEPTION_SPACE or DINOV2_SPACE
    tag: str  # what identifies its reference in the cache
    embed: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def embed_batches(spaces: list[Space], make: Callable[[int, int], torch.Tensor], total: int, batch_size: int,
                  what: str, keep: Callable[[torch.Tensor], None] | None = None, fitted: dict[str, int] | None = None
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pass images ``make(start, stop)`` (float, [-1, 1]; ``total`` in all) through every space, ``batch_size``
    at a time: ``{space.kind: (features, aux)}``. ``keep``, if given, sees each batch once it went through.

    No float copy of the whole set is ever held (10,000 RGB images of 256 px: 7.9 GB). Where a batch does not
    fit the GPU's memory (a large generator at 256 px), the batch is halved, with a warning, until it fits
    (``fitted``: see ``fitting_batches``).
    ``what`` names the images in the progress line written every ``PROGRESS_EVERY_S`` seconds (Inception or
    DINOv2 on a CPU take minutes).
    """
    parts: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {space.kind: ([], []) for space in spaces}
    started = last_line = time.perf_counter()
    done = 0

    def work(start: int, stop: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        images = make(start, stop)
        return images, [space.embed(images) for space in spaces]

    for images, embedded in fitting_batches(total, batch_size, work, f"evaluation: {what}", EVAL_BATCH_FLAG, fitted):
        for space, (features, aux) in zip(spaces, embedded):
            parts[space.kind][0].append(features)
            parts[space.kind][1].append(aux)
        if keep is not None:
            keep(images)
        done += len(images)
        now = time.perf_counter()
        if now - last_line >= PROGRESS_EVERY_S and done < total:
            last_line = now
            log.info("evaluation: %s: %d/%d images through %s (%.0f s, about %.0f s left)", what, done, total,
                     ", ".join(space.name for space in spaces) or "no feature space", now - started,
                     (now - started) / done * (total - done))
    return {kind: (torch.cat(feats), torch.cat(aux)) for kind, (feats, aux) in parts.items()}


def _embed_store(space: Space, images: np.ndarray, index: np.ndarray, batch_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the stored uint8 images at ``index``, converting batch by batch (a float copy of a large set is big)."""
    return embed_batches([space], lambda start, stop: to_unit_range(images[index[start:stop]]), len(index),
                         batch_size, f"{space.name} reference")[space.kind]


def embed_samples(spaces: list[Space], generator: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
                  batch_size: int, what: str, fitted: dict[str, int] | None = None
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Generate from latents ``z`` (and ``labels``, conditional generators) a batch at a time, each batch
    through every space (:func:`embed_batches`) as it is made: ``({space.kind: (features, aux)}, samples)``,
    ``samples`` (N, C, H, W) uint8, all that is kept of the images (a quarter of a float copy), for the pixel
    memorisation search and its picture."""
    samples: list[torch.Tensor] = []

    def make(start: int, stop: int) -> torch.Tensor:
        return generate(generator, z[start:stop], batch_size=stop - start,
                        labels=None if labels is None else labels[start:stop])

    embedded = embed_batches(spaces, make, len(z), batch_size, what,
                             keep=lambda images: samples.append(to_uint8(images)), fitted=fitted)
    return embedded, torch.cat(samples)


def space_scores(space_kind: str, features: torch.Tensor, aux: torch.Tensor, reference: dict[str, Any],
                 cfg: EvalConfig, seed: int, device: torch.device | None = None) -> dict[str, float]:
    """A space's metrics (``space_metrics(space_kind)`` names) of one feature set against the space's reference.

    ``device``: where the pairwise work (KID kernels, k-NN distances) runs, float64 throughout (the CPU for MPS).
    """
    device = float64_device(device or "cpu")
    mu, sigma = feature_statistics(features)
    is_scores: dict[str, float] = {}
    if space_kind == "inception":  # the standard numbers, as torch-fidelity computes them
        fd = fid_from_statistics(mu, sigma, reference["mu"], reference["sigma"])
        is_scores = dict(zip(("is_mean", "is_std"), inception_score_from_logits(aux, seed=seed)))
    else:
        fd = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
        if space_kind == "domain":
            is_scores = dict(zip(("is_mean", "is_std"), classifier_inception_score(aux)))
    real = reference["features"].to(device, torch.float64)
    fake = features.to(device, torch.float64)
    kid_mean, kid_std = kernel_inception_distance(fake, real, cfg.kid_subsets, cfg.kid_subset_size, seed)
    prdc = precision_recall_density_coverage(real, fake, cfg.nearest_k, reference["radii"].to(device))
    return {"fd": fd, "kid_mean": kid_mean, "kid_std": kid_std, **is_scores, **prdc}


def _reference_path(out: Path, tag: str, num_real: int, cfg: EvalConfig) -> Path:
    name = f"{tag}-n{num_real}-k{cfg.nearest_k}-kid{cfg.kid_subsets}x{cfg.kid_subset_size}-v{REFERENCE_VERSION}.pt"
    return CacheDir.under(out).eval_reference(name)


def space_reference(space: Space, store: PreparedStore, out: Path, cfg: EvalConfig,
                    device: torch.device | None = None) -> dict[str, Any]:
    """The real data as a space sees it, computed once and cached (see ``_reference_path``).

    Holds ``features`` (N, D) float32 and ``mu``, ``sigma``, ``radii`` (k-NN radii) float64 of the
    reference set; ``holdout_nearest`` (float64, each held-out image's distance to its nearest
    reference image: the memorisation baseline of the domain space); ``floor`` (the held-out set's
    scores, ``space_metrics`` names); ``real_is`` (the reference set's IS; NaN without classes); ``num_real``,
    ``num_holdout``.
    """
    device = device or torch.device("cpu")
    ref_idx, held_idx = real_split(len(store.images), cfg.num_real or cfg.num_samples)
    path = _reference_path(out, space.tag, len(ref_idx), cfg)
    with computing(path, "evaluation"):  # runs evaluating the same data at once compute it once
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        return _space_reference(space, store, ref_idx, held_idx, path, cfg, device)


def _space_reference(space: Space, store: PreparedStore, ref_idx: np.ndarray, held_idx: np.ndarray, path: Path,
                     cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = float64_device(device)  # for the pairwise work; the space's network stays where it is
    features, aux = _embed_store(space, store.images, ref_idx, cfg.batch_size)
    held_features, held_aux = _embed_store(space, store.images, held_idx, cfg.batch_size)
    mu, sigma = feature_statistics(features)
    reference = {"features": features, "mu": mu, "sigma": sigma,
                 "radii": knn_radii(features.to(device, torch.float64), cfg.nearest_k).cpu(),
                 "num_real": len(ref_idx), "num_holdout": len(held_idx), "space": space.name}
    reference["real_is"] = (classifier_inception_score(aux)[0] if space.kind == "domain"
                            else inception_score_from_logits(aux, seed=SPLIT_SEED)[0] if space.kind == "inception"
                            else float("nan"))
    reference["holdout_nearest"] = nearest_training(held_features.to(device, torch.float64),
                                                    features.to(device, torch.float64))[0].cpu()
    reference["floor"] = space_scores(space.kind, held_features, held_aux, reference, cfg, SPLIT_SEED, device)
    atomic_torch_save(reference, path)
    log.info("evaluation: %s reference of %d real images, floor (%d held-out images) FD %.4g, precision %.3f "
             "(%.1f s)", space.name, len(ref_idx), len(held_idx), reference["floor"]["fd"],
             reference["floor"]["precision"], time.perf_counter() - t0)
    return reference


def pixel_reference(store: PreparedStore, out: Path, cfg: EvalConfig,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """The memorisation baseline in pixel space: each held-out image's distance to its nearest reference
    image (float64, searched on ``device``), cached like the feature-space references."""
    ref_idx, held_idx = real_split(len(store.images), cfg.num_real or cfg.num_samples)
    path = _reference_path(out, f"{store.manifest['key']}-pixels", len(ref_idx), cfg)
    with computing(path, "evaluation"):
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        reference = {"holdout_nearest": nearest_training(pixel_vectors(torch.from_numpy(store.images[held_idx])),
                                                         pixel_vectors(torch.from_numpy(store.images[ref_idx])),
                                                         device)[0],
                     "num_real": len(ref_idx), "num_holdout": len(held_idx), "space": "pixels"}
        atomic_torch_save(reference, path)
    return reference


def training_progress(what: str) -> Callable[[dict[str, Any]], None]:
    """An ``on_log`` callback for training ``what`` (the classifier, the encoder: minutes at 128 px on a CPU) that
    logs its step, loss and the time left at most every ``PROGRESS_EVERY_S`` seconds."""
    started = last_line = time.perf_counter()

    def progress(info: dict[str, Any]) -> None:
        nonlocal last_line
        now = time.perf_counter()
        if now - last_line < PROGRESS_EVERY_S or info["step"] >= info["num_steps"]:
            return
        last_line = now
        log.info("evaluation: %s step %d/%d  loss %.3f  (%.0f s, about %.0f s left)", what, info["step"],
                 info["num_steps"], info["loss"], now - started,
                 (now - started) / info["step"] * (info["num_steps"] - info["step"]))

    return progress


def domain_reference(
    store: PreparedStore, out: Path, cfg: EvalConfig, seed: int, device: torch.device
) -> tuple[DomainClassifier, dict[str, Any]]:
    """The dataset's classifier and the real data's reference in its feature space, made and cached once.

    The classifier is cached under ``<out>/_cache/classifiers/<store key>-v1-s<steps>-seed<seed>.pt``;
    the reference (see :func:`space_reference`) under ``_cache/eval-reference/``, with
    ``holdout_accuracy`` (the classifier's accuracy on images it did not train on) added.
    """
    if store.labels is None or store.num_classes < 2:
        raise DataError(f"evaluation needs a labelled dataset with at least 2 classes; {store.path} has none")
    name = f"{store.manifest['key']}-v{CLASSIFIER_VERSION}-s{cfg.classifier_steps}-seed{seed}"
    base = CacheDir.under(out).classifier(name)
    model_path = base.with_suffix(".pt")
    with computing(model_path, "evaluation"):
        if model_path.is_file():
            model, meta = load_classifier(model_path, device)
            log.info("evaluation: reusing domain classifier %s (holdout accuracy %.4f)",
                     model_path.name, meta["holdout_accuracy"])
        else:
            log.info("evaluation: training the domain classifier (%d steps) on %d real images, once per dataset "
                     "(runs on the same data reuse it)", cfg.classifier_steps, len(store.images))
            model, meta = train_classifier(
                torch.from_numpy(np.array(store.images)), torch.from_numpy(store.labels), store.num_classes,
                num_steps=cfg.classifier_steps, seed=seed, device=device, on_log=training_progress("domain classifier"))
            save_classifier(model, {**meta, "store_key": store.manifest["key"]}, model_path)
            log.info("evaluation: classifier holdout accuracy %.4f (%.0f s)", meta["holdout_accuracy"],
                     meta["seconds"])
    space = domain_space(model, cfg.batch_size, model_path.stem)
    reference = space_reference(space, store, out, cfg, device)
    return model, {**reference, "holdout_accuracy": meta["holdout_accuracy"], "tag": model_path.stem}


def domain_space(classifier: DomainClassifier, batch_size: int, tag: str) -> Space:
    return Space("domain", FEATURE_SPACE, tag, lambda images: classify(classifier, images, batch_size=batch_size))


def ssl_reference(store: PreparedStore, out: Path, cfg: EvalConfig, device: torch.device
                  ) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """The dataset's self-supervised encoder and the real data's reference in its space, made and cached once.

    The encoder is trained without labels (``ganlib.evaluation.contrastive``, seed ``SSL_SEED``) and
    cached under ``<out>/_cache/ssl-encoders/<store key>-ssl-v<SSL_VERSION>-s<steps>-seed0.pt``; the
    reference (see :func:`space_reference`) under ``_cache/eval-reference/``, with ``view_match`` (how
    well the encoder tells two views of an image from the others) added.
    """
    name = f"{store.manifest['key']}-ssl-v{SSL_VERSION}-s{cfg.ssl_steps}-seed{SSL_SEED}.pt"
    model_path = CacheDir.under(out).ssl_encoder(name)
    with computing(model_path, "evaluation"):
        if model_path.is_file():
            model, meta = load_encoder(model_path, device)
            log.info("evaluation: reusing self-supervised encoder %s (view match %.3f)", model_path.name,
                     meta["view_match"])
        else:
            model, meta = _train_ssl_encoder(store, model_path, cfg, device)
    space = ssl_space(model, cfg.batch_size, model_path.stem)
    reference = space_reference(space, store, out, cfg, device)
    return model, {**reference, "view_match": meta["view_match"], "tag": model_path.stem}


def _train_ssl_encoder(store: PreparedStore, model_path: Path, cfg: EvalConfig, device: torch.device
                       ) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    log.info("evaluation: training the self-supervised encoder (%d steps, at most 20 passes) on %d real "
             "images, once per dataset", cfg.ssl_steps, len(store.images))

    model, meta = train_encoder(torch.from_numpy(np.array(store.images)), num_steps=cfg.ssl_steps,
                                seed=SSL_SEED, device=device, on_log=training_progress("self-supervised encoder"))
    save_encoder(model, {**meta, "store_key": store.manifest["key"]}, model_path)
    log.info("evaluation: self-supervised encoder view match %.3f (%.0f s)", meta["view_match"], meta["seconds"])
    return model, meta


def ssl_space(encoder: ContrastiveEncoder, batch_size: int, tag: str) -> Space:
    def embed(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = ssl_embed(encoder, images, batch_size=batch_size)
        return features, features.new_empty(len(features), 0)

    return Space("ssl", SSL_SPACE, tag, embed)


def inception_space(net: InceptionNet, store_key: str) -> Space:
    return Space("inception", INCEPTION_SPACE, f"{store_key}-inception-{net.weights_sha256[:12]}",
                 lambda images: inception_features(net.model, images, progress=False))


def dinov2_space(net: Dinov2Net, store_key: str) -> Space:
    def embed(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = dinov2_features(net.model, images, progress=False)
        return features, features.new_empty(len(features), 0)

    return Space("dinov2", f"{DINOV2_SPACE}-{net.variant}", f"{store_key}-dinov2-{net.weights_sha256[:12]}", embed)


# --- scoring ----------------------------------------------------------------------------------------

def domain_extras(probs: torch.Tensor, num_classes: int, asked: torch.Tensor | None) -> dict[str, Any]:
    """Class histogram of the samples (``classes_present``, ``rarest_class_fraction``, ``class_<k>``)
    and, for a conditional generator (``asked``: the class each image was generated for),
    ``class_accuracy``, the fraction the classifier assigns to that class (NaN otherwise)."""
    predicted = probs.argmax(dim=1)
    counts = class_histogram(predicted, num_classes)
    fractions = (counts.double() / counts.sum()).tolist()
    return {
        "class_accuracy": float((predicted == asked).double().mean()) if asked is not None else float("nan"),
        "classes_present": int((counts > 0).sum()),
        "rarest_class_fraction": float(min(fractions)),
        **{f"class_{c}": float(f) for c, f in enumerate(fractions)},
    }


def score_images(
    images: torch.Tensor, classifier: DomainClassifier, reference: dict[str, Any], num_classes: int,
    batch_size: int = 500, asked: torch.Tensor | None = None, cfg: EvalConfig | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Domain-space scores of images (N, C, H, W) float in [-1, 1] against the real reference; plain floats.

    ``fd``, ``kid_mean``, ``kid_std``, ``is_mean``, ``is_std``, ``precision``, ``recall``,
    ``density``, ``coverage``, and :func:`domain_extras`. ``cfg``: the KID and k-NN settings
    (default ``EvalConfig()``); ``seed``: KID's subset draws.
    """
    features, probs = classify(classifier, images, batch_size=batch_size)
    scores = space_scores("domain", features, probs, reference, cfg or EvalConfig(), seed)
    return {**scores, **domain_extras(probs, num_classes, asked)}


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number (``classes_present``: the minimum), plus ``<metric>_seed_std``
    (sample standard deviation; NaN with one seed) of ``SEED_STD_METRICS``."""
    out = dict(per_seed[0])
    for key, first in per_seed[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            continue
        values = [float(r[key]) for r in per_seed]
        out[key] = int(min(values)) if key == "classes_present" else float(np.mean(values))
    for key in SEED_STD_METRICS:
        if key in out:
            values = [float(r[key]) for r in per_seed]
            out[f"{key}_seed_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return out


@dataclass
class _Context:
    """Everything scoring a checkpoint needs that does not change between checkpoints."""

    cfg: RunConfig
    store: PreparedStore
    spaces: list[tuple[Space, dict[str, Any]]]
    memorisation_space: str  # "pixels", "domain", "ssl", or "none (...)" when not computed (a note may follow)
    memorisation_kind: str  # the space whose vectors are compared: "pixels", "domain" or "ssl"
    memorisation_training: torch.Tensor | None  # reference-set vectors in the memorisation space
    memorisation_baseline: torch.Tensor | None  # held-out images' nearest distances
    reference_images: torch.Tensor  # uint8 reference images, for the closest-pairs picture
    eval_dir: Path
    fitted: dict[str, int] = field(default_factory=dict)  # the batch that fits the GPU, once one did not


def _score_generator(ctx: _Context, path: Path, step: int, use_ema: bool, device: torch.device
                     ) -> dict[str, Any] | None:
    """The aggregated scores of one checkpoint's generator over the seeds; None when ``use_ema`` asks for
    an EMA the checkpoint does not keep (its raw row covers it)."""
    ev, store = ctx.cfg.eval, ctx.store
    generator, meta = load_generator(path, device, use_ema=use_ema)
    if use_ema and meta["weights"] != "ema":
        return None
    noise_dim = meta["config"]["model"]["noise_dim"]
    # A conditional generator is asked for every class in turn; it is scored on how often the
    # classifier agrees with the class asked for.
    asked = torch.arange(ev.num_samples) % store.num_classes if meta["config"]["model"].get("conditional") else None
    base_seed = ctx.cfg.seed + EVAL_NOISE_OFFSET
    per_seed = []
    for i in range(ev.num_seeds):
        seed = base_seed + i * SEED_STRIDE
        embedded, samples = embed_samples([space for space, _ in ctx.spaces], generator,
                                          fixed_noise(ev.num_samples, noise_dim, seed), asked, ev.batch_size,
                                          f"step {step} {meta['weights']} samples", ctx.fitted)
        scores: dict[str, Any] = {}
        for space, reference in ctx.spaces:
            features, aux = embedded[space.kind]
            scores.update({column(space.kind, k): v
                           for k, v in space_scores(space.kind, features, aux, reference, ev, seed, device).items()})
            if space.kind == "domain":
                scores.update(domain_extras(aux, store.num_classes, asked))
        if ctx.memorisation_training is not None:
            vectors = (pixel_vectors(samples) if ctx.memorisation_kind == "pixels"
                       else embedded[ctx.memorisation_kind][0].double())
            distances, index = nearest_training(vectors, ctx.memorisation_training, device)
            scores.update(memorisation_scores(distances, ctx.memorisation_baseline))
            if i == 0:
                picture = ctx.eval_dir / f"memorisation-step{step:06d}-{meta['weights']}.png"
                save_closest_pairs(samples, ctx.reference_images, distances, index, picture,
                                   f"step {step}, {meta['weights']}: 16 samples closest to a training image "
                                   f"({ctx.memorisation_space}), each beside it")
                scores["memorisation_png"] = str(picture)
        per_seed.append(scores)
    return {**_aggregate(per_seed), "generator": meta["weights"], "eval_seed": base_seed}


def _nan_columns(has_domain: bool, num_classes: int) -> dict[str, Any]:
    """The metric columns every row has, NaN until computed (so tables keep one schema)."""
    nan = float("nan")
    row: dict[str, Any] = {column(kind, m): nan for kind in SPACE_KINDS for m in space_metrics(kind)}
    row.update({"class_accuracy": nan, "classes_present": 0, "rarest_class_fraction": nan,
                "memorisation_fraction": nan, "memorisation_median_distance": nan,
                "memorisation_real_median_distance": nan, "memorisation_png": ""})
    if has_domain:
        row.update({f"class_{c}": nan for c in range(num_classes)})
    return row


def _settings_key(ctx: _Context, num_real: int) -> str:
    """Hash of every setting that changes the numbers of a row (not those that only choose the best)."""
    ev = ctx.cfg.eval
    settings = {
        "version": EVAL_VERSION, "store": ctx.store.manifest.get("key"), "num_samples": ev.num_samples,
        "num_real": num_real, "num_seeds": ev.num_seeds, "seed": ctx.cfg.seed, "batch_size": ev.batch_size,
        "nearest_k": ev.nearest_k, "kid": [ev.kid_subsets, ev.kid_subset_size],
        "memorisation": ctx.memorisation_space, "spaces": sorted(space.tag for space, _ in ctx.spaces),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_run(cfg: RunConfig, store_dir: Path, rescore: bool = False) -> pd.DataFrame:
    """Score every checkpoint of the run; write and return ``metrics/eval.parquet``.

    One row per checkpoint and generator (``raw``, and ``ema`` when the checkpoint keeps one; only
    the selected one with ``eval.generators='selected'``), sorted by step with the selected
    generator last within a step. Columns: see the module docstring, plus ``num_samples``,
    ``num_seeds``, ``num_real``, ``feature_space`` (of the unprefixed metrics; ``none`` for
    unlabelled data), ``feature_spaces``, ``inception_status``, ``dinov2_status``, ``memorisation_space``, the floors,
    ``best`` and the selection (:func:`select_best`).

    Rows already scored with the same settings (same checkpoint bytes, generator and
    ``settings_key``) are reused unless ``rescore``, so a retry or a re-run is cheap.
    """
    cfg = cfg.resolved(image_size=prepared_size(Path(store_dir)))  # 'auto': the size of the images given
    ev = cfg.eval
    paths = RunDir(cfg.run_dir)
    checkpoints = ckpt.list_checkpoints(paths.checkpoints)
    if not checkpoints:
        raise DataError(f"run {cfg.run_id!r} has no checkpoints in {paths.checkpoints}; train it first")
    device = resolve_device(cfg.device)
    store = load_store(store_dir)
    if changed := check_same_data(paths.read_manifest(), store, cfg.run_id, "scoring"):
        log.warning("%s", changed)
    labelled = store.labels is not None and store.num_classes >= 2
    ref_idx, _ = real_split(len(store.images), ev.num_real or ev.num_samples)

    spaces: list[tuple[Space, dict[str, Any]]] = []
    domain_ref: dict[str, Any] = {}
    note = ""
    too_few = len(ref_idx) < max(MIN_REFERENCE, ev.nearest_k + 2)
    if too_few:
        note = (f"not scored: {len(store.images)} real images, too few to split into a reference and a held-out "
                f"set of at least {max(MIN_REFERENCE, ev.nearest_k + 2)} each")
    elif labelled:
        classifier, domain_ref = domain_reference(store, cfg.out, ev, cfg.seed, device)
        spaces.append((domain_space(classifier, ev.batch_size, domain_ref["tag"]), domain_ref))
    else:  # no classes to train the domain classifier on
        why = "unlabelled dataset" if store.labels is None else f"{store.num_classes} class"
        note = (f"{why}, so there is no domain classifier: no fd, kid, is, precision or recall in its space; "
                + ("read the self-supervised space's ssl_* columns" if ev.ssl_space
                   else "eval.ssl_space is off, so nothing scores the samples"))
    ssl_ref: dict[str, Any] = {}
    if ev.ssl_space and not too_few:
        encoder, ssl_ref = ssl_reference(store, cfg.out, ev, device)
        spaces.append((ssl_space(encoder, ev.batch_size, ssl_ref["tag"]), ssl_ref))
    inception = load_inception(ev, device) if not too_few else InceptionNet(None, "skipped: too few real images")
    if inception.model is not None:
        space = inception_space(inception, store.manifest["key"])
        spaces.append((space, space_reference(space, store, cfg.out, ev, device)))
    dinov2 = load_dinov2(ev, device) if not too_few else Dinov2Net(None, "skipped: too few real images")
    if dinov2.model is not None:
        space = dinov2_space(dinov2, store.manifest["key"])
        spaces.append((space, space_reference(space, store, cfg.out, ev, device)))

    reference_images = torch.from_numpy(store.images[ref_idx])
    mem_training, mem_baseline, mem_space, mem_kind = None, None, ev.memorisation, ev.memorisation
    if ev.memorisation == "domain" and not labelled and ssl_ref:  # the feature space unlabelled data has
        mem_space, mem_kind = "ssl (no domain classifier)", "ssl"
    if too_few:
        mem_space = "none (too few real images)"
    elif mem_kind == "pixels":
        mem_training, mem_baseline = pixel_vectors(reference_images), pixel_reference(store, cfg.out, ev, device)[
            "holdout_nearest"]
    elif mem_kind == "domain" and labelled:
        mem_training, mem_baseline = domain_ref["features"].double(), domain_ref["holdout_nearest"]
    elif mem_kind == "ssl" and ssl_ref:
        mem_training, mem_baseline = ssl_ref["features"].double(), ssl_ref["holdout_nearest"]
    else:
        mem_space = "none (eval.memorisation is 'off')" if ev.memorisation == "off" else "none (no domain classifier)"
    ctx = _Context(cfg, store, spaces, mem_space, mem_kind, mem_training, mem_baseline, reference_images,
                   paths.eval)
    settings_key = _settings_key(ctx, len(ref_idx))

    previous: dict[tuple, dict[str, Any]] = {}
    table = None if rescore else paths.read_table_or_set_aside(paths.eval_metrics, "every checkpoint is scored again")
    if table is not None:
        for row in table.to_dict("records"):
            previous[(row.get("checkpoint_sha256"), row.get("generator"), row.get("settings_key"))] = row

    selected = "ema" if ev.use_ema else "raw"
    wanted = [False, True] if ev.generators == "both" else [ev.use_ema]
    constant = {"num_samples": ev.num_samples, "num_seeds": ev.num_seeds, "num_real": len(ref_idx),
                "feature_space": FEATURE_SPACE if labelled else "none",
                "feature_spaces": ",".join(space.name for space, _ in spaces) or "none",
                "inception_status": inception.status, "dinov2_status": dinov2.status, "memorisation_space": mem_space,
                "settings_key": settings_key}
    rows: list[dict[str, Any]] = []
    for step, path in checkpoints:
        sidecar = path.with_name(path.name + ".sha256")
        digest = sidecar.read_text().strip() if sidecar.is_file() else ""
        for use_ema in wanted:
            generator = "ema" if use_ema else "raw"
            if digest and (digest, generator, settings_key) in previous:
                rows.append({**previous[(digest, generator, settings_key)], **constant})
                continue
            t0 = time.perf_counter()
            scores = _score_generator(ctx, path, step, use_ema, device)
            if scores is None:  # no EMA in this checkpoint: its raw row stands for it
                if ev.generators == "both":
                    continue
                scores = _score_generator(ctx, path, step, False, device)
            row = {"step": step, "checkpoint": path.name, **_nan_columns(labelled, store.num_classes), **scores,
                   **constant, "use_ema": scores["generator"] == "ema", "checkpoint_sha256": digest,
                   "seconds": round(time.perf_counter() - t0, 3)}
            log.info("evaluation: %s", _score_line(row, [space.kind for space, _ in spaces], store.num_classes))
            rows.append(row)
            # Saved after every row, so an evaluation killed part-way keeps what it scored.
            _write_table(rows, spaces, domain_ref, note, ev, selected, paths)
    table = _write_table(rows, spaces, domain_ref, note, ev, selected, paths)
    if table["select_note"].iloc[0]:  # unlabelled data chose by ssl_fd as documented: no warning for that
        expected = not labelled and ev.select_metric == "fd" and table["select_metric"].iloc[0] == "ssl_fd"
        (log.info if expected else log.warning)("evaluation: %s", table["select_note"].iloc[0])
    return table


def _score_line(row: dict[str, Any], kinds: list[str], num_classes: int) -> str:
    """One checkpoint's scores for the log, in the spaces that scored it (unlabelled data has no domain space:
    its line was "FD nan KID nan IS nan P nan R nan ... classes 0/0" before the self-supervised scores)."""
    parts = [f"step {row['step']} {row['generator']} "]
    if "domain" in kinds:
        parts.append(f"FD {row['fd']:.3f}  KID {row['kid_mean']:.4f}  IS {row['is_mean']:.3f}  "
                     f"P {row['precision']:.3f}  R {row['recall']:.3f}  |")
    if "ssl" in kinds:
        parts.append(f"self-supervised FD {row['ssl_fd']:.3f}  P {row['ssl_precision']:.3f}  "
                     f"R {row['ssl_recall']:.3f}  |")
    for kind, name in (("inception", "Inception FID"), ("dinov2", "DINOv2 FD")):
        if kind in kinds:
            parts.append(f"{name} {row[column(kind, 'fd')]:.3f}  |")
    if not kinds:
        parts.append("not scored (no feature space)  |")
    parts.append(f"memorised {row['memorisation_fraction']:.2f}")
    if "domain" in kinds:
        parts.append(f" classes {row['classes_present']}/{num_classes}")
    return " ".join(parts) + f"  ({row['seconds']:.1f} s)"


def _write_table(rows: list[dict[str, Any]], spaces: list[tuple[Space, dict[str, Any]]], domain_ref: dict[str, Any],
                 note: str, ev: EvalConfig, selected: str, paths: RunDir) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    nan = float("nan")
    table["real_is"] = float(domain_ref.get("real_is", nan))
    table["classifier_holdout_accuracy"] = float(domain_ref.get("holdout_accuracy", nan))
    ssl_ref = next((r for s, r in spaces if s.kind == "ssl"), {})
    table["ssl_view_match"] = float(ssl_ref.get("view_match", nan))
    for kind in SPACE_KINDS:
        reference = next((r for s, r in spaces if s.kind == kind), None)
        for metric in (m for m in _MAIN_METRICS if m in space_metrics(kind)):
            table[f"{column(kind, metric)}_floor"] = nan if reference is None else float(reference["floor"][metric])
    table["floor_num_samples"] = int(spaces[0][1]["num_holdout"]) if spaces else 0
    if note:
        table["note"] = note
    table = select_best(table, ev.select_metric, ev.select_direction, selected)
    with atomic_path(paths.eval_metrics) as tmp:
        table.to_parquet(tmp, index=False)
    return table


# --- the best checkpoint ----------------------------------------------------------------------------

def select_best(table: pd.DataFrame, metric: str = "fd", direction: str = "auto",
                generator: str = "ema") -> pd.DataFrame:
    """Mark the best row (``best``) by ``metric`` among the rows of ``generator`` (all rows when the run
    has none of that generator); record the choice in ``select_metric``, ``select_direction``,
    ``select_generator`` and ``select_note``. Returns the table sorted by step, ``generator``'s row
    last within a step (so ``table.iloc[-1]`` is the newest checkpoint's selected row).

    ``direction``: 'min', 'max' or 'auto' (``SELECT_DIRECTIONS``). When the metric has no value
    (Inception skipped, ``class_accuracy`` of an unconditional run) the choice falls back to ``fd``,
    when that has none (unlabelled data: no domain classifier) to ``ssl_fd`` (the self-supervised
    space), and when that has none either to the newest checkpoint; ``select_note`` says so.
    """
    table = table.copy()
    if "generator" not in table:
        table["generator"] = generator
    if not (table["generator"] == generator).any():
        generator = str(table["generator"].iloc[-1])
    table = table.assign(_last=table["generator"] == generator).sort_values(["step", "_last"], kind="stable")
    table = table.drop(columns="_last").reset_index(drop=True)
    candidates = table[table["generator"] == generator]
    if direction == "auto":
        direction = SELECT_DIRECTIONS.get(metric, "min")
    note = ""
    chosen_metric = metric
    def has_values(name: str) -> bool:
        return name in table and bool(candidates[name].notna().any())

    if not has_values(metric):
        fallback = next((m for m in ("fd", "ssl_fd") if m != metric and has_values(m)), "")
        if fallback == "fd":
            note = f"{metric} has no values in this table; chose by fd (lower is better) instead"
        elif (fallback and not metric.startswith(("ssl_", "inception_", "dinov2_")) and "feature_space" in table
              and bool((table["feature_space"] == "none").all())):  # a metric of the classifier unlabelled data lacks
            note = (f"unlabelled data has no domain classifier, so no {metric}; chose by ssl_fd, the FD in the "
                    "self-supervised space (lower is better), instead")
        elif fallback:
            note = (f"{metric} has no values in this table (no domain classifier: unlabelled data?); chose by "
                    "ssl_fd, the FD in the self-supervised space (lower is better), instead")
        else:
            note = f"{metric} has no values in this table; the newest checkpoint is marked best"
        chosen_metric, direction = fallback, "min"
    if chosen_metric:
        values = candidates[chosen_metric]
        best_index = values.idxmin() if direction == "min" else values.idxmax()
    else:
        best_index = candidates.index[-1]
    table["best"] = table.index == best_index
    table["select_metric"] = chosen_metric or "newest"
    table["select_direction"] = direction if chosen_metric else "newest"
    table["select_generator"] = generator
    table["select_note"] = note
    return table


def best_checkpoint(table: pd.DataFrame, run_dir: Path) -> Path:
    """Path of the checkpoint marked best in an evaluation table."""
    name = table.loc[table["best"], "checkpoint"].iloc[-1]
    return RunDir(Path(run_dir)).checkpoints / name


def best_generator(table: pd.DataFrame) -> str:
    """'ema' or 'raw': the weights of the best row (what the gallery should render)."""
    if "generator" not in table or not table["best"].any():
        return "ema"
    return str(table.loc[table["best"], "generator"].iloc[-1])

