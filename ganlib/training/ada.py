"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data"), written here from the paper.

Everything D sees (real and generated images, in the D and the G update) goes through the same random
pipeline; each transform is applied to each image with probability ``p``:

- geometric, composed into one affine map per image: x-flip, 90-degree rotation, integer translation (up
  to 1/8 of the side), isotropic scaling (log-normal, sigma 0.2 ln 2), arbitrary rotation (probability
  1 - sqrt(1 - p), so the two rotations together happen with p), anisotropic scaling, fractional translation
  (normal, sigma 1/8). The map is applied by one bilinear ``grid_sample`` with reflection padding, which
  low-pass filters every image it moves by a fraction of a pixel (almost all of them once p passes 0.3);
  ``supersample`` (``train.ada_supersample``) resamples those at twice their resolution between Lanczos-3
  filters instead, as the paper does, and moves the others exactly (``python -m bench.ada_spectrum``);
- colour, composed into one 3x3 matrix and offset per image: brightness (normal, sigma 0.2), contrast
  (log-normal, sigma 0.5 ln 2), luma flip, hue rotation about the grey axis, saturation (log-normal,
  sigma ln 2). Grey images take brightness and contrast only.

The first three geometric transforms are the "blit" group (they move whole pixels), the rest "geometric";
``pipeline`` picks groups by letter as StyleGAN2-ADA's ``--augpipe`` does: 'bgc' (all, the default), 'bg'
(no colour), 'b', and so on.

Every op is differentiable, so G learns through it, and its randomness comes from the generator passed in
(the run's saved noise generator), so a resumed run augments exactly as the uninterrupted one.

``p`` follows the overfitting signal r_t = E[sign(D(real))] (for the relativistic loss, whose logits
have no fixed zero: E[sign(D(real) - D(fake))]): every ``interval`` steps, p moves up if r_t is above
``target`` and down if below, by the amount that would take it from 0 to 1 in ``kimg`` thousand images.
p, the running sums and the last r_t are tensors on the device (no host sync) and are saved in
checkpoints.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ganlib.config import TrainConfig

# The transform groups a pipeline may combine (StyleGAN2-ADA's --augpipe letters): b blit, g geometric,
# c colour. 'bgc' is the paper's default; 'bg' leaves colours alone.
PIPELINES = ("bgc", "bg", "bc", "gc", "b", "g", "c")


def _coin(p: torch.Tensor, n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) float: 1 with probability p, else 0."""
    return (torch.rand(n, device=device, generator=generator) < p).float()


def _randn(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, device=device, generator=generator)


def _uniform(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) uniform in [-1, 1)."""
    return torch.rand(n, device=device, generator=generator) * 2 - 1


def _affine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, tx: torch.Tensor,
            ty: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) matrices [[a, b, tx], [c, d, ty], [0, 0, 1]]."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).view(-1, 3, 3)


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(theta)
    return _affine(theta.cos(), -theta.sin(), theta.sin(), theta.cos(), zero, zero)


def _scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, sy, zero, zero)


def _translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _affine(one, zero, zero, one, tx, ty)


def geometric_matrices(n: int, size: int, p: torch.Tensor, device: torch.device,
                       generator: torch.Generator | None, blit: bool = True, geom: bool = True) -> torch.Tensor:
    """(n, 3, 3) maps from output to input positions in grid_sample's [-1, 1] coordinates.

    ``blit`` (flip, 90-degree rotation, integer translation) and ``geom`` (the rest) switch the two groups;
    a group switched off draws its random numbers all the same, at probability 0, so the other group sees
    the same stream as in the full pipeline. The transforms' distributions are symmetric, so the map and its
    inverse are equally likely: drawing the sampling map directly is drawing the augmentation.
    """
    zero = torch.zeros_like(p)

    def coin(group: bool) -> torch.Tensor:
        return _coin(p if group else zero, n, device, generator)

    m = torch.eye(3, device=device).expand(n, 3, 3)
    flip = 1 - 2 * coin(blit) * torch.randint(0, 2, (n,), device=device, generator=generator).float()
    m = m @ _scaling(flip, torch.ones_like(flip))
    quarter = coin(blit) * torch.randint(0, 4, (n,), device=device, generator=generator).float()
    m = m @ _rotation(quarter * (math.pi / 2))
    # Integer translation: whole pixels, up to 1/8 of the side (2 / size is one pixel in [-1, 1]).
    shift = [coin(blit) * torch.round(_uniform(n, device, generator) * 0.125 * size) * (2.0 / size)
             for _ in range(2)]
    m = m @ _translation(*shift)
    iso = torch.exp2(coin(geom) * _randn(n, device, generator) * 0.2)
    m = m @ _scaling(iso, iso)
    p_rot = 1 - torch.sqrt((1 - p).clamp(min=0)) if geom else zero
    m = m @ _rotation(_coin(p_rot, n, device, generator) * _uniform(n, device, generator) * math.pi)
    aniso = torch.exp2(coin(geom) * _randn(n, device, generator) * 0.2)
    m = m @ _scaling(aniso, 1 / aniso)
    m = m @ _rotation(_coin(p_rot, n, device, generator) * _uniform(n, device, generator) * math.pi)
    frac = [coin(geom) * _randn(n, device, generator) * 0.125 * 2 for _ in range(2)]
    return m @ _translation(*frac)


