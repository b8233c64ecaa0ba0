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

from ganlib.evaluation.metrics import nearest_neighbours
from ganlib.rendering.pictures import add_caption, grid_picture, save_png
from ganlib.sampling import to_unit_range

NUM_PAIRS = 16


def pixel_vectors(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 (N, C*H*W) in [0, 255] (exact: integers below 2^24)."""
    return images_uint8.reshape(len(images_uint8), -1).to(torch.float32)


def nearest_training(query: torch.Tensor, training: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (float64 (M,)) from each query vector to its nearest training vector, and that vector's index.

    The search runs in the inputs' dtype; the distances of the pairs found are then recomputed
    exactly in float64 (for pixels, float32 search keeps 10,000 x 10,000 x 784 fast).
    """
    _, index = nearest_neighbours(query, training)
    exact = (query.to(torch.float64) - training[index].to(torch.float64)).norm(dim=1)
    return exact, index


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
        generated: (M, C, H, W) float in [-1, 1]; training: (N, C, H, W) uint8 or float in [-1, 1].
        distances, index: :func:`nearest_training`'s output for ``generated``.
        caption: written above the grid (say the step, the generator and the space).

    Four rows of four pairs (generated, then its nearest training image), written atomically.
    """
    order = torch.argsort(distances)[:num_pairs]
    nearest = training[index[order]]
    if nearest.dtype == torch.uint8:
        nearest = to_unit_range(nearest)
    pairs = torch.stack([generated[order], nearest], dim=1).flatten(0, 1)  # g0, t0, g1, t1, ...
    picture = grid_picture(pairs, nrow=8, min_cell_px=56)
    return save_png(add_caption(picture, caption, px=14), Path(path))
