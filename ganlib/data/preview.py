"""The grid of real images that preparation leaves next to a store (``real_grid.png``).

It must look exactly like the sample grids of ``ganlib.rendering.gallery.save_grid`` (same padding, pad
grey, cell enlargement), so real and generated images can be compared side by side; a test pins
the two pixel for pixel. It is drawn here with numpy and Pillow because preparation must not
import torch: importing torch alone takes about 540 MB of resident memory, more than
preparation's whole budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ganlib.runs.files import atomic_path

_PADDING = 2
_PAD_VALUE = 128  # round(0.5 * 255) (to even), the grey of torchvision's make_grid(pad_value=0.5)


def evenly_spaced(count: int, num: int) -> np.ndarray:
    """``num`` (or ``count`` if fewer) indices spread evenly over range(count), int64."""
    return np.unique(np.linspace(0, count - 1, min(num, count)).round().astype(np.int64))


def grid_padding(n: int) -> int:
    """Pixels between the cells of a grid of ``n`` images (and around them); none for a single image."""
    return _PADDING if n > 1 else 0


def tile(images: np.ndarray, nrow: int) -> np.ndarray:
    """uint8 images (N, C, H, W) as one uint8 array (C, H', W'): ``nrow`` per row, 2-pixel grey padding
    between and around them (none for a single image), as torchvision's ``make_grid(pad_value=0.5)``."""
    n, c, h, w = images.shape
    padding = grid_padding(n)
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), _PAD_VALUE,
                   dtype=np.uint8)
    for k in range(n):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top: top + h, left: left + w] = images[k]
    return grid


def cell_scale(side: int, min_cell_px: int) -> int:
    """The integer enlargement that brings a cell of ``side`` pixels to at least ``min_cell_px``."""
    return max(1, min_cell_px // side)


def tile_picture(images: np.ndarray, nrow: int, min_cell_px: int) -> Image.Image:
    """uint8 images (N, C, H, W) tiled by :func:`tile` into a picture ("L" for C = 1, else RGB), its cells
    enlarged by ``cell_scale`` (nearest neighbour)."""
    grid = tile(images, nrow)
    picture = Image.fromarray(grid[0] if images.shape[1] == 1 else grid.transpose(1, 2, 0))
    scale = cell_scale(images.shape[-1], min_cell_px)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def save_image_grid(images: np.ndarray, path: Path, nrow: int = 10, min_cell_px: int = 112) -> Path:
    """Save uint8 images (N, C, H, W), C = 1 or 3, as a PNG grid with ``nrow`` images per row.

    The same picture as ``ganlib.rendering.gallery.save_grid(images / 127.5 - 1, path, nrow, min_cell_px)``:
    2-pixel grey padding, cells enlarged by the integer factor that brings them to at least
    ``min_cell_px`` (nearest neighbour); grayscale images give a grayscale PNG.
    """
    picture = tile_picture(images, nrow, min_cell_px)
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