@functools.lru_cache(maxsize=8)
def _grey_axis_cross(device: torch.device) -> torch.Tensor:
    """The cross-product matrix of the grey axis, made once per device: a tensor built from Python numbers
    on a GPU is a blocking host-to-device copy, a sync on every call."""
    return (torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)).to(device)


def colour_transforms(n: int, channels: int, p: torch.Tensor, device: torch.device,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((n, C, C) matrices, (n, C) offsets) of the colour transforms for images in [-1, 1]."""
    def coin() -> torch.Tensor:
        return _coin(p, n, device, generator)

    eye = torch.eye(channels, device=device)
    brightness = coin() * _randn(n, device, generator) * 0.2
    contrast = torch.exp2(coin() * _randn(n, device, generator) * 0.5)
    mat = eye * contrast.view(n, 1, 1)
    off = brightness.view(n, 1).expand(n, channels) * contrast.view(n, 1)
    if channels == 3:
        v = torch.full((3, 1), 1 / math.sqrt(3), device=device)
        vvt = v @ v.T
        flip = coin() * torch.randint(0, 2, (n,), device=device, generator=generator).float()
        m = eye - 2 * vvt * flip.view(n, 1, 1)  # luma flip: mirror the grey component
        theta = (coin() * _uniform(n, device, generator) * math.pi).view(n, 1, 1)
        cross = _grey_axis_cross(device)  # [v]_x
        m = (theta.cos() * eye + theta.sin() * cross + (1 - theta.cos()) * vvt) @ m  # hue: rotate about grey
        sat = torch.exp2(coin() * _randn(n, device, generator)).view(n, 1, 1)
        m = (vvt + (eye - vvt) * sat) @ m
        mat, off = m @ mat, (m @ off.unsqueeze(2)).squeeze(2)
    return mat, off


def _lanczos3(t: torch.Tensor) -> torch.Tensor:
    return torch.sinc(t) * torch.sinc(t / 3) * (t.abs() < 3)


def _half_pixel_filters() -> tuple[torch.Tensor, torch.Tensor]:
    """Lanczos-3 taps of 2x resampling on pixel centres (align_corners=False), each set summing to 1 (float64).

    Upsampling puts output pixels at input positions i - 1/4 and i + 1/4: (2, 7) taps over inputs i-3..i+3,
    one row per phase. Downsampling averages the 2x pixels at offsets +-1/4, +-3/4, ..., +-11/4 from an
    output pixel: (12,) taps over 2x pixels 2i-5..2i+6.
    """
    m = torch.arange(-3, 4, dtype=torch.float64)
    up = torch.stack([_lanczos3(-0.25 - m), _lanczos3(0.25 - m)])
    down = _lanczos3((torch.arange(12, dtype=torch.float64) - 5) / 2 - 0.25)
    return up / up.sum(dim=1, keepdim=True), down / down.sum()


@functools.lru_cache(maxsize=8)
def _resampling_matrices(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (2S, S), down (S, 2S)): the 1-D Lanczos-3 2x upsampling and downsampling of ``size`` pixels, edges
    reflected, as matrices, so an image is resampled by two matrix products (``up @ x @ up.T``), far faster
    on a CPU than convolutions with one channel."""
    up_taps, down_taps = _half_pixel_filters()
    eye = torch.eye(size, dtype=torch.float64).unsqueeze(1)  # (S, 1, S): row i filters the unit impulse at i
    phases = F.conv1d(F.pad(eye, (3, 3), mode="reflect"), up_taps.unsqueeze(1))  # (S, 2 phases, S)
    up = phases.permute(0, 2, 1).reshape(size, 2 * size).T
    eye2 = torch.eye(2 * size, dtype=torch.float64).unsqueeze(1)
    down = F.conv1d(F.pad(eye2, (5, 5), mode="reflect"), down_taps.view(1, 1, 12), stride=2).squeeze(1).T
    return up.to(device, dtype), down.to(device, dtype)


def moves_whole_pixels(mats: torch.Tensor, size: int) -> torch.Tensor:
    """(N,) bool: which maps of ``geometric_matrices`` only flip, turn by quarters and shift by whole pixels
    (a signed permutation and an integer shift), so sampling needs no interpolation."""
    linear, shift = mats[:, :2, :2], mats[:, :2, 2] * (size / 2)
    whole = ((linear - linear.round()).abs() < 1e-4).flatten(1).all(dim=1)
    return whole & ((shift - shift.round()).abs() < 1e-3).all(dim=1) & (linear.round().abs().sum(dim=(1, 2)) == 2)


def resample(x: torch.Tensor, mats: torch.Tensor, mode: str = "bilinear", supersample: bool = False) -> torch.Tensor:
    """Images (N, C, H, W) through the maps ``mats`` (N, 3, 3) of ``geometric_matrices``, with reflection padding,
    interpolated by ``mode`` (grid_sample's 'bilinear', as training does, or 'bicubic').

    By default at the images' own resolution (what training does unless ``train.ada_supersample``), a low-pass
    filter at fractional positions. ``supersample``: images whose map moves whole pixels are moved exactly,
    the others interpolated at twice their resolution between a Lanczos-3 upsampling and downsampling, as the
    paper does: more of the detail at 3-4 px periods is kept, less of the finest (``bench.ada_spectrum``).
    """
    n, c, h, w = x.shape
    direct = F.grid_sample(x, F.affine_grid(mats[:, :2, :], [n, c, h, w], align_corners=False).to(x.dtype),
                           mode=mode, padding_mode="reflection", align_corners=False)
    if not supersample:
        return direct
    up_h, down_h = _resampling_matrices(h, x.device, x.dtype)
    up_w, down_w = _resampling_matrices(w, x.device, x.dtype)
    big = up_h @ x @ up_w.T  # (N, C, 2H, 2W)
    grid = F.affine_grid(mats[:, :2, :], [n, c, 2 * h, 2 * w], align_corners=False).to(x.dtype)
    big = F.grid_sample(big, grid, mode=mode, padding_mode="reflection", align_corners=False)
    smooth = down_h @ big @ down_w.T
    # torch.where, not indexing: no host sync, and each image's gradient flows through the path it took
    return torch.where(moves_whole_pixels(mats, w).view(n, 1, 1, 1), direct, smooth)


def augment(x: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None,
            pipeline: str = "bgc", supersample: bool = False) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1], each transform of the groups in ``pipeline`` (PIPELINES) applied with
    probability ``p`` (a 0-d tensor); ``supersample``: see ``resample``.

    Always in fp32 (or float64), autocast off, and returned so: under bf16 autocast the maps' products and
    ``affine_grid`` ran in bf16, whose 8 bits put sampling positions up to about 1/256 of the half-side off
    (measured 0.125 px at 64, 0.25 at 128), so even at p = 0 every image D saw was warped and blurred
    (``bench.ada_bf16``).
    D's first layer casts to bf16 as before.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"ADA pipeline {pipeline!r}: use one of {', '.join(PIPELINES)} "
                         "(b blit, g geometric, c colour)")
    with torch.autocast(x.device.type, enabled=False):
        return _augment(x.to(torch.promote_types(x.dtype, torch.float32)), p, generator, pipeline, supersample)


