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


@pytest.mark.parametrize("supersample", [False, True])
def test_under_bf16_autocast_the_maps_and_grid_stay_fp32(supersample):
    """bf16 runs (a GPU, a CPU with fast bf16) augment inside autocast: in bf16 the sampling positions were up
    to 1/256 of the half-side off, so at p 0 D saw every 64-px image warped (mean error 0.03, max 0.38)."""
    x = _images(n=8, s=64).to(torch.bfloat16)
    for p in (0.0, 0.6):
        plain = augment(x.float(), torch.tensor(p), torch.Generator().manual_seed(1), supersample=supersample)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = augment(x, torch.tensor(p), torch.Generator().manual_seed(1), supersample=supersample)
        assert out.dtype == torch.float32 and torch.allclose(out, plain, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(augment(x, torch.tensor(0.0), torch.Generator().manual_seed(1)), x.float(), atol=1e-5)


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


def test_the_blit_pipeline_only_moves_whole_pixels():
    """'b' (flips, quarter turns, integer shifts with reflection): every output pixel is an input pixel of the
    same image, unblended (distinct pixels of these random images lie about 0.1 or more apart)."""
    x = _images(n=8, c=3, s=8, seed=2)
    out = augment(x, torch.tensor(1.0), torch.Generator().manual_seed(4), pipeline="b")
    assert not torch.allclose(out, x)
    for img_out, img_in in zip(out, x, strict=True):
        pixels_in = img_in.flatten(1).T  # (64, 3): the image's pixels as RGB triples
        nearest = torch.cdist(img_out.flatten(1).T, pixels_in).amin(dim=1)
        assert nearest.max() < 2e-3  # float rounding of the sampling grid; a blended pixel is ~0.1 away


def test_fractional_moves_are_resampled_at_twice_the_resolution_keeping_fine_detail():
    """Shifted by half a pixel, 3-px stripes keep over 85% of their amplitude through the supersampled resampling
    (bilinear interpolation at the image's own resolution halves them), smooth images pass unchanged, and a flat
    image stays exactly flat (the filters' taps sum to 1)."""
    from ganlib.training.ada import _translation, resample

    s = 32
    x = torch.cos(torch.arange(s) * 2 * torch.pi / 3).expand(1, 1, s, s).contiguous()
    half_pixel = _translation(torch.tensor([1.0 / s]), torch.tensor([0.0]))  # 2 / s is one pixel
    inner = (..., slice(8, -8), slice(8, -8))
    amplitude = {sup: resample(x, half_pixel, supersample=sup)[inner].std() / x[inner].std() for sup in (False, True)}
    assert amplitude[True] > 0.85 and amplitude[False] < 0.55
    smooth = torch.cos(torch.arange(s) * 2 * torch.pi / 16).expand(1, 1, s, s).contiguous()
    shifted = resample(smooth, _translation(torch.tensor([2.0 / s]), torch.tensor([0.0])) @ half_pixel
                       @ half_pixel)  # one pixel in three moves: blended, then the same as a whole-pixel shift
    assert (shifted - smooth.roll(-2, dims=-1))[inner].abs().max() < 0.02
    flat = torch.full((2, 3, 16, 16), 0.3)
    mats = torch.linalg.inv(_translation(torch.tensor([0.05, -0.02]), torch.tensor([0.01, 0.07])))
    assert (resample(flat, mats, supersample=True) - 0.3).abs().max() < 1e-6


def test_only_maps_that_move_whole_pixels_skip_the_interpolation():
    from ganlib.training.ada import geometric_matrices, moves_whole_pixels

    blit = geometric_matrices(64, 16, torch.tensor(1.0), torch.device("cpu"), torch.Generator().manual_seed(5),
                              geom=False)
    assert moves_whole_pixels(blit, 16).all()
    geom = geometric_matrices(64, 16, torch.tensor(1.0), torch.device("cpu"), torch.Generator().manual_seed(5),
                              blit=False)
    assert not moves_whole_pixels(geom, 16).any()
    assert moves_whole_pixels(torch.eye(3).expand(2, 3, 3), 16).all()


def test_the_colour_pipeline_keeps_every_pixel_in_place():
    """'c' alone moves no pixel: each output pixel is the same affine colour map of the input pixel there."""
    x = _images(n=8, c=3, s=8, seed=2)
    out = augment(x, torch.tensor(1.0), torch.Generator().manual_seed(4), pipeline="c")
    assert not torch.allclose(out, x)
    for img_out, img_in in zip(out, x, strict=True):
        design = torch.cat([img_in.flatten(1).T, torch.ones(64, 1)], dim=1).double()  # (64, 4)
        target = img_out.flatten(1).T.double()
        fit = torch.linalg.lstsq(design, target).solution
        assert (design @ fit - target).abs().max() < 1e-4


def test_a_pipeline_without_colour_leaves_the_colour_histogram_alone_and_bg_is_bgc_without_colour():
    """'bg' draws the geometric transforms exactly as 'bgc' does (a switched-off group draws at probability 0),
    so it is 'bgc' with the colour step left out."""
    x = _images(n=8, c=3, s=16, seed=2)
    bg = augment(x, torch.tensor(0.7), torch.Generator().manual_seed(4), pipeline="bg")
    from ganlib.training.ada import geometric_matrices, resample
    geometric = resample(x, geometric_matrices(8, 16, torch.tensor(0.7), x.device, torch.Generator().manual_seed(4)))
    assert torch.equal(bg, geometric)
    g_only = augment(x, torch.tensor(1.0), torch.Generator().manual_seed(4), pipeline="g")
    b_only = augment(x, torch.tensor(1.0), torch.Generator().manual_seed(4), pipeline="b")
    assert not torch.allclose(g_only, b_only)


def test_an_unknown_pipeline_letter_is_refused_in_the_config_and_the_function(tiny):
    with pytest.raises(ValueError, match="pipeline 'bx'"):
        augment(_images(), torch.tensor(0.5), None, pipeline="bx")
    from typing import get_args

    from ganlib.config import TrainConfig
    from ganlib.training.ada import PIPELINES
    assert get_args(TrainConfig.model_fields["ada_pipeline"].annotation) == PIPELINES  # the config offers them all
    from ganlib.errors import ConfigError
    with pytest.raises(ConfigError, match="train.ada_pipeline: Input should be 'bgc'"):
        tiny(train__ada_pipeline="bgcx")


def test_a_run_trains_with_the_pipeline_it_names(tiny, monkeypatch):
    """A run with ``ada_pipeline='c'`` never resamples an image (no geometric group), and its p still moves."""
    from ganlib.training import ada as ada_module

    def no_resampling(*args, **kwargs):
        raise AssertionError("the 'c' pipeline resampled an image")

    monkeypatch.setattr(ada_module, "resample", no_resampling)
    cfg = tiny(train__ada="on", train__ada_pipeline="c", train__ada_kimg=0.5, train__ada_interval=2).resolved()
    assert ada_module.make_ada(cfg.train, 4, torch.device("cpu")).pipeline == "c"
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    table = pd.read_parquet(cfg.run_dir / "metrics" / "train.parquet")
    assert table["ada_p"].nunique() > 1
    assert ada_module.make_ada(tiny(train__ada="off").resolved().train, 4, torch.device("cpu")) is None


def test_supersampling_is_off_by_default_and_a_run_that_asks_for_it_gets_it(tiny, monkeypatch):
    """``train.ada_supersample`` reaches the resampling; off, augment is what it always was (the default)."""
    from ganlib.training import ada as ada_module

    x = _images(n=8, c=3, s=16, seed=2)
    mats = ada_module.geometric_matrices(8, 16, torch.tensor(0.7), x.device, torch.Generator().manual_seed(4))
    direct = torch.nn.functional.grid_sample(
        x, torch.nn.functional.affine_grid(mats[:, :2, :], [8, 3, 16, 16], align_corners=False),
        padding_mode="reflection", align_corners=False)
    assert torch.equal(augment(x, torch.tensor(0.7), torch.Generator().manual_seed(4), pipeline="bg"), direct)
    seen = []
    real_resample = ada_module.resample
    monkeypatch.setattr(ada_module, "resample", lambda *a, **k: seen.append(k["supersample"]) or real_resample(*a, **k))
    cfg = tiny(model__name="r3gan", model__ngf=4, model__ndf=4, data__image_size=32, data__channels="rgb",
               train__ada_supersample=True, train__steps=2).resolved()
    assert cfg.train.ada == "on" and ada_module.make_ada(cfg.train, 4, torch.device("cpu")).supersample
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    assert seen and all(seen)
