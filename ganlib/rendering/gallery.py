"""What a run's ``gallery/`` holds: grids, samples, a timelapse, latent interpolation, exported samples.

What a run's ``gallery/`` holds, and which function makes it:

- ``grid_5x5.png``, ``grid_10x10.png``, ``samples.npz``: the best checkpoint (``make_gallery``);
- ``steps/step_NNNNNN.png``: one fixed-noise 8x8 grid per checkpoint (``render_step_grids``);
- ``progress.gif``: the step grids as a timelapse, the classic view of a GAN learning
  (``save_timelapse``);
- ``interpolation.png``, ``interpolation.gif``: spherical interpolation between fixed latents at
  the best checkpoint (``make_interpolation``).

Pictures are drawn by ``ganlib.rendering.pictures`` (pure: images in, file out). Anything compared
across checkpoints uses fixed latents from ``ganlib.sampling.fixed_noise``, each use with its own seed
offset so the gallery, the evaluation and training never share noise. Functions that load a
checkpoint take ``use_ema``: render the generator's exponential moving average when the checkpoint
keeps one (as the evaluation scores it), else the raw weights; the returned records say which
(``weights``).

For a class-conditional checkpoint (``ganlib.sampling.is_conditional``) the grids become one row per
class, labelled, with the latent fixed down each column.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ganlib.errors import CheckpointError
from ganlib.rendering.pictures import add_caption, grid_picture, save_gif, save_grid, save_samples
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.device import fitting_batches
from ganlib.runs.files import atomic_write_json
from ganlib.runs.paths import RunDir
from ganlib.sampling import (
    class_names_for,
    class_rows,
    fixed_noise,
    generate,
    is_conditional,
    load_generator,
    to_uint8,
    to_unit_range,
    truncate,
)

log = logging.getLogger("ganlib")

# Latent seeds are the run's gallery seed plus an offset per use, so that no two pictures (nor the
# evaluation, which uses 1_000_003) share noise by accident.
GALLERY_NOISE_OFFSET = 2_000_003  # grid_5x5, grid_10x10, samples.npz (and flows/generate.py by default)
STEPS_NOISE_OFFSET = 3_000_017  # the per-checkpoint grids and the timelapse
INTERPOLATION_NOISE_OFFSET = 4_000_037  # the interpolation anchors

STEP_GRID_SIDE = 8  # 8x8 fixed-noise grid per checkpoint (DCGAN's classic view)
GIF_WIDTH_PX = 520  # the GIFs' frames are at most about this wide: small enough to embed in the report

# gallery.num_samples unset: samples.npz holds GALLERY_SAMPLES images, or as many (in hundreds) as fit in
# GALLERY_SAMPLES_MIB of pixels: 10,000 of 28-px digits are 7.5 MiB and of 64-px RGB 117 MiB, but of 128-px
# RGB 469 MiB and of 256-px RGB 1.8 GiB, written (and compressed, minutes) after every run. flows/generate.py
# makes any number from the same latents.
GALLERY_SAMPLES = 10_000
GALLERY_SAMPLES_MIB = 256


def gallery_sample_count(image_shape: Sequence[int]) -> int:
    """How many images samples.npz holds when ``gallery.num_samples`` is not given, for images (C, H, W): at
    least 100 (the 10x10 grid's), even where those pass the budget (above about 1,600 px)."""
    fit = GALLERY_SAMPLES_MIB * 2**20 // math.prod(image_shape) // 100 * 100
    return max(100, min(GALLERY_SAMPLES, fit))


# --- the best checkpoint's gallery ----------------------------------------------------------------

def make_gallery(checkpoint_path: Path, gallery_dir: Path, num_samples: int | None, seed: int,
                 device: str | torch.device = "cpu", batch_size: int = 500,
                 class_names: Sequence[str] | None = None, use_ema: bool = True) -> dict[str, Any]:
    """From one checkpoint: ``grid_5x5.png``, ``grid_10x10.png`` and ``samples.npz`` in ``gallery_dir``.

    The grids use the first 25 / 100 of the same fixed latents (seed ``seed`` + offset), so the 5x5
    grid is the top-left corner of the 10x10 one. ``samples.npz`` holds ``images`` uint8
    (N, C, H, W) and the ``seed`` and checkpoint ``step`` that made them; ``num_samples`` None: as many as
    ``gallery_sample_count`` allows for the checkpoint's image size. A conditional checkpoint
    gets one row per class in ``grid_10x10.png`` and balanced ``labels`` (N,) in the npz.
    ``use_ema``: render the generator's moving average when the checkpoint keeps one.
    """
    generator, meta = load_generator(checkpoint_path, device, use_ema=use_ema)
    noise_dim = meta["config"]["model"]["noise_dim"]
    gallery_seed = seed + GALLERY_NOISE_OFFSET
    gallery_dir = Path(gallery_dir)
    if num_samples is None:
        num_samples = gallery_sample_count(meta["image_shape"])
        if num_samples < GALLERY_SAMPLES:
            c, h, w = meta["image_shape"]
            log.info("gallery: %s samples of %dx%d px in samples.npz (at most %d MiB of pixels; --gallery-samples "
                     "N for more, or flows/generate.py -n N)", f"{num_samples:,}", h, w, GALLERY_SAMPLES_MIB)
    z = fixed_noise(max(num_samples, 100), noise_dim, gallery_seed)
    labels = None
    extra: dict[str, Any] = {}
    if is_conditional(meta):
        labels = torch.arange(len(z)) % meta["num_classes"]  # balanced: class k at every K-th index
        extra["labels"] = labels[:num_samples].numpy()
    # uint8, a batch at a time: a float copy of every sample is 7.9 GB for 10,000 RGB images of 256 px. The
    # grids' pixels are the same from uint8 (to_uint8 rounds as grid_picture does; to_unit_range takes it back).
    def make(start: int, stop: int) -> torch.Tensor:
        return to_uint8(generate(generator, z[start:stop], stop - start,
                                 None if labels is None else labels[start:stop]))

    images = torch.cat(list(fitting_batches(len(z), batch_size, make, f"gallery: {Path(checkpoint_path).name}",
                                            "--eval-batch-size {n}")))
    grid5 = save_grid(to_unit_range(images[:25]), gallery_dir / "grid_5x5.png", nrow=5)
    if labels is None:
        grid10 = save_grid(to_unit_range(images[:100]), gallery_dir / "grid_10x10.png", nrow=10)
    else:
        names = class_names_for(meta["num_classes"], class_names)
        zc, yc = class_rows(10, noise_dim, gallery_seed, meta["num_classes"])
        grid10 = save_grid(generate(generator, zc, batch_size, yc), gallery_dir / "grid_10x10.png", nrow=10,
                           row_labels=names)
    samples = save_samples(images[:num_samples], gallery_dir / "samples.npz",
                           seed=gallery_seed, step=meta["step"], checkpoint=Path(checkpoint_path).name,
                           weights=meta.get("weights", "raw"), **extra)
    return {"grid_5x5": str(grid5), "grid_10x10": str(grid10), "samples": str(samples),
            "num_samples": num_samples, "seed": gallery_seed, "step": meta["step"],
            "checkpoint": Path(checkpoint_path).name, "weights": meta.get("weights", "raw")}


# --- one grid per checkpoint, and the timelapse -----------------------------------------------------

def step_grid_images(generator: nn.Module, meta: dict[str, Any], seed: int, side: int = STEP_GRID_SIDE,
                     class_names: Sequence[str] | None = None,
                     batch_size: int = 500) -> tuple[torch.Tensor, int, list[str] | None]:
    """The fixed-noise grid of one checkpoint: images (N, C, H, W) in [-1, 1], images per row, row labels.

    Unconditional: side x side images from latents of seed ``seed`` + offset, no labels. The same
    seed gives the same latents for every checkpoint, so grids of different steps compare cell by
    cell. Conditional: one row of ``side`` images per class, labelled with the class names.
    """
    noise_dim = meta["config"]["model"]["noise_dim"]
    latent_seed = seed + STEPS_NOISE_OFFSET
    if not is_conditional(meta):
        return generate(generator, fixed_noise(side * side, noise_dim, latent_seed), batch_size), side, None
    z, labels = class_rows(side, noise_dim, latent_seed, meta["num_classes"])
    return (generate(generator, z, batch_size, labels), side,
            class_names_for(meta["num_classes"], class_names))


STEPS_INDEX = "index.json"


def render_step_grids(checkpoints_dir: Path, steps_dir: Path, seed: int, device: str | torch.device = "cpu",
                      class_names: Sequence[str] | None = None, batch_size: int = 500,
                      use_ema: bool = True) -> list[tuple[int, Path]]:
    """Render ``steps_dir/step_NNNNNN.png`` for every checkpoint; return (step, path), oldest first.

    A grid is redrawn only when its checkpoint's checksum or the settings changed (recorded in
    ``steps_dir/index.json``), so a resumed run or a retried stage renders only new checkpoints.
    Grids whose checkpoint is gone (moved aside as corrupt) are deleted: ``steps/`` mirrors
    ``checkpoints/``. A checkpoint that does not load is skipped with a warning: a picture is not
    worth failing a run for.
    """
    steps_dir = Path(steps_dir)
    index_path = steps_dir / STEPS_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    settings = {"seed": seed, "side": STEP_GRID_SIDE, "class_names": list(class_names or []),
                "use_ema": use_ema, "version": 1}
    done: list[tuple[int, Path]] = []
    changed = False
    for step, path in ckpt.list_checkpoints(checkpoints_dir):
        out = steps_dir / f"{path.stem}.png"
        sidecar = path.with_name(path.name + ".sha256")
        record = {"sha256": sidecar.read_text().strip() if sidecar.is_file() else "", **settings}
        if record["sha256"] and out.is_file() and index.get(out.name) == record:
            done.append((step, out))
            continue
        try:
            generator, meta = load_generator(path, device, use_ema=use_ema)
        except CheckpointError as err:
            log.warning("gallery: skipping %s: %s", path.name, err)
            continue
        images, nrow, labels = step_grid_images(generator, meta, seed, class_names=class_names,
                                                batch_size=batch_size)
        save_grid(images, out, nrow=nrow, row_labels=labels)
        index[out.name], changed = record, True
        done.append((step, out))
    current = {p.name for _, p in done}
    for stale in steps_dir.glob("step_*.png") if steps_dir.is_dir() else []:
        if stale.name not in current:
            stale.unlink(missing_ok=True)
            index.pop(stale.name, None)
            changed = True
    if changed:
        atomic_write_json(index_path, index)
    return done


def save_timelapse(step_grids: Sequence[tuple[int, Path]], path: Path, max_frames: int = 60,
                   frame_ms: int = 500, hold_last_ms: int = 2500, max_width_px: int = GIF_WIDTH_PX) -> Path:
    """The per-checkpoint grids as a looping GIF, each frame captioned with its step.

    At most ``max_frames`` frames (evenly spaced, always keeping the first and the last); the last
    is held ``hold_last_ms`` so the loop ends on the final result. Frames are shrunk by an integer
    factor to at most about ``max_width_px`` wide (box filter: exact for the enlarged cells), which
    keeps the GIF small enough to embed in the report.
    """
    if not step_grids:
        raise ValueError("save_timelapse: no step grids")
    picks = np.linspace(0, len(step_grids) - 1, min(max_frames, len(step_grids))).round().astype(int)
    chosen = [step_grids[i] for i in np.unique(picks)]
    last = chosen[-1][0]
    frames = []
    size: tuple[int, int] | None = None
    for step, grid_path in chosen:
        with Image.open(grid_path) as im:
            picture = im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode)
        factor = max(1, math.ceil(picture.width / max_width_px))
        if size is None:
            size = (picture.width // factor, picture.height // factor)
        picture = picture.resize(size, Image.BOX)  # one size for all frames, whatever the source
        frames.append(add_caption(picture, f"step {step:,} / {last:,}"))
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    return save_gif(frames, path, durations)


# --- latent interpolation ------------------------------------------------------------------------

def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents z0, z1 (N, D) at fractions t (T,) in [0, 1]: (N, T, D).

    Why not a straight line: a Gaussian latent in D dimensions lives near the sphere of radius
    sqrt(D), and the midpoint of two such latents is much shorter (about sqrt(D/2) for independent
    ones), a region the generator never saw in training, so linear paths fade to a blurry average
    mid-way. Following the great circle keeps the norm on that shell (Tom White, "Sampling
    Generative Networks", 2016). t = 0 gives z0 and t = 1 gives z1 exactly; nearly parallel
    latents fall back to linear interpolation.
    """
    a = z0 / z0.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = z1 / z1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = torch.acos((a * b).sum(-1).clamp(-1.0, 1.0))[:, None, None]  # (N, 1, 1) angle between them
    sin_omega = torch.sin(omega)
    t = t.to(z0.dtype)[None, :, None]  # (1, T, 1)
    parallel = sin_omega.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_omega), sin_omega)
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / safe)
    w1 = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return w0 * z0[:, None, :] + w1 * z1[:, None, :]


def loop_path(anchors: torch.Tensor, frames_per_segment: int) -> torch.Tensor:
    """A closed slerp path through anchors (K, N, D): (K * frames_per_segment, N, D).

    Segment k runs from anchor k towards anchor k+1 (the last back to the first) and omits its end
    point, which is the next segment's start, so a GIF of it loops without a repeated frame.
    """
    t = torch.arange(frames_per_segment, dtype=anchors.dtype) / frames_per_segment
    segments = [slerp(anchors[k], anchors[(k + 1) % len(anchors)], t).transpose(0, 1)
                for k in range(len(anchors))]
    return torch.cat(segments)


def make_interpolation(checkpoint_path: Path, gallery_dir: Path, seed: int,
                       device: str | torch.device = "cpu", rows: int = 8, columns: int = 10,
                       gif_side: int = 4, gif_anchors: int = 4,
                       frames_per_segment: int = 12, frame_ms: int = 80, batch_size: int = 500,
                       class_names: Sequence[str] | None = None, use_ema: bool = True) -> dict[str, Any]:
    """Latent interpolation at one checkpoint: ``interpolation.png`` and ``interpolation.gif``.

    The PNG has ``rows`` rows; row r goes from one fixed latent (left) to another (right) along the
    great circle in ``columns`` steps: smooth, plausible changes mean the generator learned a
    continuous latent space; abrupt jumps or garbage mid-way mean it memorised or collapsed. The
    GIF is a ``gif_side`` x ``gif_side`` grid whose cells each loop through ``gif_anchors`` fixed
    latents, ``frames_per_segment`` frames per leg. Conditional checkpoints hold each row's / cell's
    class fixed (row r: class r mod K). Latents: seed ``seed`` + offset.
    """
    generator, meta = load_generator(checkpoint_path, device, use_ema=use_ema)
    noise_dim = meta["config"]["model"]["noise_dim"]
    gen = torch.Generator().manual_seed(seed + INTERPOLATION_NOISE_OFFSET)
    conditional = is_conditional(meta)
    num_classes = int(meta.get("num_classes") or 0)
    gallery_dir = Path(gallery_dir)

    ends = torch.randn(2, rows, noise_dim, generator=gen)
    z = slerp(ends[0], ends[1], torch.linspace(0, 1, columns)).reshape(rows * columns, noise_dim)
    row_classes = torch.arange(rows) % num_classes if conditional else None
    labels = row_classes.repeat_interleave(columns) if row_classes is not None else None
    row_labels = None
    if row_classes is not None:
        names = class_names_for(num_classes, class_names)
        row_labels = [names[int(c)] for c in row_classes]
    png = save_grid(generate(generator, z, batch_size, labels), gallery_dir / "interpolation.png",
                    nrow=columns, row_labels=row_labels)

    anchors = torch.randn(gif_anchors, gif_side * gif_side, noise_dim, generator=gen)
    path = loop_path(anchors, frames_per_segment)  # (F, cells, D)
    num_frames, cells = path.shape[:2]
    cell_labels = (torch.arange(cells) % num_classes).repeat(num_frames) if conditional else None
    images = generate(generator, path.reshape(num_frames * cells, noise_dim), batch_size, cell_labels)
    # Cells at 2x (56 px for 28-pixel images): enough to see. Not wider than GIF_WIDTH_PX in all, so that it
    # embeds in the report: 128-px images at 2x made 30 MB of GIF; they stay at 1x, 256-px ones shrink to 1/2.
    side = images.shape[-1]
    cell_px = 2 * side if gif_side * 2 * side <= GIF_WIDTH_PX else side
    shrink = max(1, math.ceil(gif_side * side / GIF_WIDTH_PX)) if cell_px == side else 1
    frames = []
    for f in range(num_frames):
        picture = grid_picture(images[f * cells: (f + 1) * cells], nrow=gif_side, min_cell_px=cell_px)
        frames.append(picture.resize((picture.width // shrink, picture.height // shrink), Image.BOX)
                      if shrink > 1 else picture)
    gif = save_gif(frames, gallery_dir / "interpolation.gif", frame_ms)
    return {"interpolation_png": str(png), "interpolation_gif": str(gif), "interpolation_step": meta["step"],
            "interpolation_seed": seed + INTERPOLATION_NOISE_OFFSET}


# --- exporting many samples (flows/generate.py) ---------------------------------------------------

def resolve_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint of a run that ``which`` names; ``CheckpointError`` (one line) if there is none.

    ``which``: ``best`` (marked in ``metrics/eval.parquet``), ``latest``, a step (``1000``), a file
    name in ``checkpoints/`` (``step_001000.pt``), or a path to a checkpoint file.
    """
    run = RunDir(run_dir)
    checkpoints_dir = run.checkpoints
    found = ckpt.list_checkpoints(checkpoints_dir)
    if which == "best":
        table = run.read_table(run.eval_metrics, f"score the run again with flows/evaluate.py --run-id {run.root.name}"
                                                 ", or name a checkpoint (--checkpoint latest or a step)")
        if table is None:
            raise CheckpointError(f"run {run.root} has no evaluation ({run.eval_metrics} is missing), so no best "
                                  "checkpoint; evaluate it first or name one (--checkpoint latest or a step)")
        path = checkpoints_dir / str(table.loc[table["best"], "checkpoint"].iloc[-1])
    elif which == "latest":
        if not found:
            raise CheckpointError(f"run {run.root} has no checkpoints in {checkpoints_dir}; train it first")
        path = found[-1][1]
    elif which.isdigit():
        path = run.checkpoint(int(which))
    elif Path(which).is_file():
        path = Path(which)
    else:
        path = checkpoints_dir / which
    if not path.is_file():
        steps = ", ".join(str(s) for s, _ in found) or "none"
        raise CheckpointError(f"checkpoint {which!r} not found: {path} does not exist (steps saved: {steps})")
    return path


def _safe_name(text: str) -> str:
    """A class name as a folder name: letters, digits, '.', '_', '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "class"


def export_samples(checkpoint_path: Path, dest: Path, num_samples: int, seed: int, fmt: str = "npz",
                   device: str | torch.device = "cpu", batch_size: int = 500,
                   class_names: Sequence[str] | None = None, use_ema: bool = True,
                   flag: str = "batch_size={n}", truncation: float | None = None) -> dict[str, Any]:
    """Generate ``num_samples`` images from a checkpoint into ``dest``: an npz file or a PNG folder.

    Latents are ``fixed_noise(num_samples, noise_dim, seed)`` (the ``seed`` is the latent seed
    itself and is recorded), so the same call reproduces the same images, and image i has the
    same latent whatever ``num_samples`` is (its pixels may differ by a rounding step when the batch
    size differs: convolutions sum in a different order). Conditional checkpoints get balanced labels (image i is class
    i mod K). ``truncation``: the truncation trick's cut-off (``ganlib.sampling.truncate``), recorded with the
    images; image i is then image i of the same seed drawn towards the typical.

    - ``fmt="npz"``: ``dest`` (a .npz file) with ``images`` uint8 (N, C, H, W), ``seed``, ``step``,
      ``checkpoint`` and, when conditional, ``labels`` (N,) int64 and ``class_names``.
    - ``fmt="png"``: ``dest`` (a folder) with ``000000.png`` ... (conditional: ``<class>/000000.png``)
      and ``meta.json`` (seed, step, checkpoint, weights, count). The folder appears complete or not
      at all (built under a temporary name, then renamed); an existing one is replaced.

    Generates and writes in batches (halved where one does not fit the GPU: a warning says how to start there,
    ``flag`` with ``{n}`` for the size), so memory stays at one batch whatever ``num_samples`` is.
    """
    if fmt not in ("npz", "png"):
        raise ValueError(f"fmt: 'npz' or 'png', not {fmt!r}")
    checkpoint_path, dest = Path(checkpoint_path), Path(dest)
    generator, meta = load_generator(checkpoint_path, device, use_ema=use_ema)
    noise_dim = meta["config"]["model"]["noise_dim"]
    conditional = is_conditional(meta)
    names = class_names_for(int(meta.get("num_classes") or 0), class_names) if conditional else None
    z = truncate(fixed_noise(num_samples, noise_dim, seed), truncation)
    labels = torch.arange(num_samples) % meta["num_classes"] if conditional else None
    record: dict[str, Any] = {"seed": seed, "step": int(meta["step"]), "checkpoint": checkpoint_path.name,
                              "weights": meta.get("weights", "raw"), "num_samples": num_samples,
                              "format": fmt, "path": str(dest), "truncation": truncation}

    def make(start: int, stop: int) -> torch.Tensor:
        return to_uint8(generate(generator, z[start:stop], stop - start,
                                 None if labels is None else labels[start:stop]))

    what = f"generating {num_samples} images from {checkpoint_path.name}"
    if fmt == "npz":
        chunks = list(fitting_batches(num_samples, batch_size, make, what, flag))
        extra = {"labels": labels.numpy(), "class_names": np.asarray(names)} if labels is not None else {}
        if truncation is not None:
            extra["truncation"] = truncation
        save_samples(torch.cat(chunks), dest, seed=seed, step=meta["step"], checkpoint=checkpoint_path.name,
                     weights=record["weights"], **extra)
        return record

    if names is not None:
        record["class_names"] = names
    # The folder is built under a hidden temporary name and renamed into place when complete: the
    # same all-or-nothing guarantee as ``atomic_path`` gives one file, for the whole folder, at the
    # cost of one sync instead of two fsyncs per image (10,000 PNGs: ~2 s instead of ~60 s).
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        k = 0  # the image's index
        for images in fitting_batches(num_samples, batch_size, make, what, flag):
            for image in images.numpy():
                name = f"{k:06d}.png" if names is None else f"{_safe_name(names[int(labels[k])])}/{k:06d}.png"
                (tmp / name).parent.mkdir(exist_ok=True)
                picture = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
                picture.save(tmp / name, format="PNG")
                k += 1
        naming = ("NNNNNN.png = image index" if names is None
                  else "<class>/NNNNNN.png = image index; class = index mod K")
        atomic_write_json(tmp / "meta.json", {**record, "files": num_samples, "naming": naming})
        os.sync()  # every image on disk before the rename makes the folder visible
        if dest.exists():  # a previous export of the same name: swap, then delete it
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        os.sync()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
