"""The real-image grid looks exactly like the sample grids of ganlib.rendering.gallery."""

import numpy as np
import pytest
import torch
from PIL import Image

from ganlib.data.preview import evenly_spaced, save_image_grid
from ganlib.rendering.pictures import save_grid


@pytest.mark.parametrize(("n", "c", "size"),
                         [(100, 1, 28), (100, 3, 32), (7, 3, 64), (1, 1, 28), (23, 1, 32)])
def test_grid_matches_gallery_save_grid_pixel_for_pixel(tmp_path, n, c, size):
    images = np.random.default_rng(n).integers(0, 256, (n, c, size, size), dtype=np.uint8)
    ours = save_image_grid(images, tmp_path / "ours.png", nrow=10)
    theirs = save_grid(torch.from_numpy(images).float() / 127.5 - 1, tmp_path / "theirs.png", nrow=10)
    a, b = Image.open(ours), Image.open(theirs)
    assert a.mode == b.mode and a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_evenly_spaced_covers_the_dataset():
    assert evenly_spaced(1000, 100)[[0, -1]].tolist() == [0, 999] and len(evenly_spaced(1000, 100)) == 100
    assert evenly_spaced(5, 100).tolist() == [0, 1, 2, 3, 4]
