"""Pictures: grids of images, PNG and GIF files, sample files. Pure: images in, file out.

Grids take float images in [-1, 1] and render them with an explicit ``value_range=(-1, 1)``, so a
saturated generator looks saturated (per-batch min-max normalisation would hide it). Every file is
written through ``ganlib.runs.files.atomic_path``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ganlib.data.preview import cell_scale, grid_padding, tile_picture
from ganlib.runs.files import atomic_path


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's built-in font: no font file on disk, the same text on every machine.
    return ImageFont.load_default(size=max(10, px))


def _white(mode: str) -> int | tuple[int, int, int]:
    return 255 if mode == "L" else (255, 255, 255)


def _black(mode: str) -> int | tuple[int, int, int]:
    return 0 if mode == "L" else (0, 0, 0)


def add_row_labels(picture: Image.Image, labels: Sequence[str], cell_px: int, padding_px: int) -> Image.Image:
    """A copy of a grid picture with ``labels[r]`` written left of row r, in a white margin.

    ``cell_px``/``padding_px``: the enlarged cell side and padding of the grid, to find row centres.
    """
    font = _font(cell_px // 4)
    widths = [ImageDraw.Draw(picture).textlength(str(t), font=font) for t in labels]
    gap = max(4, cell_px // 8)
    margin = int(math.ceil(max(widths, default=0))) + 2 * gap
    out = Image.new(picture.mode, (picture.width + margin, picture.height), _white(picture.mode))
    out.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(out)
    for r, text in enumerate(labels):
        centre_y = padding_px + r * (cell_px + padding_px) + cell_px / 2
        draw.text((margin - gap, centre_y), str(text), fill=_black(out.mode), font=font, anchor="rm")
    return out


def add_caption(picture: Image.Image, text: str, px: int = 16) -> Image.Image:
    """A copy of ``picture`` with ``text`` in a white strip above it (the timelapse's step numbers)."""
    font = _font(px)
    strip = px + px // 2 + 4
    out = Image.new(picture.mode, (picture.width, picture.height + strip), _white(picture.mode))
    out.paste(picture, (0, strip))
    ImageDraw.Draw(out).text((4, strip // 2), text, fill=_black(out.mode), font=font, anchor="lm")
    return out


def grid_picture(images: torch.Tensor, nrow: int, min_cell_px: int = 112,
                 row_labels: Sequence[str] | None = None) -> Image.Image:
    """Images (N, C, H, W) float in [-1, 1] as a grid picture with ``nrow`` images per row.

    Cells are enlarged (nearest neighbour, an integer factor) to at least ``min_cell_px`` so
    28-pixel digits are visible at a glance. ``row_labels``: one label per grid row (conditional
    runs: the class of each row), written in a left margin. C = 1 gives a grayscale ("L") picture,
    C = 3 an RGB one.
    """
    # torchvision's make_grid(normalize=True, value_range=(-1, 1)) then mul(255).round(), op for op (the same
    # pixels as before), without importing torchvision: with the torch._dynamo it pulls in, 2.5-3 s of every
    # command's start on a 2-core CPU.
    cells = images.detach().float().cpu().clamp(-1, 1).sub(-1.0).div(2.0).mul(255).round().clamp(0, 255)
    picture = tile_picture(cells.to(torch.uint8).numpy(), nrow, min_cell_px)
    if row_labels is not None:
        scale = cell_scale(images.shape[-1], min_cell_px)
        rows = math.ceil(len(images) / nrow)
        if len(row_labels) != rows:
            raise ValueError(f"row_labels: {len(row_labels)} labels for a grid of {rows} rows")
        picture = add_row_labels(picture, row_labels, images.shape[-2] * scale, grid_padding(len(images)) * scale)
    return picture


def save_png(picture: Image.Image, path: Path) -> Path:
    """Write a picture as PNG to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def save_grid(images: torch.Tensor, path: Path, nrow: int, min_cell_px: int = 112,
              row_labels: Sequence[str] | None = None) -> Path:
    """Save images (N, C, H, W) float in [-1, 1] as a PNG grid; see ``grid_picture``."""
    return save_png(grid_picture(images, nrow, min_cell_px, row_labels), path)


def save_gif(frames: Sequence[Image.Image], path: Path, frame_ms: int | Sequence[int] = 100) -> Path:
    """Save pictures of one size as a looping GIF; ``frame_ms``: one duration or one per frame."""
    if not frames:
        raise ValueError("save_gif: no frames")
    durations = list(frame_ms) if isinstance(frame_ms, Sequence) else [int(frame_ms)] * len(frames)
    with atomic_path(Path(path)) as tmp:
        # disposal=1: each frame is drawn over the last (all are opaque and full size anyway).
        frames[0].save(tmp, format="GIF", save_all=True, append_images=list(frames[1:]), duration=durations,
                       loop=0, disposal=1)
    return Path(path)


def save_samples(images_uint8: torch.Tensor, path: Path, **meta: Any) -> Path:
    """Save uint8 images (N, C, H, W) and metadata (seed, step, ...) as a compressed npz."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images_uint8.numpy(), **{k: np.asarray(v) for k, v in meta.items()})
    return Path(path)

