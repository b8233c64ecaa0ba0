"""Sampling and pictures: grids, per-checkpoint grids and timelapse, interpolation, sample export."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageSequence
from torch import nn

import ganlib.rendering.gallery
from ganlib.config import build_config
from ganlib.data.store import prepare_dataset
from ganlib.errors import CheckpointError
from ganlib.rendering.gallery import (
    GALLERY_NOISE_OFFSET,
    export_samples,
    gallery_sample_count,
    loop_path,
    make_gallery,
    make_interpolation,
    render_step_grids,
    resolve_checkpoint,
    save_timelapse,
    slerp,
    step_grid_images,
)
from ganlib.rendering.pictures import grid_picture, save_gif, save_grid
from ganlib.sampling import fixed_noise, generate, is_conditional, load_generator, to_uint8
from ganlib.training.loop import train

TINY = {
    "run_id": "gal", "device": "cpu",
    "data": {"dataset": "digits", "num_images": 400},
    "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
    "train": {"steps": 12, "batch_size": 32, "checkpoint_every": 6, "log_every": 4},
    "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100},
    "gallery": {"num_samples": 50},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (checkpoints at steps 6 and 12), shared by this module's tests."""
    cfg = build_config({**TINY, "out": str(tmp_path_factory.mktemp("gallery") / "out")}).resolved()
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    return cfg


# --- pure rendering ---------------------------------------------------------------------------------

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


@pytest.mark.parametrize(("n", "c", "nrow"), [(1, 1, 5), (7, 3, 3), (25, 1, 5), (12, 3, 10)])
def test_grid_pixels_are_torchvisions_make_grid(n, c, nrow):
    """Our tiling (no torchvision import on the command's path) draws what make_grid drew before it, pixel
    for pixel: out-of-range values, exact half-steps of 1/255 and a single image included."""
    from torchvision.utils import make_grid

    images = torch.randn(n, c, 8, 8, generator=torch.Generator().manual_seed(n)) * 0.8
    images[0, 0, 0, :4] = torch.tensor([-3.0, 3.0, 1 / 255, 3 / 255])
    grid = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1), pad_value=0.5)
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    expected = array[:, :, 0] if c == 1 else array
    assert np.array_equal(np.asarray(grid_picture(images, nrow=nrow, min_cell_px=8)), expected)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def test_row_labels_add_a_left_margin_and_leave_the_cells_alone(tmp_path):
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    plain = np.asarray(grid_picture(images, nrow=3, min_cell_px=56))
    labelled_picture = grid_picture(images, nrow=3, min_cell_px=56, row_labels=["cat", "dog"])
    labelled = np.asarray(labelled_picture)
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 20
    assert np.array_equal(labelled[:, margin:], plain)  # the grid itself is untouched
    assert (labelled[:, :margin] < 128).any()  # some text was drawn in the margin
    assert labelled_picture.mode == "L"
    with pytest.raises(ValueError, match="2 rows"):
        grid_picture(images, nrow=3, row_labels=["only one"])


def test_save_gif_keeps_frames_and_durations(tmp_path):
    frames = [Image.new("L", (20, 10), v) for v in (0, 128, 255)]
    path = save_gif(frames, tmp_path / "a.gif", [100, 200, 900])
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["loop"] == 0
        durations = []
        for i in range(3):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert durations == [100, 200, 900]
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file, which is gone


def test_slerp_hits_both_ends_and_keeps_the_norm_of_orthogonal_latents():
    z0 = torch.tensor([[3.0, 0.0, 0.0]])
    z1 = torch.tensor([[0.0, 3.0, 0.0]])
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    assert path.shape == (1, 7, 3)
    assert torch.allclose(path[0, 0], z0[0]) and torch.allclose(path[0, -1], z1[0], atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.full((1, 7), 3.0), atol=1e-5)  # on the circle
    assert torch.allclose(path[0, 3], torch.tensor([3.0, 3.0, 0.0]) / 2 ** 0.5, atol=1e-5)
    # A straight line would dip to 3/sqrt(2) mid-way; nearly parallel latents fall back to it.
    same = slerp(z0, z0 * 2, torch.tensor([0.5]))
    assert torch.allclose(same[0, 0], z0[0] * 1.5) and torch.isfinite(same).all()


