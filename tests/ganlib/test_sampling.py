"""ganlib.sampling: the truncation trick (the rest is covered where it is used: gallery, evaluation, export)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ganlib.sampling import fixed_noise, truncate


def _truncated_normal_std(t: float) -> float:
    """The standard deviation of the standard normal cut to [-t, t] (by formula)."""
    density = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * t * density / math.erf(t / math.sqrt(2)))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_truncation_draws_the_truncated_normal_and_keeps_each_latents_place(t):
    z = fixed_noise(4000, 100, seed=1)
    cut = truncate(z, t)
    assert cut.dtype == z.dtype and cut.shape == z.shape
    assert float(cut.abs().max()) <= t and torch.equal(torch.sign(cut), torch.sign(z))
    assert abs(float(cut.std()) - _truncated_normal_std(t)) < 0.003  # 400,000 draws: sd of the estimate ~0.0005
    # The same quantile of the truncated normal: order kept within each coordinate, image i stays image i.
    order = z[:, 0].argsort()
    assert bool((cut[order, 0].diff() >= 0).all())
    assert torch.equal(truncate(z[:10], t), cut[:10])  # whatever the number of images


def test_a_threshold_far_out_gives_the_latents_back_and_far_latents_stay_finite():
    z = fixed_noise(1000, 100, seed=2)
    assert torch.allclose(truncate(z, 12.0), z, rtol=0, atol=1e-5)
    far = torch.tensor([-30.0, -9.0, -1.0, 0.0, 1.0, 9.0, 30.0])
    assert torch.allclose(truncate(far, 50.0), far, atol=1e-4)  # torch's ndtr(-9) is 0: the tails go through erfc
    assert truncate(torch.tensor([40.0, -40.0]), 50.0).tolist() == [50.0, -50.0]  # past double's tail: the edge
    one = truncate(far, 1.0)
    assert torch.isfinite(one).all() and one[[0, 1]].tolist() == [-1.0, -1.0] and one[3] == 0
    assert truncate(z, None) is z
    assert torch.equal(truncate(z, np.float32(1.5)), truncate(z, 1.5))  # a value read back from an npz


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_a_threshold_that_is_no_cut_off_is_refused(bad):
    with pytest.raises(ValueError, match="truncation: a cut-off above 0"):
        truncate(torch.zeros(2, 3), bad)
