"""Memorisation check: are generated images closer to the training images than new real images are?

For each generated sample we find the distance to its nearest training image, and compare it with
the same distance for held-out real images. A generator that produces new images of the data's
kind sits about as close as held-out real images do: about half its samples are closer than the
held-out median (``fraction_closer`` ~ 0.5). Far more than half means samples hug training images
(copies or near-copies); far less means they are further from the data than real images are (poor
quality, not memorisation). The closest pairs are saved as a picture for a person to judge.

Space: ``pixels`` (L2 on the uint8 images: a copy is near in pixels whatever a classifier thinks)
or ``domain`` (the domain classifier's features).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ganlib.evaluation.metrics import _rows_per_block, nearest_neighbours
from ganlib.rendering.pictures import add_caption, grid_picture, save_png
from ganlib.runs.device import float64_device
from ganlib.sampling import to_unit_range

NUM_PAIRS = 16


# Float32 copies of training vectors held at once by the pixel search (the rest stay uint8): at 256 px,
# 10,000 images are 2 GB as uint8 and were 7.9 GB as float32, beside as many query vectors.
SEARCH_BYTES = 1 << 30


def pixel_vectors(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> uint8 (N, C*H*W), kept in uint8 (a quarter of float32's memory):
    ``nearest_training`` converts them to float32 a block at a time (exact: integers below 2^24)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"pixel_vectors takes uint8 images, got {images_uint8.dtype}")
    return images_uint8.reshape(len(images_uint8), -1)


def nearest_training(query: torch.Tensor, training: torch.Tensor,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (float64 (M,)) from each query vector to its nearest training vector, and that vector's index.

    The search runs in the inputs' dtype; the distances of the pairs found are then recomputed
    exactly in float64 (for pixels, float32 search keeps 10,000 x 10,000 x 784 fast).

    Pixel vectors (uint8, ``pixel_vectors``) are searched on ``device`` (default: the query's; the CPU for MPS,
    which has no float64), in float32, a block of at most ``SEARCH_BYTES`` of queries against as much of the
    training vectors at a time; where one block holds them all this is the same arithmetic as one search over
    float32 copies. Ties keep the lower index.
    """
    if query.dtype != torch.uint8:
        _, index = nearest_neighbours(query, training)
        exact = (query.to(torch.float64) - training[index].to(torch.float64)).norm(dim=1)
        return exact, index
    device = float64_device(device if device is not None else query.device)  # the running minimum is float64
    per_part = max(1, SEARCH_BYTES // (4 * training.shape[1]))
    # One part: the query blocks of a search over float32 copies; several: also at most SEARCH_BYTES each.
    rows_per_block = _rows_per_block(min(per_part, len(training)))
    if per_part < len(training):
        rows_per_block = min(rows_per_block, per_part)
    found = torch.full((len(query),), float("inf"), dtype=torch.float64, device=device)
    index = torch.zeros(len(query), dtype=torch.int64, device=device)
    for start in range(0, len(training), per_part):
        part = training[start:start + per_part].to(device, torch.float32)
        for rows in torch.arange(len(query), device=device).split(rows_per_block):
            distance, nearest = nearest_neighbours(query[rows.to(query.device)].to(device, torch.float32), part)
            closer = distance < found[rows]  # strictly: an equal distance in a later part keeps the earlier index
            found[rows] = torch.where(closer, distance, found[rows])
            index[rows] = torch.where(closer, nearest + start, index[rows])
    index = index.cpu()
    # The pairs' distances, exactly, on the CPU (as before: the same numbers whichever device searched).
    exact = [(query[rows.to(query.device)].cpu().to(torch.float64)
              - training[index[rows].to(training.device)].cpu().to(torch.float64)).norm(dim=1)
             for rows in torch.arange(len(query)).split(_rows_per_block(training.shape[1]))]
    return torch.cat(exact), index


def memorisation_scores(generated_distances: torch.Tensor, real_distances: torch.Tensor) -> dict[str, float]:
    """``fraction_closer``: share of generated samples nearer a training image than the median held-out
    real image is; with both medians (float64 distances in the space's units)."""
    real_median = float(real_distances.to(torch.float64).median())
    return {
        "memorisation_fraction": float((generated_distances < real_median).double().mean()),
        "memorisation_median_distance": float(generated_distances.to(torch.float64).median()),
        "memorisation_real_median_distance": real_median,
    }


def save_closest_pairs(generated: torch.Tensor, training: torch.Tensor, distances: torch.Tensor,
                       index: torch.Tensor, path: Path, caption: str, num_pairs: int = NUM_PAIRS) -> Path:
    """A picture of the ``num_pairs`` generated samples closest to a training image, each beside it.

    Args:
        generated: (M, C, H, W), training: (N, C, H, W); each uint8 or float in [-1, 1].
        distances, index: :func:`nearest_training`'s output for ``generated``.
        caption: written above the grid (say the step, the generator and the space).

    Four rows of four pairs (generated, then its nearest training image), written atomically.
    """
    order = torch.argsort(distances)[:num_pairs]
    samples, nearest = generated[order], training[index[order]]
    samples, nearest = (to_unit_range(x) if x.dtype == torch.uint8 else x for x in (samples, nearest))
    pairs = torch.stack([samples, nearest], dim=1).flatten(0, 1)  # g0, t0, g1, t1, ...
    picture = grid_picture(pairs, nrow=8, min_cell_px=56)
    return save_png(add_caption(picture, caption, px=14), Path(path))