def test_loop_path_is_closed_without_repeating_a_frame():
    anchors = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    path = loop_path(anchors, frames_per_segment=4)
    assert path.shape == (12, 2, 5)
    assert torch.allclose(path[0], anchors[0]) and torch.allclose(path[4], anchors[1], atol=1e-6)
    assert torch.allclose(path[8], anchors[2], atol=1e-6)
    assert not any(torch.allclose(path[i], path[i + 1]) for i in range(11))


# --- from checkpoints ---------------------------------------------------------------------------------

def test_make_gallery_files(trained, tmp_path):
    ckpt = trained.run_dir / "checkpoints" / "step_000012.pt"
    out = make_gallery(ckpt, tmp_path / "gallery", 30, seed=7)
    grid5, grid10 = Image.open(out["grid_5x5"]), Image.open(out["grid_10x10"])
    assert grid5.size[0] >= 5 * 112 and grid10.size[0] > grid5.size[0]
    with np.load(out["samples"]) as npz:
        assert npz["images"].shape == (30, 1, 28, 28) and npz["images"].dtype == np.uint8
        assert int(npz["step"]) == 12 and int(npz["seed"]) == out["seed"] == 7 + GALLERY_NOISE_OFFSET
    again = make_gallery(ckpt, tmp_path / "gallery2", 30, seed=7)
    with np.load(out["samples"]) as a, np.load(again["samples"]) as b:
        assert np.array_equal(a["images"], b["images"])  # fixed latents: same checkpoint, same images


def test_make_gallery_keeps_uint8_samples_a_batch_at_a_time_and_draws_the_same_grids(trained, tmp_path, monkeypatch):
    """No float copy of every sample (10,000 RGB images of 256 px: 7.9 GB): generated eval.batch_size at a time;
    the grids are the pictures of the float samples, pixel for pixel."""
    import ganlib.rendering.gallery as gallery

    ckpt, make, sizes = trained.run_dir / "checkpoints" / "step_000012.pt", gallery.generate, []
    monkeypatch.setattr(gallery, "generate", lambda g, z, *a, **k: sizes.append(len(z)) or make(g, z, *a, **k))
    out = make_gallery(ckpt, tmp_path / "gallery", 150, seed=7, batch_size=64)
    assert sizes == [64, 64, 22]
    generator, _ = load_generator(ckpt)
    whole = make(generator, fixed_noise(150, 100, 7 + GALLERY_NOISE_OFFSET), batch_size=64)
    save_grid(whole[:25], tmp_path / "float5.png", nrow=5)
    assert (tmp_path / "float5.png").read_bytes() == Path(out["grid_5x5"]).read_bytes()
    with np.load(out["samples"]) as npz:
        assert np.array_equal(npz["images"], to_uint8(whole).numpy())


def test_the_default_gallery_keeps_samples_npz_within_its_memory_budget():
    """10,000 samples unless their pixels pass 256 MiB: 10,000 of 128-px RGB were a 474 MB file (and 2 GB at 256)."""
    assert [gallery_sample_count(s) for s in [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 128, 128), (3, 256, 256)]] \
        == [10_000, 10_000, 10_000, 5_400, 1_300]
    assert 5_400 * 3 * 128 * 128 <= 256 * 2**20 < 5_500 * 3 * 128 * 128
    assert gallery_sample_count((3, 4096, 4096)) == 100  # the grids need 100 whatever the size


def test_make_gallery_without_a_count_takes_the_default_and_says_so_when_it_is_fewer(trained, tmp_path, monkeypatch,
                                                                                    caplog):
    ckpt = trained.run_dir / "checkpoints" / "step_000012.pt"
    monkeypatch.setattr(ganlib.rendering.gallery, "GALLERY_SAMPLES_MIB", 1)  # 1 MiB of 28-px digits: 1,300
    with caplog.at_level(logging.INFO, logger="ganlib"):
        out = make_gallery(ckpt, tmp_path / "gallery", None, seed=7)
    assert out["num_samples"] == 1_300
    with np.load(out["samples"]) as npz:
        assert npz["images"].shape == (1_300, 1, 28, 28)
    assert "gallery: 1,300 samples of 28x28 px in samples.npz (at most 1 MiB of pixels; --gallery-samples N" \
        in caplog.text


