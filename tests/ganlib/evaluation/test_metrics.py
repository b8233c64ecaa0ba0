"""ganlib.evaluation.metrics: Fréchet distance, KID, Inception Scores, k-NN precision/recall/density/coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ganlib.evaluation import metrics
from ganlib.evaluation.metrics import (
    class_histogram,
    classifier_inception_score,
    feature_statistics,
    fid_from_statistics,
    frechet_distance,
    inception_score_from_logits,
    kernel_inception_distance,
    knn_radii,
    nearest_neighbours,
    polynomial_mmd2,
    precision_recall_density_coverage,
)


def _gaussian_features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Correlated Gaussian features (n, d) float32, so covariances are not just diagonal."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=gen) / math.sqrt(d)
    return (torch.randn(n, d, generator=gen) @ mixing + shift).float()


# --- feature_statistics -------------------------------------------------------------------


def test_feature_statistics_matches_numpy() -> None:
    x = _gaussian_features(500, 16, seed=0)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == torch.float64 and sigma.dtype == torch.float64
    assert mu.shape == (16,) and sigma.shape == (16, 16)
    ref = x.double().numpy()
    np.testing.assert_allclose(mu.numpy(), ref.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(ref, rowvar=False, ddof=1), rtol=0, atol=1e-12)
    assert torch.equal(sigma, sigma.T)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (torch.zeros(1, 4), "at least 2 rows"),
        (torch.zeros(4), "2-D"),
        (torch.zeros(4, 3, dtype=torch.int64), "floating-point"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), "NaN"),
    ],
)
def test_feature_statistics_rejects_bad_input(features: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        feature_statistics(features)
    assert "features" in str(info.value)


# --- frechet_distance ---------------------------------------------------------------------


def test_frechet_distance_of_set_with_itself_is_zero() -> None:
    mu, sigma = feature_statistics(_gaussian_features(2000, 64, seed=1))
    value = frechet_distance(mu, sigma, mu, sigma)
    assert isinstance(value, float)
    assert value >= 0
    assert abs(value) < 1e-6


def test_frechet_distance_grows_with_shift() -> None:
    base = _gaussian_features(2000, 32, seed=2)
    stats = feature_statistics(base)
    values = [frechet_distance(*stats, *feature_statistics(base + s)) for s in (0.0, 0.1, 0.5, 1.0)]
    assert values[0] < 1e-6
    assert values == sorted(values)
    assert values[1] > 0


def test_frechet_distance_pure_mean_shift_is_squared_norm() -> None:
    _, sigma = feature_statistics(_gaussian_features(2000, 64, seed=3))
    gen = torch.Generator().manual_seed(4)
    mu1 = torch.randn(64, generator=gen, dtype=torch.float64)
    d = torch.randn(64, generator=gen, dtype=torch.float64)
    value = frechet_distance(mu1, sigma, mu1 + d, sigma)
    assert value == pytest.approx(float(d @ d), rel=1e-9, abs=1e-9)


def test_frechet_distance_diagonal_closed_form() -> None:
    # For diagonal covariances the distance is sum (sqrt(a) - sqrt(b))^2 + ||mu1 - mu2||^2.
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 9.0, 1.0], dtype=torch.float64)
    mu1 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum() + ((mu1 - mu2) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_agrees_with_scipy_sqrtm() -> None:
    mu1, s1 = feature_statistics(_gaussian_features(2000, 64, seed=5))
    mu2, s2 = feature_statistics(_gaussian_features(2000, 64, seed=6, shift=0.3) * 1.5)
    ours = frechet_distance(mu1, s1, mu2, s2)

    # Independent reference: the general matrix square root of the (non-symmetric) product.
    n1, n2 = s1.numpy(), s2.numpy()
    covmean = scipy.linalg.sqrtm(n1 @ n2)
    covmean = np.real(covmean)
    diff = (mu1 - mu2).numpy()
    reference = float(diff @ diff + np.trace(n1) + np.trace(n2) - 2 * np.trace(covmean))
    assert reference > 1
    assert ours == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_is_symmetric() -> None:
    a = feature_statistics(_gaussian_features(1500, 48, seed=7))
    b = feature_statistics(_gaussian_features(1500, 48, seed=8, shift=0.2))
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-9)


def test_frechet_distance_handles_singular_covariances() -> None:
    # Fewer samples than dimensions gives rank-deficient covariances; must stay finite, >= 0.
    a = feature_statistics(_gaussian_features(10, 64, seed=9))
    b = feature_statistics(_gaussian_features(10, 64, seed=10))
    value = frechet_distance(*a, *b)
    assert math.isfinite(value) and value > 0
    assert frechet_distance(*a, *a) < 1e-6


def test_frechet_distance_accepts_float32_inputs() -> None:
    mu, sigma = feature_statistics(_gaussian_features(500, 8, seed=11))
    value64 = frechet_distance(mu, sigma, mu + 1, sigma)
    value32 = frechet_distance(mu.float(), sigma.float(), (mu + 1).float(), sigma.float())
    assert value32 == pytest.approx(value64, rel=1e-5)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    mu, sigma = feature_statistics(_gaussian_features(100, 8, seed=12))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(8, 8\)"):
        frechet_distance(mu, sigma, mu, sigma[:4, :4])
    with pytest.raises(ValueError, match="mu1 must be a 1-D float tensor"):
        frechet_distance(mu[None], sigma, mu, sigma)
    with pytest.raises(ValueError, match="sigma1 contains NaN"):
        frechet_distance(mu, torch.full_like(sigma, float("nan")), mu, sigma)


def test_frechet_distance_rejects_non_psd_covariance() -> None:
    eye = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(zero, -10 * eye, zero, eye)


# --- classifier_inception_score -----------------------------------------------------------


def _reference_inception_score(probs: np.ndarray, num_splits: int) -> tuple[float, float]:
    scores = []
    for part in np.array_split(probs, num_splits):
        py = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(part) - np.log(py)), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_confident_balanced_is_num_classes() -> None:
    k = 10
    labels = torch.arange(1000) % k  # each contiguous split of 100 holds every class equally
    probs = torch.nn.functional.one_hot(labels, k).float()
    mean, std = classifier_inception_score(probs, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0, abs=1e-9)


def test_inception_score_identical_predictions_is_one() -> None:
    row = torch.softmax(torch.randn(7, generator=torch.Generator().manual_seed(0)), dim=0)
    probs = row.expand(500, 7).clone()
    mean, std = classifier_inception_score(probs, num_splits=5)
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)
    # Also when the identical predictions are confident (zeros inside the logs).
    onehot = torch.zeros(200, 4)
    onehot[:, 2] = 1
    assert classifier_inception_score(onehot, num_splits=4)[0] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=1003)  # 1003: splits of unequal size
    mean, std = classifier_inception_score(torch.from_numpy(probs).float(), num_splits=10)
    ref_mean, ref_std = _reference_inception_score(probs, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-5)
    assert std == pytest.approx(ref_std, rel=1e-3, abs=1e-6)
    assert 1 < mean < 10


def test_inception_score_single_split_has_zero_std() -> None:
    probs = torch.softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    mean, std = classifier_inception_score(probs, num_splits=1)
    assert std == 0.0
    assert mean == pytest.approx(_reference_inception_score(probs.double().numpy(), 1)[0], rel=1e-9)


@pytest.mark.parametrize(
    ("probs", "num_splits", "match"),
    [
        (torch.full((10, 2), 0.5), 0, r"num_splits must be an integer in \[1, N=10\], got 0"),
        (torch.full((10, 2), 0.5), 11, "num_splits must be an integer"),
        (torch.full((10, 2), 0.5), 2.0, "num_splits must be an integer"),
        (torch.full((10,), 0.5), 1, "probs must be 2-D"),
        (torch.full((10, 2), 0.7), 1, "rows must sum to 1"),
        (torch.tensor([[1.5, -0.5]]), 1, r"\[0, 1\]"),
        (torch.zeros(0, 3), 1, "non-empty"),
        (torch.ones(4, 1, dtype=torch.int64), 1, "floating-point"),
    ],
)
def test_inception_score_rejects_bad_input(probs: torch.Tensor, num_splits: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classifier_inception_score(probs, num_splits=num_splits)  # type: ignore[arg-type]


# --- class_histogram ----------------------------------------------------------------------


def test_class_histogram_counts() -> None:
    preds = torch.tensor([0, 2, 2, 5, 0, 2], dtype=torch.int32)
    hist = class_histogram(preds, num_classes=7)
    assert hist.dtype == torch.int64
    assert hist.tolist() == [2, 0, 3, 0, 0, 1, 0]


def test_class_histogram_matches_numpy_and_sums_to_n() -> None:
    preds = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    hist = class_histogram(preds, 10)
    assert hist.tolist() == np.bincount(preds.numpy(), minlength=10).tolist()
    assert int(hist.sum()) == 5000


def test_class_histogram_empty() -> None:
    assert class_histogram(torch.zeros(0, dtype=torch.int64), 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("preds", "num_classes", "match"),
    [
        (
            torch.tensor([0, 3]),
            3,
            r"predictions must lie in \[0, 2\] for num_classes=3, got values in \[0, 3\]",
        ),
        (torch.tensor([-1, 0]), 3, r"must lie in \[0, 2\]"),
        (torch.tensor([0.0, 1.0]), 3, "integer tensor"),
        (torch.tensor([[0, 1]]), 3, "1-D"),
        (torch.tensor([0, 1]), 0, "num_classes must be a positive integer, got 0"),
        ([0, 1], 3, "must be a torch.Tensor"),
    ],
)
def test_class_histogram_rejects_bad_input(preds: object, num_classes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_histogram(preds, num_classes)  # type: ignore[arg-type]


# --- the libraries' metrics, cross-checked --------------------------------------------------


def test_frechet_distance_agrees_with_torch_fidelity() -> None:
    mu1, s1 = feature_statistics(_gaussian_features(2000, 64, seed=13))
    mu2, s2 = feature_statistics(_gaussian_features(2000, 64, seed=14, shift=0.2) * 1.2)
    assert fid_from_statistics(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


def _direct_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 with k(a, b) = (a.b / D + 1)^3: off-diagonal means within each set, all pairs across."""
    m, d = len(x), x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_estimator_of_a_direct_computation() -> None:
    fake = _gaussian_features(20, 6, seed=15, shift=0.5).double()
    real = _gaussian_features(20, 6, seed=16).double()
    # One subset holding every sample: the estimate over the whole sets, whatever the draw.
    mean, std = kernel_inception_distance(fake, real, num_subsets=1, subset_size=20)
    assert mean == pytest.approx(_direct_unbiased_mmd2(fake.numpy(), real.numpy()), rel=1e-9)
    assert std == 0.0


