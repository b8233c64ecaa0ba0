"""Sampling from a generator and rendering what it makes.

Rendering is pure: images in, file out, with an explicit ``value_range=(-1, 1)`` so a saturated
generator looks saturated (per-batch min-max normalisation would hide it). Anything compared
across checkpoints uses fixed latents from ``fixed_noise``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from ganlib.io import atomic_path


def fixed_noise(num: int, noise_dim: int, seed: int) -> torch.Tensor:
    """Latents (num, noise_dim) float32 on the CPU, the same for the same seed on any machine."""
    return torch.randn(num, noise_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images (N, C, H, W) float in [-1, 1] on the CPU from latents z (N, noise_dim), in batches.

    The generator must be in eval mode (batch norm then uses its running statistics, so an
    image does not depend on which other images share its batch).
    """
    device = next(generator.parameters()).device
    out = [generator(z[i: i + batch_size].to(device)).float().cpu() for i in range(0, len(z), batch_size)]
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to nearest."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path: Path, nrow: int, min_cell_px: int = 112) -> Path:
    """Save images (N, C, H, W) float in [-1, 1] as a PNG grid with ``nrow`` images per row.

    Cells are enlarged (nearest neighbour, an integer factor) to at least ``min_cell_px`` so
    28-pixel digits are visible at a glance.
    """
    grid = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1), pad_value=0.5)
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if images.shape[1] == 1 else array)
    scale = max(1, min_cell_px // images.shape[-1])
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def save_samples(images_uint8: torch.Tensor, path: Path, **meta: Any) -> Path:
    """Save uint8 images (N, C, H, W) and metadata (seed, step, ...) as a compressed npz."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images_uint8.numpy(), **{k: np.asarray(v) for k, v in meta.items()})
    return Path(path)


GALLERY_NOISE_OFFSET = 2_000_003  # gallery latents differ from the training and evaluation ones


def make_gallery(checkpoint_path: Path, gallery_dir: Path, num_samples: int, seed: int,
                 device: str | torch.device = "cpu", batch_size: int = 500) -> dict[str, Any]:
    """From one checkpoint: ``grid_5x5.png``, ``grid_10x10.png`` and ``samples.npz`` in ``gallery_dir``.

    The grids use the first 25 / 100 of the same fixed latents (seed ``seed``), so the 5x5 grid is
    the top-left corner of the 10x10 one. ``samples.npz`` holds ``images`` uint8 (N, C, H, W) and
    the ``seed`` and checkpoint ``step`` that made them.
    """
    from ganlib.train import load_generator  # local: train imports this module's neighbours

    generator, meta = load_generator(checkpoint_path, device)
    noise_dim = meta["config"]["model"]["noise_dim"]
    gallery_seed = seed + GALLERY_NOISE_OFFSET
    z = fixed_noise(max(num_samples, 100), noise_dim, gallery_seed)
    images = generate(generator, z, batch_size=batch_size)
    gallery_dir = Path(gallery_dir)
    grid5 = save_grid(images[:25], gallery_dir / "grid_5x5.png", nrow=5)
    grid10 = save_grid(images[:100], gallery_dir / "grid_10x10.png", nrow=10)
    samples = save_samples(to_uint8(images[:num_samples]), gallery_dir / "samples.npz",
                           seed=gallery_seed, step=meta["step"], checkpoint=Path(checkpoint_path).name)
    return {"grid_5x5": str(grid5), "grid_10x10": str(grid10), "samples": str(samples),
            "num_samples": num_samples, "seed": gallery_seed, "step": meta["step"],
            "checkpoint": Path(checkpoint_path).name}
