"""A feature space learned from the real images themselves: a small SimCLR-style contrastive encoder.

The domain classifier (``ganlib.evaluation.classifier``) needs class labels and Inception needs
downloaded weights; a flat folder of unlabelled images has neither. So, once per dataset, a small
CNN is trained to tell apart the images of a batch from two randomly augmented views of each
(SimCLR, Chen et al. 2020: the NT-Xent loss; the views are made with the augmentations D sees,
``ganlib.training.augment``: translation, colour, cutout). Its pooled features (before the projection head,
as in SimCLR) are the space ``evaluate.py`` computes FD, KID, precision/recall, density/coverage
and memorisation in: the ``ssl_*`` columns.

The augmentations say what the space ignores: a small shift, a brightness/contrast change, a
square blanked out. Blur and noise are not among them, so they move an image in this space. (A
SimCLR-style random resized crop is left out on purpose: its bilinear upsampling blurs, and taught
the space to ignore blur; with it, slightly blurred shapes scored as well as real ones.)

Conventions: images fed to the model are float (N, C, H, W) in [-1, 1]; stored images are uint8.
Training keeps the images on the target device; all randomness comes from seeded generators
inside ``torch.random.fork_rng``, so it is bit-for-bit reproducible on the CPU and leaves the
caller's random streams untouched.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.errors import CheckpointError, first_line
from ganlib.runs.files import atomic_torch_save
from ganlib.sampling import to_unit_range
from ganlib.training.augment import diff_augment

__all__ = ["ContrastiveEncoder", "train_encoder", "embed", "save_encoder", "load_encoder", "AUGMENT_POLICY"]

_FILE_FORMAT = "ganlib.contrastive_encoder"
_FILE_VERSION = 1
# What D sees (DiffAugment's full policy).
AUGMENT_POLICY = ("translation", "color", "cutout")
_HEAD_GRID = 4
# Never more passes over the data than this: a small dataset (a test's 400 images) trains in seconds,
# and more epochs on it would only memorise it.
MAX_EPOCHS = 20


def _conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True))


class ContrastiveEncoder(nn.Module):
    """Small CNN encoder with a projection head (used only in training).

    ``[64 px and up: average pool to about 32 px] conv16 - maxpool2 - conv32 - maxpool2 - conv64 -
    adaptive avg pool 4x4 - Linear(1024 -> feature_dim)`` (3x3 convs with BatchNorm and ReLU) is the
    representation; the head
    ``BN - ReLU - Linear(feature_dim -> 64)`` feeds the contrastive loss.

    Args:
        in_channels: image channels (1 or 3 in practice).
        image_size: square image side.
        feature_dim: width of the representation.
    """

    def __init__(self, in_channels: int, image_size: int, feature_dim: int = 128) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.feature_dim = in_channels, image_size, feature_dim
        stem: nn.Module = nn.AvgPool2d(image_size // 32) if image_size >= 64 else nn.Identity()
        self.trunk = nn.Sequential(
            # One narrow conv at full resolution, pooled before its BatchNorm (the classifier's trick:
            # on the CPU a layer's cost is its pixel count).
            stem, nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(16),
            nn.ReLU(True), _conv(16, 32), nn.MaxPool2d(2), _conv(32, 64),
            nn.AdaptiveAvgPool2d(_HEAD_GRID), nn.Flatten(), nn.Linear(64 * _HEAD_GRID * _HEAD_GRID, feature_dim),
        )
        self.head = nn.Sequential(nn.BatchNorm1d(feature_dim), nn.ReLU(True), nn.Linear(feature_dim, 64))
        self.trunk.to(memory_format=torch.channels_last)  # faster convolutions on the CPU (oneDNN)

    def config(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "feature_dim": self.feature_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The representation (N, feature_dim) of float images (N, C, H, W) in [-1, 1]."""
        return self.trunk(x.contiguous(memory_format=torch.channels_last))