@pytest.mark.parametrize("m, d", [(2, 3), (50, 16), (300, 128)])
def test_kid_estimator_gives_torchmetrics_numbers_to_the_last_bit(m: int, d: int) -> None:
    kid = pytest.importorskip("torchmetrics.image.kid")
    x = _gaussian_features(m, d, seed=m, shift=0.3).double()
    y = _gaussian_features(m, d, seed=m + 1).double() * 1.5
    assert polynomial_mmd2(x, y).item() == kid.poly_mmd(x, y).item()
    assert polynomial_mmd2(y, x).item() == kid.poly_mmd(y, x).item()


def test_kid_is_near_zero_for_one_distribution_and_reproducible_by_seed() -> None:
    x = _gaussian_features(2000, 16, seed=17)  # one distribution, two halves
    a, b = x[:1000], x[1000:]
    same, same_std = kernel_inception_distance(a, b, num_subsets=10, subset_size=200, seed=3)
    shifted, _ = kernel_inception_distance(a + 1, b, num_subsets=10, subset_size=200, seed=3)
    assert abs(same) < 2 * same_std + 0.01 and shifted > 1
    assert kernel_inception_distance(a, b, 10, 200, seed=3) == (same, same_std)
    assert kernel_inception_distance(a, b, 10, 200, seed=4) != (same, same_std)
    # Subsets are capped at the smaller set.
    assert math.isfinite(kernel_inception_distance(a[:50], b, num_subsets=2, subset_size=1000)[0])