def _augment(x: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None, pipeline: str,
             supersample: bool) -> torch.Tensor:
    n, c, _, w = x.shape
    device = x.device
    if "b" in pipeline or "g" in pipeline:
        mats = geometric_matrices(n, w, p, device, generator, blit="b" in pipeline, geom="g" in pipeline)
        x = resample(x, mats, supersample=supersample)
    if "c" in pipeline:
        mat, off = colour_transforms(n, c, p, device, generator)
        x = torch.einsum("nij,njhw->nihw", mat.to(x.dtype), x) + off.to(x.dtype).view(n, c, 1, 1)
    return x


class AdaptiveAugment:
    """The probability ``p`` and its controller; ``augment`` applies the pipeline at the current p.

    ``observe(signs)`` after each D update adds the update's signs of D's real outputs (or of the
    real-minus-fake differences); ``adjust(reduce)`` every ``interval`` steps turns their mean r_t into a
    step of p. ``reduce`` sums over the data-parallel ranks (identity alone), so every rank keeps one p.
    """

    def __init__(self, target: float, kimg: float, interval: int, batch_size: int, device: torch.device,
                 pipeline: str = "bgc", supersample: bool = False):
        self.target, self.interval, self.pipeline, self.supersample = target, interval, pipeline, supersample
        self.speed = batch_size * interval / (kimg * 1000)  # change of p per adjustment
        self.p = torch.zeros((), device=device)
        self.sums = torch.zeros(2, device=device)  # (sum of signs, count) since the last adjustment
        self.r_t = torch.zeros((), device=device)  # the last adjustment's r_t, for the log

    def augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return augment(x, self.p, generator, self.pipeline, self.supersample)

    @torch.no_grad()
    def observe(self, signs: torch.Tensor) -> None:
        self.sums[0] += signs.sum()
        self.sums[1] += signs.numel()  # a Python number: no tensor made (nor copied to the device) per step

    @torch.no_grad()
    def adjust(self, reduce=lambda t: t) -> None:  # noqa: ANN001 (a collective)
        sums = reduce(self.sums)
        self.r_t = sums[0] / sums[1].clamp(min=1)
        self.p = (self.p + torch.sign(self.r_t - self.target) * self.speed).clamp(0, 1)
        self.sums.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p.clone(), "sums": self.sums.clone(), "r_t": self.r_t.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.p.device
        self.p, self.sums, self.r_t = (state[k].to(device) for k in ("p", "sums", "r_t"))


def make_ada(train: TrainConfig, batch_size: int, device: torch.device) -> AdaptiveAugment | None:
    """The run's ADA controller (p at 0) from its resolved train config, or None where ADA is off."""
    if train.ada != "on":
        return None
    return AdaptiveAugment(train.ada_target, train.ada_kimg, train.ada_interval, batch_size, device,
                           train.ada_pipeline, train.ada_supersample)
