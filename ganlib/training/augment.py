"""Differentiable augmentation (Zhao et al. 2020, "DiffAugment") for small datasets.

The same random transforms are applied to every image D sees, real and fake, in both the D and G
updates, so D cannot tell real from fake by the augmentation and gradients flow through it to G.
All randomness comes from the ``generator`` passed in (the run's saved noise generator), so a
resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random brightness (±0.5), saturation (x0..2) and contrast (x0.5..1.5) on [-1, 1] images."""
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with -1 (black).

    One ``gather`` from the image padded by a black border: its backward is a ``scatter_add``,
    2.4x faster on the CPU than the advanced-indexing form (whose backward is ``index_put``).
    """
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device, generator=generator)
    # Source pixel of each output pixel in the padded image, where index 0 and h+1 (w+1) are the fill.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp_(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp_(0, w + 1)
    index = (rows * (w + 2) + cols).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0).flatten(2)
    return padded.gather(2, index).view(n, c, h, w)


def cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    """Blank (set to 0, mid grey) one random square of ``ratio`` of the size in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows - cy).abs() <= ch // 2) & ((cols - cx).abs() <= cw // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the policy's transforms in order to images (N, C, H, W) float in [-1, 1]."""
    for name in policy:
        x = _OPS[name](x, generator)
    return x