def test_inception_score_from_logits_matches_the_classifier_score_with_one_split() -> None:
    logits = torch.randn(300, 12, generator=torch.Generator().manual_seed(19), dtype=torch.float64) * 3
    ours = classifier_inception_score(logits.softmax(dim=1), num_splits=1)
    theirs = inception_score_from_logits(logits, num_splits=1)
    assert theirs[0] == pytest.approx(ours[0], rel=1e-9) and theirs[1] == 0.0


# --- k-nearest-neighbour metrics ------------------------------------------------------------


def test_knn_radii_and_nearest_neighbours_match_brute_force() -> None:
    x = _gaussian_features(120, 5, seed=20).double()
    y = _gaussian_features(30, 5, seed=21).double()
    full = torch.cdist(x, x)
    assert torch.allclose(knn_radii(x, 3), full.sort(dim=1).values[:, 3])
    distances, index = nearest_neighbours(y, x)
    assert torch.equal(index, torch.cdist(y, x).argmin(dim=1))
    assert torch.allclose(distances, torch.cdist(y, x).min(dim=1).values)


def _direct_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall, density and coverage from the papers' definitions, with full distance matrices."""
    def radii(x: np.ndarray) -> np.ndarray:
        return np.sort(np.linalg.norm(x[:, None] - x[None], axis=2), axis=1)[:, k]

    r_real, r_fake = radii(real), radii(fake)
    d = np.linalg.norm(fake[:, None] - real[None], axis=2)  # (M, N)
    inside = d <= r_real[None, :]
    return {"precision": inside.any(axis=1).mean(), "recall": (d <= r_fake[:, None]).any(axis=0).mean(),
            "density": inside.sum() / (k * len(fake)), "coverage": (d.min(axis=0) <= r_real).mean()}


