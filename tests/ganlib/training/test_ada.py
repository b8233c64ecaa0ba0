"""Adaptive discriminator augmentation: the pipeline at p, and the controller that moves p."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ganlib.data.store import prepare_dataset
from ganlib.runs.checkpoint import load_checkpoint
from ganlib.training import train
from ganlib.training.ada import AdaptiveAugment, augment


def _images(n=16, c=3, s=16, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("channels", [1, 3])
def test_at_p_zero_the_pipeline_is_the_identity(channels):
    x = _images(c=channels)
    out = augment(x, torch.tensor(0.0), torch.Generator().manual_seed(1))
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_at_p_one_every_image_changes_differentiably_and_reproducibly(channels):
    x = _images(c=channels).requires_grad_(True)
    out = augment(x, torch.tensor(1.0), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert ((out - x).flatten(1).abs().amax(dim=1) > 1e-3).all()  # every image transformed
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G learns through it
    again = augment(x.detach(), torch.tensor(1.0), torch.Generator().manual_seed(1))
    assert torch.equal(out.detach(), again)  # all randomness from the generator passed in


def test_a_quarter_of_the_images_change_at_p_small():
    """Each transform fires with probability p: at p = 0.05 with ~14 transforms, roughly half the images
    (1 - 0.95^14 = 51%) are touched, and clearly not all or none."""
    x = _images(n=400, s=8)
    out = augment(x, torch.tensor(0.05), torch.Generator().manual_seed(3))
    changed = ((out - x).flatten(1).abs().amax(dim=1) > 1e-4).float().mean().item()
    assert 0.3 < changed < 0.75


def test_p_rises_above_the_target_falls_below_it_and_stays_in_0_1():
    ada = AdaptiveAugment(target=0.6, kimg=1.0, interval=4, batch_size=50, device=torch.device("cpu"))
    step = 50 * 4 / 1000  # images per adjustment / images from 0 to 1
    ada.observe(torch.ones(50))  # r_t = 1 > 0.6: D is sure of the reals (overfitting)
    ada.adjust()
    assert ada.p.item() == pytest.approx(step) and ada.r_t.item() == 1.0
    for _ in range(10):
        ada.observe(torch.ones(50))
        ada.adjust()
    assert ada.p.item() == 1.0
    for _ in range(20):
        ada.observe(-torch.ones(50))  # r_t = -1 < 0.6
        ada.adjust()
    assert ada.p.item() == 0.0
    state = ada.state_dict()
    other = AdaptiveAugment(0.6, 1.0, 4, 50, torch.device("cpu"))
    other.load_state_dict(state)
    assert torch.equal(other.p, ada.p) and torch.equal(other.sums, ada.sums)


def test_a_run_with_ada_logs_p_and_saves_it(tiny):
    cfg = tiny(model__name="r3gan", model__ngf=4, model__ndf=4, data__image_size=32, data__channels="rgb",
               train__ada_kimg=0.5, train__ada_interval=2).resolved()
    assert cfg.train.ada == "on"
    result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    table = pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")
    assert {"r_t", "ada_p"} <= set(table.columns)
    assert table["ada_p"].between(0, 1).all() and table["ada_p"].nunique() > 1  # it moved
    saved = load_checkpoint(result.checkpoints[-1])
    # The table logs the p each step trained with; the checkpoint holds p after the last step's adjustment.
    speed = 32 * 2 / 500
    assert min(abs(saved["ada"]["p"].item() - table["ada_p"].iloc[-1] - d) for d in (-speed, 0, speed)) < 1e-6