def augment_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of float images (N, C, H, W) in [-1, 1]: D's augmentations."""
    return diff_augment(x, AUGMENT_POLICY, generator)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner out of the other 2N - 2 views of the batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def train_encoder(
    images: torch.Tensor,
    *,
    num_steps: int = 500,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """Train a :class:`ContrastiveEncoder` on real images (no labels).

    Args:
        images: uint8 (N, C, H, W), square, N >= 2.
        num_steps: optimisation steps, capped at ``MAX_EPOCHS`` passes over the images.
        batch_size: images per step (each seen in two views), capped at N.
        lr: peak Adam learning rate, cosine decay to 0.
        temperature: of the NT-Xent loss.
        seed: seeds weights, batches and augmentations; the caller's RNG state is left untouched.
        device: where to train.
        on_log: called about every 50 steps and at the end with ``{"step", "num_steps", "loss",
            "seconds"}`` (plain numbers; loss averaged since the previous call).

    Returns:
        ``(model, info)``: the model in eval mode on ``device`` and ``{"train_steps", "num_images",
        "final_loss", "view_match", "seconds"}``; ``view_match`` is the share of up to 512 images
        whose second view is the nearest (cosine) of all second views to their first view, on fresh
        augmentations: 1/512 by chance, near 1 when the space tells images apart.
    """
    started = time.perf_counter()
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {getattr(images, 'shape', images)!r}")
    n, c, h, w = images.shape
    if h != w or n < 2:
        raise ValueError(f"images must be square and at least 2, got shape {tuple(images.shape)}")
    bs = min(batch_size, n)
    num_steps = max(1, min(num_steps, math.ceil(MAX_EPOCHS * n / bs)))
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        data = images.to(device)
        model = ContrastiveEncoder(c, h).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
        perm, cursor = torch.randperm(n, generator=gen, device=device), 0
        loss_sum, loss_count, last = torch.zeros((), device=device), 0, float("nan")
        for step in range(num_steps):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / num_steps))
            if cursor + bs > n:
                perm, cursor = torch.randperm(n, generator=gen, device=device), 0
            x = to_unit_range(data[perm[cursor: cursor + bs]])
            cursor += bs
            views = torch.cat([augment_view(x, gen), augment_view(x, gen)])
            z = model.head(model(views))
            loss = nt_xent(z[:bs], z[bs:], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            loss_count += 1
            if (step + 1) % 50 == 0 or step + 1 == num_steps:
                last = float(loss_sum) / loss_count
                if on_log is not None:
                    on_log({"step": step + 1, "num_steps": num_steps, "loss": last,
                            "seconds": time.perf_counter() - started})
                loss_sum.zero_()
                loss_count = 0
        model.eval()
        with torch.no_grad():
            x = to_unit_range(data[torch.randperm(n, generator=gen, device=device)[:512]])
            a = F.normalize(model(augment_view(x, gen)), dim=1)
            b = F.normalize(model(augment_view(x, gen)), dim=1)
            view_match = float(((a @ b.T).argmax(dim=1) == torch.arange(len(x), device=device)).float().mean())
    info = {"train_steps": num_steps, "num_images": n, "final_loss": last, "view_match": view_match,
            "seconds": time.perf_counter() - started}
    return model, info


@torch.no_grad()
def embed(model: ContrastiveEncoder, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Representations (N, feature_dim) float32 on the CPU of float images (N, C, H, W) in [-1, 1]."""
    if model.training:
        raise ValueError("embed needs the model in eval mode; call model.eval() first")
    param = next(model.parameters())
    out = [model(images[i: i + batch_size].to(param.device, param.dtype)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.feature_dim)


def save_encoder(model: ContrastiveEncoder, meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write an encoder (constructor args, weights, ``meta``: plain numbers and strings) atomically."""
    payload = {"format": _FILE_FORMAT, "version": _FILE_VERSION, "config": model.config(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}
    atomic_torch_save(payload, Path(path))


def load_encoder(path: str | os.PathLike[str], device: str | torch.device) -> tuple[ContrastiveEncoder, dict[str, Any]]:
    """Load an encoder written by :func:`save_encoder`: ``(model in eval mode on device, meta)``.

    Raises ``CheckpointError`` (one line, saying to delete the file) when it is corrupt or not an encoder.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=torch.device(device), weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError("not a ganlib contrastive encoder file")
        if payload.get("version") != _FILE_VERSION:
            raise ValueError(f"unsupported encoder file version {payload.get('version')!r}")
        model = ContrastiveEncoder(**payload["config"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"self-supervised encoder file {path} is corrupt or unreadable "
                              f"({first_line(exc)[:200]}); delete it so the encoder is retrained") from exc
    return model.to(device).eval(), payload["meta"]
