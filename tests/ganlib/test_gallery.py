import numpy as np
import torch
from PIL import Image

from ganlib.data.store import prepare_dataset
from ganlib.gallery import fixed_noise, make_gallery, save_grid, to_uint8
from ganlib.train import train


def test_fixed_noise_is_reproducible():
    assert torch.equal(fixed_noise(5, 100, 3), fixed_noise(5, 100, 3))
    assert not torch.equal(fixed_noise(5, 100, 3), fixed_noise(5, 100, 4))


def test_grid_uses_the_explicit_value_range(tmp_path):
    # Half-grey images must stay half-grey: no per-batch min-max stretching.
    images = torch.zeros(4, 1, 28, 28)
    images[0] = -1.0
    path = save_grid(images, tmp_path / "g.png", nrow=2, min_cell_px=28)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    assert pixels[2 + 14, 2 + 14] == 0  # the -1 image is black
    assert abs(int(pixels[2 + 14, 4 + 28 + 14]) - 128) <= 1  # the 0 image is mid grey


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def test_make_gallery_files(tiny):
    cfg = tiny(run_id="gal")
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    out = make_gallery(cfg.run_dir / "checkpoints" / "step_000012.pt", cfg.run_dir / "gallery", 30, seed=7)
    grid5, grid10 = Image.open(out["grid_5x5"]), Image.open(out["grid_10x10"])
    assert grid5.size[0] >= 5 * 112 and grid10.size[0] > grid5.size[0]
    with np.load(out["samples"]) as npz:
        assert npz["images"].shape == (30, 1, 28, 28) and npz["images"].dtype == np.uint8
        assert int(npz["step"]) == 12 and int(npz["seed"]) == out["seed"]
    again = make_gallery(cfg.run_dir / "checkpoints" / "step_000012.pt", cfg.run_dir / "gallery2", 30, seed=7)
    with np.load(out["samples"]) as a, np.load(again["samples"]) as b:
        assert np.array_equal(a["images"], b["images"])  # fixed latents: same checkpoint, same images
