"""Sampling from a trained generator, shared by training, evaluation and rendering.

- ``load_generator``: a checkpoint's G (its EMA by default), rebuilt from the checkpoint alone;
- ``fixed_noise`` / ``class_rows``: latents that are the same for the same seed on any machine;
- ``truncate``: the truncation trick, typical images for variety;
- ``generate``: images from latents, in batches;
- ``to_uint8`` / ``to_unit_range``: the one pair of conversions between float [-1, 1] (G's tanh) and
  uint8 [0, 255] (stores, PNGs, sample files).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganlib.errors import CheckpointError, first_line
from ganlib.models import build_models
from ganlib.runs import checkpoint as ckpt


def fixed_noise(num: int, noise_dim: int, seed: int) -> torch.Tensor:
    """Latents (num, noise_dim) float32 on the CPU, the same for the same seed on any machine."""
    return torch.randn(num, noise_dim, generator=torch.Generator().manual_seed(seed))


def truncate(z: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """The truncation trick (Brock, Donahue and Simonyan, BigGAN, ICLR 2019): latents from the standard normal
    cut off at ``threshold`` standard deviations, which trades variety for typical, cleaner images.

    BigGAN redraws every coordinate beyond the cut-off; here each coordinate is mapped to the same quantile of
    the truncated normal instead (z -> F_t^-1(Phi(z))): the same distribution, but deterministic and per
    coordinate, so image i of a seed stays image i, drawn towards the typical whatever the threshold (and
    whatever the number of images), and a large threshold gives the latents back. None: ``z`` unchanged.
    """
    if threshold is None:
        return z
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and math.isfinite(threshold)
                                            and threshold > 0):
        raise ValueError(f"truncation: a cut-off above 0 in standard deviations (e.g. 1.0), not {threshold!r}")
    def lower_tail(a: torch.Tensor) -> torch.Tensor:  # Phi(-a) for a >= 0, precise far out (torch's ndtr is not)
        return 0.5 * torch.special.erfc(a / math.sqrt(2))

    t = torch.tensor(float(threshold), dtype=torch.float64)
    x = z.double()
    edge = lower_tail(t)  # the normal's mass below -t
    # Through the lower tail, Phi(-|z|), which keeps its precision where Phi(z) rounds to 1; then the sign back.
    magnitude = -torch.special.ndtri(edge + lower_tail(x.abs()) * (1 - 2 * edge))
    return torch.copysign(magnitude.clamp(0.0, float(threshold)), x).to(z.dtype)


def is_conditional(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint's generator is class-conditional, i.e. is called as ``generator(z, labels)``.

    ``meta`` is ``load_generator``'s metadata. No conditional model exists yet (issue #4): this
    reads ``config.model.conditional``, the flag that issue is expected to add; if it names the
    flag differently, this is the one function to change.
    """
    model = (meta.get("config") or {}).get("model") or {}
    return bool(model.get("conditional", False)) and int(meta.get("num_classes") or 0) > 1


def class_names_for(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Display names of classes 0..num_classes-1: ``names`` when it fits, else the indices."""
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(k) for k in range(num_classes)]


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 500,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images (N, C, H, W) float in [-1, 1] on the CPU from latents z (N, noise_dim), in batches.

    ``labels`` (N,) int64 class indices, for a class-conditional generator only (called as
    ``generator(z, labels)``). The generator must be in eval mode (batch norm then uses its running
    statistics, so an image does not depend on which other images share its batch).
    """
    device = next(generator.parameters()).device
    out = []
    for i in range(0, len(z), batch_size):
        zb = z[i: i + batch_size].to(device)
        images = generator(zb) if labels is None else generator(zb, labels[i: i + batch_size].to(device))
        out.append(images.float().cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to nearest."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def class_rows(num_per_row: int, noise_dim: int, seed: int,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and labels for a conditional grid: one row per class, the same latent down each column.

    Returns z (num_classes * num_per_row, noise_dim) float32 and labels (same N,) int64, row-major,
    so column j shows what latent j becomes in every class: style held fixed, class varied.
    """
    z = fixed_noise(num_per_row, noise_dim, seed).repeat(num_classes, 1)
    labels = torch.arange(num_classes).repeat_interleave(num_per_row)
    return z, labels



def to_unit_range(images_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range of the generator's tanh (the inverse of ``to_uint8``).

    A NumPy array (a memory-mapped store, say) is copied into a new tensor first.
    """
    x = images_uint8 if isinstance(images_uint8, torch.Tensor) else torch.from_numpy(np.array(images_uint8))
    return x.float().div_(127.5).sub_(1.0)


def load_generator(path: Path, device: str | torch.device = "cpu", use_ema: bool = True
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The generator of a checkpoint, in eval mode on ``device``, and the checkpoint's metadata.

    With ``use_ema`` the moving-average weights are used when the checkpoint has them.
    Metadata: ``step``, ``config`` (dict), ``image_shape`` [C, H, W], ``num_classes``, ``weights``
    ('ema' or 'raw').
    """
    from ganlib.config import ModelConfig

    state = ckpt.load_checkpoint(path, map_location="cpu")  # then only G goes to the device, not D and Adam's
    channels, size, _ = state["image_shape"]
    with torch.random.fork_rng(devices=[]):
        generator, _ = build_models(ModelConfig.model_validate(state["config"]["model"]), channels, size,
                                    state["num_classes"])
    weights = "ema" if use_ema and "generator_ema" in state else "raw"
    try:
        generator.load_state_dict(state["generator_ema" if weights == "ema" else "generator"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {first_line(err)}") from None
    generator.to(device).eval()
    meta = {k: state[k] for k in ("step", "config", "image_shape", "num_classes")}
    return generator, {**meta, "weights": weights}