def test_step_grids_render_once_per_checkpoint_and_mirror_the_checkpoints(trained, tmp_path):
    steps_dir = tmp_path / "steps"
    done = render_step_grids(trained.run_dir / "checkpoints", steps_dir, seed=7)
    assert [(s, p.name) for s, p in done] == [(6, "step_000006.png"), (12, "step_000012.png")]
    side = 8 * (28 + 2) + 2
    assert Image.open(done[0][1]).size == (side * 4, side * 4)  # 8x8 cells enlarged 4x
    assert not np.array_equal(np.asarray(Image.open(done[0][1])), np.asarray(Image.open(done[1][1])))
    index = json.loads((steps_dir / "index.json").read_text())
    assert set(index) == {"step_000006.png", "step_000012.png"} and index["step_000006.png"]["seed"] == 7

    # Unchanged checkpoints are not rendered again (the files are not rewritten).
    before = {p.name: p.stat().st_mtime_ns for _, p in done}
    again = render_step_grids(trained.run_dir / "checkpoints", steps_dir, seed=7)
    assert {p.name: p.stat().st_mtime_ns for _, p in again} == before
    # A different seed redraws them.
    render_step_grids(trained.run_dir / "checkpoints", steps_dir, seed=8)
    assert json.loads((steps_dir / "index.json").read_text())["step_000006.png"]["seed"] == 8

    # A grid whose checkpoint is gone is deleted.
    only_last = tmp_path / "ckpts"
    only_last.mkdir()
    for name in ("step_000012.pt", "step_000012.pt.sha256"):
        os.link(trained.run_dir / "checkpoints" / name, only_last / name)
    left = render_step_grids(only_last, steps_dir, seed=8)
    assert [p.name for _, p in left] == ["step_000012.png"]
    assert sorted(p.name for p in steps_dir.glob("*.png")) == ["step_000012.png"]


