"""DINOv2 ViT features for FD, KID and the k-NN metrics, from a weights file the user supplies.

Stein et al. 2023 ("Exposing flaws of generative model evaluation metrics") found FD in DINOv2
features agrees with people better than Inception's FID; this is their feature: the CLS token after
the final norm, of images resized to 224 px (bicubic) and normalised with ImageNet's mean and std.

The network is a plain-PyTorch copy of Meta's DINOv2 backbones (``facebookresearch/dinov2``,
``DinoVisionTransformer``): ViT-S/14, B/14 and L/14, with or without register tokens, whose
``state_dict`` keys are exactly those of the official ``dinov2_vit*14*_pretrain.pth`` files. The
variant is read from the file's shapes (every DINOv2 backbone has 64-d attention heads). ViT-g/14
(a SwiGLU feed-forward) is refused. Nothing is downloaded: the file comes from
``eval.dinov2_weights``, is checked against ``eval.dinov2_weights_sha256`` and read with
``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.config import EvalConfig
from ganlib.errors import CheckpointError
from ganlib.evaluation.weights import read_checked_state_dict
from ganlib.runs.files import atomic_torch_save, sha256_file
from ganlib.sampling import to_uint8

log = logging.getLogger("ganlib")

FEATURE_SPACE = "dinov2"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
IMAGE_SIZE = 224  # the resolution of the dinov2 evaluation code that Stein et al. use
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64  # every DINOv2 backbone's attention head width: the head count follows from the width
LAYER_NORM_EPS = 1e-6
BATCH_SIZE = 64  # 224-px images through a ViT: small batches keep the memory small
PROGRESS_EVERY_S = 30
# (width, depth) of the official backbones; other shapes load too (tests use tiny ones), named by their shape.
VARIANTS = {(384, 12): "vits14", (768, 12): "vitb14", (1024, 24): "vitl14", (1536, 40): "vitg14"}


# --- the network ------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads).unbind(2)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """A DINOv2 ViT backbone (official key names); ``forward`` maps normalised images (N, 3, H, W),
    H and W multiples of the patch size, to the final-norm CLS token (N, dim).

    ``pos_grid``: the position embeddings' grid (37 for the official 518-px training resolution);
    ``num_registers``: 0, or 4 for the ``_reg`` checkpoints (extra tokens after the CLS token, which
    also change how position embeddings are interpolated, as in Meta's code).
    """

    def __init__(self, dim: int = 384, depth: int = 12, num_heads: int = 6, patch_size: int = 14,
                 pos_grid: int = 37, num_registers: int = 0) -> None:
        super().__init__()
        self.patch_size, self.pos_grid, self.num_registers = patch_size, pos_grid, num_registers
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + pos_grid * pos_grid, dim) * 0.02)
        if num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used only in training; kept for the keys
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def position_embedding(self, grid: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid², dim) for a grid × grid patch input: the learned ones
        resized bicubically, exactly as ``DinoVisionTransformer.interpolate_pos_encoding`` does (with its
        0.1 offset on the scale factor, or, for register checkpoints, an antialiased resize to the size)."""
        if grid == self.pos_grid:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        patches = self.pos_embed[:, 1:].float().reshape(1, self.pos_grid, self.pos_grid, dim).permute(0, 3, 1, 2)
        if self.num_registers:
            patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True)
        else:
            scale = (grid + 0.1) / self.pos_grid
            patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic", antialias=False)
        assert patches.shape[-2:] == (grid, grid)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
        return torch.cat((self.pos_embed[:, :1].float(), patches), dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(len(tokens), -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embedding(grid)
        if self.num_registers:
            registers = self.register_tokens.expand(len(tokens), -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def variant_name(model: DinoV2) -> str:
    """'vits14', 'vitb14', 'vitl14' (+ '-reg4' with registers), or 'vit-d<dim>-l<depth>-p<patch>' for other shapes."""
    dim, depth = model.norm.weight.shape[0], len(model.blocks)
    name = VARIANTS.get((dim, depth)) if model.patch_size == 14 else None
    name = name or f"vit-d{dim}-l{depth}-p{model.patch_size}"
    return f"{name}-reg{model.num_registers}" if model.num_registers else name


def from_state_dict(state: dict[str, torch.Tensor], where: str = "the state dict") -> DinoV2:
    """The backbone whose shapes ``state`` has, loaded with it (strictly: every key, no other).

    A ``CheckpointError`` (one line) for a ViT-g/14 file, or one that is not a DINOv2 backbone.
    """
    if any(k.startswith("blocks.0.mlp.w12") for k in state):
        raise CheckpointError(f"{where} is DINOv2 ViT-g/14, whose SwiGLU feed-forward ganlib does not implement; "
                              "use the ViT-S/14, B/14 or L/14 file (dinov2_vits14_pretrain.pth, ...)")
    missing = [k for k in ("pos_embed", "patch_embed.proj.weight", "norm.weight") if k not in state]
    if missing:
        raise CheckpointError(f"{where} is not a DINOv2 backbone's state dict ({', '.join(missing)} missing); "
                              f"give the official file, e.g. {WEIGHTS_URL.rsplit('/', 1)[1]}")
    dim, _, patch_size, _ = state["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    pos_grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    num_registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    if dim % HEAD_DIM:
        raise CheckpointError(f"{where}: width {dim} is not a multiple of DINOv2's {HEAD_DIM}-d attention heads; "
                              "give an official DINOv2 backbone file")
    model = DinoV2(dim, depth, dim // HEAD_DIM, patch_size, pos_grid, num_registers)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # lists every key: keep the first line
        reason = " ".join(str(err).split())[:240]
        raise CheckpointError(f"{where} does not fit a DINOv2 ViT ({reason})") from None
    return model


# --- the weights file -------------------------------------------------------------------------------

def read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` once its sha256 is ``sha256``; one-line ``ConfigError``/``CheckpointError``
    for a missing file, another hash, or bytes that are not a plain state dict."""
    return read_checked_state_dict(
        path, sha256, "eval.dinov2_weights", f"download it (e.g. {WEIGHTS_URL}) and give its path and "
        "`sha256sum` as eval.dinov2_weights_sha256", "a DINOv2 weights file", lambda state: None)


def check_weights_file(path: Path, sha256: str) -> str:
    """Check the file (hash, readable, a supported DINOv2 backbone) before any work; return its variant."""
    return variant_name(from_state_dict(read_weights(path, sha256), f"eval.dinov2_weights: {path}"))


@dataclass(frozen=True)
class Dinov2Net:
    """A loaded backbone, or why there is none (``status``: ``"ok"`` or ``"skipped: <reason>"``)."""

    model: DinoV2 | None
    status: str
    weights_sha256: str = ""
    variant: str = ""


def load_dinov2(cfg: EvalConfig, device: torch.device) -> Dinov2Net:
    """The backbone of ``eval.dinov2_weights`` on ``device`` in eval mode, or the reason it is skipped.

    Like Inception: 'off' skips; 'auto' computes on a GPU only (a ViT at 224 px takes many minutes
    per 10,000 images on a CPU); 'on' everywhere. Without a file there is nothing to compute: a skip,
    with one warning when the user asked for the space ('on') or gave a file that 'auto' leaves unused.
    """
    if cfg.dinov2 == "off":
        return Dinov2Net(None, "skipped: eval.dinov2 is 'off'")
    if cfg.dinov2_weights is None:
        status = ("skipped: no eval.dinov2_weights file; download one (e.g. dinov2_vits14_pretrain.pth) and give "
                  "it with eval.dinov2_weights_sha256 to compute the DINOv2 metrics")
        if cfg.dinov2 == "on":
            log.warning("evaluation: DINOv2 FD/KID %s", status)
        return Dinov2Net(None, status)
    if cfg.dinov2 == "auto" and device.type == "cpu":
        status = ("skipped: eval.dinov2 'auto' computes DINOv2 features on a GPU only; set it to 'on' to compute "
                  "them on this CPU (slow)")
        log.warning("evaluation: DINOv2 FD/KID %s", status)
        return Dinov2Net(None, status)
    sha256 = (cfg.dinov2_weights_sha256 or "").lower()
    model = from_state_dict(read_weights(cfg.dinov2_weights, sha256), f"eval.dinov2_weights: {cfg.dinov2_weights}")
    return Dinov2Net(model.to(device).eval(), "ok", sha256, variant_name(model))


# --- features ---------------------------------------------------------------------------------------

def to_dinov2_input(images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) float in [-1, 1], C in {1, 3} -> (N, 3, 224, 224) float, ImageNet-normalised.

    Quantised to uint8 first (what a saved image holds), resized bicubically with antialiasing (the
    kernel PIL uses) and clamped to [0, 1] (as an 8-bit resized image is), grey repeated to RGB.
    """
    x = to_uint8(images).float() / 255
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def dinov2_features(model: DinoV2, images: torch.Tensor, batch_size: int = BATCH_SIZE, progress: bool = True
                    ) -> torch.Tensor:
    """CLS features (N, dim) float32 on the CPU of images (N, C, H, W) in [-1, 1]; a progress line with
    the time left every ``PROGRESS_EVERY_S`` seconds (a CPU takes minutes) unless ``progress`` is False."""
    device = next(model.parameters()).device
    features = []
    started = last_line = time.perf_counter()
    for start in range(0, len(images), batch_size):
        features.append(model(to_dinov2_input(images[start: start + batch_size].to(device))).float().cpu())
        now, done = time.perf_counter(), min(start + batch_size, len(images))
        if progress and now - last_line >= PROGRESS_EVERY_S and done < len(images):
            last_line = now
            log.info("evaluation: DINOv2 features %d/%d images on %s (%.0f s, about %.0f s left)", done,
                     len(images), device.type, now - started, (now - started) / done * (len(images) - done))
    return torch.cat(features)


def write_random_weights(path: Path, dim: int = 64, depth: int = 2, pos_grid: int = 37, num_registers: int = 0,
                         seed: int = 0) -> str:
    """Save a randomly initialised backbone's state dict (official key names); return the file's sha256.

    For tests and timing only: its features mean nothing. ``dim`` a multiple of 64; ``dim=384, depth=12``
    is ViT-S/14's shape.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DinoV2(dim, depth, dim // HEAD_DIM, 14, pos_grid, num_registers)
        for p in model.parameters():  # LayerScale and the tokens start at constants: vary them too
            p.data.add_(torch.randn_like(p) * 0.02)
    atomic_torch_save(model.state_dict(), Path(path))
    return sha256_file(Path(path))
