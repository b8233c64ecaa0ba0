"""Sample-quality metrics computed from features: pure tensor maths with no model state.

The caller embeds real and generated images (``ganlib.evaluation.classifier.classify`` for the domain
classifier, ``ganlib.evaluation.inception`` for Inception-v3) and passes the features or class probabilities
here. All statistics are float64: the Fréchet distance subtracts large, nearly equal trace terms,
and float32 round-off there is of the same order as the differences we care about.

What the libraries provide is taken from them (imported lazily): the standard FID-from-statistics and
the Inception Score from Inception logits from torch-fidelity. Written here: the Fréchet distance of the
domain space (checked against scipy and torch-fidelity in the tests), KID's unbiased estimator (the
same numbers as torchmetrics', pinned in the tests; importing torchmetrics for it cost every evaluation
about 2 s, most of it scipy.signal), the classifier Inception Score, k-nearest-neighbour precision,
recall, density and coverage, and nearest-neighbour search, all in chunks so 10,000 x 10,000 distances
never sit in memory at once.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "fid_from_statistics",
    "polynomial_mmd2",
    "kernel_inception_distance",
    "classifier_inception_score",
    "inception_score_from_logits",
    "knn_radii",
    "precision_recall_density_coverage",
    "nearest_neighbours",
    "class_histogram",
]

# Elements of one block of a chunked distance matrix (float64: 160 MB).
_BLOCK_ELEMENTS = 20_000_000

# Floor for probabilities inside logarithms, so that exact zeros (confident one-hot predictions)
# give 0 * log(eps) = 0 rather than 0 * -inf = nan.
_LOG_EPS = 1e-12


def _check_float_matrix(name: str, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(value.shape)}")
    if not torch.is_floating_point(value):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a set of feature vectors.

    Args:
        features: float tensor (N, D) of any floating dtype and device, N >= 2.

    Returns:
        ``(mu, sigma)``: mean (D,) and unbiased covariance (D, D) (normalised by N - 1), both
        float64 on the input's device.

    Raises:
        ValueError: if ``features`` is not a 2-D float tensor with at least two rows, or contains
            non-finite values.
    """
    _check_float_matrix("features", features)
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"features must have at least 2 rows to estimate a covariance, got N={n}")
    x = features.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contains NaN or infinite values")
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (n - 1)
    # Exact symmetry matters for the eigendecompositions in frechet_distance.
    sigma = (sigma + sigma.T) / 2
    return mu, sigma


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64)."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    # Covariances estimated from few samples are singular; round-off can make the zero
    # eigenvalues slightly negative, which has no real square root.
    roots = eigvals.clamp(min=0).sqrt()
    return (eigvecs * roots) @ eigvecs.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet distance between two Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``, computed in float64.

    ``tr((S1 S2)^{1/2})`` equals ``tr((sqrt(S1) S2 sqrt(S1))^{1/2})``; the inner matrix is
    symmetric PSD, so its eigenvalues are real and non-negative and we avoid the general
    (non-symmetric) matrix square root that ``scipy.linalg.sqrtm`` needs and that can return
    complex values.

    Args:
        mu1, mu2: means, shape (D,), any float dtype.
        sigma1, sigma2: covariances, shape (D, D), symmetric positive semi-definite.

    Returns:
        The distance as a Python float, >= 0.

    Raises:
        ValueError: on mismatched shapes, non-float or non-finite inputs, or a clearly negative
            result (which means the covariances were not PSD).
    """
    for name, mu in (("mu1", mu1), ("mu2", mu2)):
        if not isinstance(mu, torch.Tensor) or mu.dim() != 1 or not torch.is_floating_point(mu):
            shape = tuple(mu.shape) if isinstance(mu, torch.Tensor) else type(mu).__name__
            raise ValueError(f"{name} must be a 1-D float tensor (D,), got {shape}")
    d = mu1.shape[0]
    if mu2.shape[0] != d:
        raise ValueError(f"mu1 and mu2 must have the same length, got {d} and {mu2.shape[0]}")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        _check_float_matrix(name, sigma)
        if tuple(sigma.shape) != (d, d):
            raise ValueError(
                f"{name} must have shape ({d}, {d}) to match the means, got {tuple(sigma.shape)}"
            )

    device = mu1.device
    m1, m2 = mu1.to(device, torch.float64), mu2.to(device, torch.float64)
    s1, s2 = sigma1.to(device, torch.float64), sigma2.to(device, torch.float64)
    for name, t in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2

    sqrt_s1 = _sqrt_psd(s1)
    inner = sqrt_s1 @ s2 @ sqrt_s1
    inner = (inner + inner.T) / 2
    tr_covmean = torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()

    diff = m1 - m2
    value = float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)
    # Identical inputs can land a hair below zero; anything more negative than round-off at the
    # scale of the traces means the inputs were not covariance matrices.
    scale = float(torch.trace(s1) + torch.trace(s2)) + float(diff @ diff)
    if value < 0:
        if value < -1e-6 * max(scale, 1.0):
            raise ValueError(
                f"Fréchet distance came out negative ({value:.3g}); sigma1/sigma2 must be "
                "symmetric positive semi-definite covariance matrices"
            )
        value = 0.0
    return value


def classifier_inception_score(probs: torch.Tensor, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score computed with a domain classifier's class probabilities.

    For each of ``num_splits`` contiguous, near-equal splits of the samples,
    ``IS = exp(mean_x KL(p(y|x) || p(y)))`` where ``p(y)`` is the split's mean prediction.
    The score ranges from 1 (every sample gets the same prediction) to K (confident and
    balanced over K classes).

    Args:
        probs: float tensor (N, K) of class probabilities, rows summing to 1 (within 1e-3),
            entries in [0, 1]. Any float dtype/device; computed in float64.
        num_splits: number of splits, 1 <= num_splits <= N.

    Returns:
        ``(mean, std)`` of the per-split scores as Python floats; std is the population standard
        deviation (0.0 for a single split).

    Raises:
        ValueError: on a malformed ``probs`` or ``num_splits``.
    """
    _check_float_matrix("probs", probs)
    n, k = probs.shape
    if n == 0 or k == 0:
        raise ValueError(f"probs must be non-empty, got shape {tuple(probs.shape)}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= n:
        raise ValueError(f"num_splits must be an integer in [1, N={n}], got {num_splits!r}")
    p = probs.to(torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs entries must lie in [0, 1]; pass softmax probabilities, not logits")
    row_sums = p.sum(dim=1)
    worst = float((row_sums - 1).abs().max())
    if worst > 1e-3:
        raise ValueError(f"probs rows must sum to 1 (softmax output); a row is off by {worst:.3g}")

    log_p = p.clamp(min=_LOG_EPS).log()
    scores = []
    # tensor_split gives near-equal contiguous chunks even when N is not divisible.
    for chunk, log_chunk in zip(p.tensor_split(num_splits), log_p.tensor_split(num_splits), strict=True):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = (chunk * (log_chunk - marginal.clamp(min=_LOG_EPS).log())).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return mean, std


def class_histogram(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count how many samples were assigned to each class.

    Args:
        predictions: integer tensor (N,) of class indices in [0, num_classes).
        num_classes: number of classes K >= 1.

    Returns:
        int64 tensor (num_classes,) of counts on the input's device, summing to N.

    Raises:
        ValueError: on a non-integer or non-1-D input, or labels out of range.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(predictions, torch.Tensor):
        raise ValueError(f"predictions must be a torch.Tensor, got {type(predictions).__name__}")
    if predictions.dim() != 1:
        raise ValueError(f"predictions must be 1-D (N,), got shape {tuple(predictions.shape)}")
    if (
        torch.is_floating_point(predictions)
        or torch.is_complex(predictions)
        or predictions.dtype == torch.bool
    ):
        raise ValueError(
            f"predictions must be an integer tensor of class indices, got dtype {predictions.dtype}"
        )
    labels = predictions.to(torch.int64)
    if labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"predictions must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
                f"got values in [{lo}, {hi}]"
            )
    return torch.bincount(labels, minlength=num_classes)


# --- library metrics ------------------------------------------------------------------------------

def _library(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # a core dependency; missing only in a broken environment
        raise ImportError(f"{module} is needed for evaluation: pip install {package} ({err})") from None


def fid_from_statistics(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The standard FID of two Gaussians as torch-fidelity computes it (float64; mu (D,), sigma (D, D))."""
    metric_fid = _library("torch_fidelity.metric_fid", "torch-fidelity")
    first = {"mu": mu1.double().cpu().numpy(), "sigma": sigma1.double().cpu().numpy()}
    second = {"mu": mu2.double().cpu().numpy(), "sigma": sigma2.double().cpu().numpy()}
    return float(metric_fid.fid_statistics_to_metric(first, second, verbose=False)[metric_fid.KEY_METRIC_FID])


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased estimate of MMD² between two equal-sized samples (m, D) under the cubic polynomial
    kernel k(a, b) = (a·b / D + 1)³ (Bińkowski et al. 2018, "Demystifying MMD GANs"): the mean of k over
    distinct pairs within x and within y, minus twice its mean over all pairs across. The operations run in
    torchmetrics' order (its ``poly_mmd(x, y)``), so the two give the same floating-point number."""
    m, gamma = x.shape[0], 1.0 / x.shape[1]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T * gamma + 1.0) ** 3

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (k_xx.sum(dim=-1) - torch.diag(k_xx)).sum() + (k_yy.sum(dim=-1) - torch.diag(k_yy)).sum()
    value = within / (m * (m - 1))
    value -= 2 * k_xy.sum(dim=0).sum() / (m**2)
    return value


def kernel_inception_distance(fake: torch.Tensor, real: torch.Tensor, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets.

    Args:
        fake, real: features (M, D) and (N, D), any float dtype; computed in float64.
        num_subsets: subsets drawn (without replacement within a subset), each of
            ``min(subset_size, M, N)`` samples of each set.
        seed: seeds the subset draws (a private generator: the same seed gives the same value).

    Returns:
        ``(mean, std)`` over the subsets (population std, as torchmetrics and torch-fidelity report),
        each subset's value ``polynomial_mmd2(real subset, fake subset)``.
    """
    _check_float_matrix("fake", fake)
    _check_float_matrix("real", real)
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"fake and real must have the same width, got {fake.shape[1]} and {real.shape[1]}")
    size = min(subset_size, len(fake), len(real))
    if size < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 samples and num_subsets >= 1, got {size}, {num_subsets}")
    f, r = fake.to(torch.float64), real.to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        fi = torch.randperm(len(f), generator=gen)[:size].to(f.device)
        ri = torch.randperm(len(r), generator=gen)[:size].to(r.device)
        values.append(float(polynomial_mmd2(r[ri], f[fi])))
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def inception_score_from_logits(logits: torch.Tensor, num_splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """The Inception Score from Inception-v3 logits (N, 1008), as torch-fidelity computes it (float64).

    torch-fidelity shuffles the samples (with ``seed``) before the ``num_splits`` splits.
    """
    metric_isc = _library("torch_fidelity.metric_isc", "torch-fidelity")
    _check_float_matrix("logits", logits)
    out = metric_isc.isc_features_to_metric(logits.cpu(), splits=num_splits, shuffle=True, rng_seed=seed)
    return float(out[metric_isc.KEY_METRIC_ISC_MEAN]), float(out[metric_isc.KEY_METRIC_ISC_STD])


# --- nearest neighbours -----------------------------------------------------------------------------

def _rows_per_block(num_columns: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, num_columns))


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point of the same set.

    Args:
        features: (N, D) float, N > k; distances are computed in the input's dtype (pass float64).

    Returns:
        float64 (N,): the radius of each point's k-NN ball (the manifold estimate of Kynkäänniemi et al. 2019).
    """
    _check_float_matrix("features", features)
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, N-1={n - 1}], got {k!r}")
    radii = []
    for block in features.split(_rows_per_block(n)):
        # k + 1: each point is its own nearest neighbour at distance 0.
        radii.append(torch.cdist(block, features).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii).to(torch.float64)


def precision_recall_density_coverage(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, real_radii: torch.Tensor | None = None
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020).

    - precision: fraction of fake samples inside at least one real k-NN ball (quality);
    - recall: fraction of real samples inside at least one fake k-NN ball (diversity);
    - density: mean number of real balls holding a fake sample, over k (about 1 when the two match;
      above 1 when fakes crowd the dense real regions);
    - coverage: fraction of real samples whose ball holds at least one fake sample.

    Args:
        real, fake: features (N, D) and (M, D), float; distances in the input's dtype (pass float64).
        k: neighbourhood size (3 in both papers).
        real_radii: the real k-NN radii (``knn_radii(real, k)``) when already known (cached references).

    Distances are computed block by block, so memory stays at about ``_BLOCK_ELEMENTS`` values.
    """
    _check_float_matrix("real", real)
    _check_float_matrix("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same width, got {real.shape[1]} and {fake.shape[1]}")
    if real_radii is None:
        real_radii = knn_radii(real, k)
    if real_radii.shape != (real.shape[0],):
        raise ValueError(f"real_radii must have shape ({real.shape[0]},), got {tuple(real_radii.shape)}")
    real_radii = real_radii.to(real.device, real.dtype)
    fake_radii = knn_radii(fake, k).to(fake.device, fake.dtype)
    n = real.shape[0]
    balls_holding = []  # per fake sample: how many real balls hold it
    real_in_fake_manifold = torch.zeros(n, dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((n,), math.inf, dtype=real.dtype, device=real.device)
    rows = _rows_per_block(n)
    for block, block_radii in zip(fake.split(rows), fake_radii.split(rows)):
        dist = torch.cdist(block, real)  # (rows, N)
        balls_holding.append((dist <= real_radii[None, :]).sum(dim=1))
        real_in_fake_manifold |= (dist <= block_radii[:, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, dist.min(dim=0).values)
    holding = torch.cat(balls_holding).to(torch.float64)
    return {
        "precision": float((holding > 0).double().mean()),
        "recall": float(real_in_fake_manifold.double().mean()),
        "density": float(holding.sum() / (k * fake.shape[0])),
        "coverage": float((nearest_fake <= real_radii).double().mean()),
    }


def nearest_neighbours(query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the Euclidean distance to its nearest reference row and that row's index.

    Args:
        query, reference: (M, D) and (N, D) float; computed in their dtype, block by block.

    Returns:
        ``(distances, indices)``: float64 (M,) and int64 (M,).
    """
    _check_float_matrix("query", query)
    _check_float_matrix("reference", reference)
    distances, indices = [], []
    for block in query.split(_rows_per_block(reference.shape[0])):
        best = torch.cdist(block, reference).min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances).to(torch.float64), torch.cat(indices)