def test_precision_recall_density_coverage_match_a_direct_computation_in_any_chunking(monkeypatch) -> None:
    real = _gaussian_features(300, 8, seed=22).double()
    fake = (_gaussian_features(250, 8, seed=23, shift=0.3) * 1.3).double()
    direct = _direct_prdc(real.numpy(), fake.numpy(), 3)
    whole = precision_recall_density_coverage(real, fake, k=3)
    assert whole == pytest.approx(direct, abs=1e-12)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 1000)  # blocks of 3 or 4 rows
    assert precision_recall_density_coverage(real, fake, k=3) == whole
    assert 0 < whole["precision"] < 1 and 0 < whole["recall"] < 1


def test_identical_sets_have_full_precision_recall_and_disjoint_ones_none() -> None:
    x = _gaussian_features(500, 10, seed=24).double()
    same = precision_recall_density_coverage(x, x.clone(), k=3)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = precision_recall_density_coverage(x, x + 1000.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_precision_and_recall_agree_with_torch_fidelity() -> None:
    from torch_fidelity.metric_prc import prc_features_to_metric

    real = _gaussian_features(800, 16, seed=25)
    fake = _gaussian_features(700, 16, seed=26, shift=0.4)
    ours = precision_recall_density_coverage(real.double(), fake.double(), k=3)
    theirs = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10_000, save_cpu_ram=False,
                                    verbose=False)
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=2 / 700)  # float32 ties aside
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=2 / 800)