def test_timelapse_has_one_captioned_frame_per_checkpoint_and_holds_the_last(trained, tmp_path):
    done = render_step_grids(trained.run_dir / "checkpoints", tmp_path / "steps", seed=7)
    gif_path = save_timelapse(done, tmp_path / "progress.gif", frame_ms=300, hold_last_ms=2000)
    with Image.open(gif_path) as gif:
        frames = [f.convert("L") for f in ImageSequence.Iterator(gif)]
        gif.seek(len(frames) - 1)
        assert gif.info["duration"] == 2000
    assert len(frames) == 2
    grid = Image.open(done[0][1])
    assert frames[0].width == grid.width // 2  # shrunk 2x to stay embeddable
    assert frames[0].height > grid.height // 2  # plus the caption strip
    strip = np.asarray(frames[0])[: frames[0].height - grid.height // 2]
    assert (strip < 128).any() and (strip == 255).mean() > 0.5  # dark text on white

    many = [(s, done[i % 2][1]) for i, s in enumerate(range(100, 10_100, 100))]  # 100 checkpoints
    with Image.open(save_timelapse(many, tmp_path / "long.gif", max_frames=10)) as gif:
        assert gif.n_frames == 10


def test_interpolation_grid_and_gif(trained, tmp_path, monkeypatch):
    ckpt = trained.run_dir / "checkpoints" / "step_000012.pt"
    out = make_interpolation(ckpt, tmp_path, seed=7, rows=3, columns=5, gif_side=2, gif_anchors=3,
                             frames_per_segment=4)
    grid = Image.open(out["interpolation_png"])
    assert grid.size == ((5 * 30 + 2) * 4, (3 * 30 + 2) * 4)
    with Image.open(out["interpolation_gif"]) as gif:
        assert gif.n_frames == 12 and gif.size == ((2 * 30 + 2) * 2, (2 * 30 + 2) * 2)
    # Large images: cells at 1x where 2x would pass GIF_WIDTH_PX, and shrunk where 1x would (128-px images at 2x
    # made a 30 MB GIF). Here 2 x 2 cells of 28 px against a width of 60, then 40.
    for width, size in ((60, 2 * 30 + 2), (40, (2 * 30 + 2) // 2)):
        monkeypatch.setattr(ganlib.rendering.gallery, "GIF_WIDTH_PX", width)
        small = make_interpolation(ckpt, tmp_path / str(width), seed=7, rows=3, columns=5, gif_side=2, gif_anchors=3,
                                   frames_per_segment=4)
        with Image.open(small["interpolation_gif"]) as gif:
            assert gif.n_frames == 12 and gif.size == (size, size)
        assert Image.open(small["interpolation_png"]).size == grid.size  # the PNG keeps its 4x cells
    # Rows change smoothly: neighbouring columns differ less than the two ends do.
    cells = np.asarray(grid, dtype=float)[8:8 + 112, :]  # first row, 4x cells of 28 + 2 padding
    cols = [cells[:, 8 + c * 120: 8 + c * 120 + 112] for c in range(5)]
    steps = [np.abs(cols[c + 1] - cols[c]).mean() for c in range(4)]
    assert max(steps) < np.abs(cols[4] - cols[0]).mean()


def test_export_samples_npz_is_reproducible_and_independent_of_n(trained, tmp_path):
    ckpt = trained.run_dir / "checkpoints" / "step_000012.pt"
    a = export_samples(ckpt, tmp_path / "a.npz", 30, seed=5)
    b = export_samples(ckpt, tmp_path / "b.npz", 10, seed=5, batch_size=4)
    assert a["seed"] == 5 and a["step"] == 12 and a["checkpoint"] == "step_000012.pt"
    with np.load(tmp_path / "a.npz") as fa, np.load(tmp_path / "b.npz") as fb:
        assert fa["images"].shape == (30, 1, 28, 28) and fa["images"].dtype == np.uint8
        assert int(fa["seed"]) == 5 and int(fb["step"]) == 12 and "labels" not in fa
        # Image i has the same latent whatever N; other batch sizes may round a pixel differently.
        assert np.abs(fa["images"][:10].astype(int) - fb["images"]).max() <= 1
        generator, _ = load_generator(ckpt)
        expected = to_uint8(generate(generator, fixed_noise(30, 100, 5))).numpy()
        assert np.array_equal(fa["images"], expected)  # the recorded seed regenerates them
    assert b["num_samples"] == 10


def test_export_samples_png_folder_appears_complete_and_replaces_an_old_one(trained, tmp_path):
    ckpt = trained.run_dir / "checkpoints" / "step_000006.pt"
    dest = tmp_path / "pngs"
    export_samples(ckpt, dest, 12, seed=3, fmt="png", batch_size=5)
    names = sorted(p.name for p in dest.iterdir())
    assert names == [f"{i:06d}.png" for i in range(12)] + ["meta.json"]
    meta = json.loads((dest / "meta.json").read_text())
    assert (meta["seed"], meta["step"], meta["files"], meta["format"]) == (3, 6, 12, "png")
    with np.load(export_samples(ckpt, tmp_path / "same.npz", 12, seed=3)["path"]) as npz:
        assert np.array_equal(np.asarray(Image.open(dest / "000007.png")), npz["images"][7, 0])
    export_samples(ckpt, dest, 4, seed=3, fmt="png")
    assert len(list(dest.glob("*.png"))) == 4  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(ValueError, match="fmt"):
        export_samples(ckpt, tmp_path / "x", 2, seed=1, fmt="jpg")


def test_export_samples_halves_a_batch_the_gpu_cannot_hold(trained, tmp_path, monkeypatch, caplog):
    """Simulated: the generator's device holds 4 images at once (CUDA's error, raised on the CPU)."""
    import ganlib.rendering.gallery as gallery

    ckpt, make = trained.run_dir / "checkpoints" / "step_000012.pt", gallery.generate

    def fits_four(generator, z, batch_size=500, labels=None):
        if min(batch_size, len(z)) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB. GPU 0 has ...")
        return make(generator, z, batch_size, labels)

    monkeypatch.setattr(gallery, "generate", fits_four)
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        export_samples(ckpt, tmp_path / "a.npz", 30, seed=5, batch_size=16)
        export_samples(ckpt, tmp_path / "pngs", 9, seed=5, fmt="png", batch_size=16)
    with np.load(tmp_path / "a.npz") as npz:
        assert npz["images"].shape == (30, 1, 28, 28)
        generator, _ = load_generator(ckpt)
        assert np.abs(npz["images"].astype(int) - to_uint8(generate(generator, fixed_noise(30, 100, 5))).numpy()
                      ).max() <= 1  # other batch sizes may round a pixel differently
    assert sorted(p.name for p in (tmp_path / "pngs").glob("*.png")) == [f"{i:06d}.png" for i in range(9)]
    assert [r.getMessage().split(": out of memory")[0] for r in caplog.records] == [
        "generating 30 images from step_000012.pt"] * 2 + ["generating 9 images from step_000012.pt"]  # 9 -> 4


def test_resolve_checkpoint(trained, tmp_path):
    run = trained.run_dir
    assert resolve_checkpoint(run, "latest").name == "step_000012.pt"
    assert resolve_checkpoint(run, "6").name == "step_000006.pt"
    assert resolve_checkpoint(run, "step_000006.pt").name == "step_000006.pt"
    assert resolve_checkpoint(run, str(run / "checkpoints" / "step_000012.pt")).name == "step_000012.pt"
    with pytest.raises(CheckpointError, match="no evaluation"):
        resolve_checkpoint(run, "best")
    with pytest.raises(CheckpointError, match=r"steps saved: 6, 12"):
        resolve_checkpoint(run, "7")
    copy = tmp_path / "run"
    (copy / "metrics").mkdir(parents=True)
    (copy / "checkpoints").symlink_to(run / "checkpoints")
    pd.DataFrame({"step": [6, 12], "checkpoint": ["step_000006.pt", "step_000012.pt"],
                  "best": [True, False]}).to_parquet(copy / "metrics" / "eval.parquet")
    assert resolve_checkpoint(copy, "best").name == "step_000006.pt"


# --- class-conditional (issue #4): a stand-in generator --------------------------------------------

class _ClassPainter(nn.Module):
    """A 'conditional generator' whose image is uniformly grey by class: -1 + 2k/(K-1), ignoring z."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = -1 + 2 * y.float() / (self.num_classes - 1)
        return (value * self.scale)[:, None, None, None].expand(len(z), 1, 28, 28)


@pytest.fixture
def conditional(monkeypatch, trained):
    meta = {"step": 12, "config": {"model": {"noise_dim": 100, "conditional": True}},
            "image_shape": [1, 28, 28], "num_classes": 3, "weights": "raw"}
    monkeypatch.setattr(ganlib.rendering.gallery, "load_generator",
                        lambda path, device="cpu", use_ema=True: (_ClassPainter(3).eval(), meta))
    return meta


def test_is_conditional_reads_the_model_flag():
    assert not is_conditional({"config": {"model": {"noise_dim": 100}}, "num_classes": 10})
    assert is_conditional({"config": {"model": {"conditional": True}}, "num_classes": 10})
    assert not is_conditional({"config": {"model": {"conditional": True}}, "num_classes": 0})


def test_conditional_grids_have_one_labelled_row_per_class(conditional, trained, tmp_path):
    images, nrow, labels = step_grid_images(_ClassPainter(3).eval(), conditional, seed=7, side=4,
                                            class_names=["zero", "one", "two"])
    assert images.shape == (12, 1, 28, 28) and nrow == 4 and labels == ["zero", "one", "two"]
    assert images[:4].eq(-1).all() and images[4:8].eq(0).all() and images[8:].eq(1).all()

    done = render_step_grids(trained.run_dir / "checkpoints", tmp_path / "steps", seed=7,
                             class_names=["zero", "one", "two"])
    picture = np.asarray(Image.open(done[-1][1]))
    assert picture.shape[0] == (3 * 30 + 2) * 4  # three rows: one per class
    assert picture.shape[1] > (8 * 30 + 2) * 4  # plus the label margin
    out = make_interpolation(trained.run_dir / "checkpoints" / "step_000012.pt", tmp_path, seed=7,
                             rows=3, columns=4, gif_side=2, frames_per_segment=2)
    assert Image.open(out["interpolation_png"]).width > (4 * 30 + 2) * 4  # labelled rows


def test_conditional_export_is_balanced_with_one_folder_per_class(conditional, trained, tmp_path):
    ckpt = trained.run_dir / "checkpoints" / "step_000012.pt"
    export_samples(ckpt, tmp_path / "c.npz", 9, seed=1, class_names=["a", "b/c", "d"])
    with np.load(tmp_path / "c.npz") as npz:
        assert npz["labels"].tolist() == [0, 1, 2] * 3
        assert npz["class_names"].tolist() == ["a", "b/c", "d"]
        assert (npz["images"][npz["labels"] == 1] == 128).all()  # class 1 is mid grey
    export_samples(ckpt, tmp_path / "pngs", 9, seed=1, fmt="png", class_names=["a", "b/c", "d"])
    folders = {p.name: sorted(q.name for q in p.iterdir()) for p in (tmp_path / "pngs").iterdir() if p.is_dir()}
    assert folders == {"a": ["000000.png", "000003.png", "000006.png"],
                       "b_c": ["000001.png", "000004.png", "000007.png"],
                       "d": ["000002.png", "000005.png", "000008.png"]}
    assert json.loads((tmp_path / "pngs" / "meta.json").read_text())["class_names"] == ["a", "b/c", "d"]
