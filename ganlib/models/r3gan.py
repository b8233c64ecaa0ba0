"""``r3gan``: a modern GAN baseline after R3GAN (Huang, Gokaslan, Kuleshov & Tompkin, NeurIPS 2024,
"The GAN is dead; long live the GAN! A Modern GAN Baseline"), written here in plain PyTorch.

What makes it R3GAN's design (and what it is trained with, see ``RECIPE`` in ``ganlib.models``):

- ResNet G and D with **no normalisation layers**: each residual block is 1x1 conv (expand) ->
  LeakyReLU -> grouped 3x3 conv -> LeakyReLU -> 1x1 conv (back), added to its input;
- **grouped convolutions** (ResNeXt-style cardinality): 16 channels per group in the expanded width;
- **fix-up style initialisation**: the last conv of every residual branch starts at zero, the others are
  scaled by (number of blocks)^(-1/4), so the whole network starts as an identity path plus a small
  perturbation and trains without normalisation;
- **bilinear resampling** between stages (G: bilinear x2 upsampling; D: the 2x2 mean, which is bilinear
  downsampling by exactly 2), with a 1x1 conv where the width changes;
- G starts from a learned 4x4 (7x7 for 28 px) basis modulated channel-wise by a linear map of z; D ends
  with a depthwise conv over the last 4x4 map and a linear layer (+ a projection head when conditional).

Trained with the relativistic pairing loss and R1 + R2 penalties (``train.loss rpgan``, ``train.r1``,
``train.r2``). Departures from the paper, for this project: G ends in tanh (every preset's images are in
[-1, 1]); residual blocks per stage set by ``model.blocks`` and widths by ``model.ngf`` / ``model.ndf``
(the width at the image resolution, doubling per halving up to 8x), by default one block and 16 channels on
a CPU (it trains at 32 px there) and the paper's two blocks and 64 channels on a GPU
(``ganlib.config.GPU_PRESET_DEFAULTS``). Every op is bf16-safe under autocast (no batch statistics, no
normalisation; the losses are computed in fp32 by the training step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.models.layers import project, projection

SIZES = (28, 32, 64, 128, 256)
CHANNELS_PER_GROUP = 16  # in the expanded width of each block's 3x3 conv
EXPANSION = 2
SLOPE = 0.2
GAIN = math.sqrt(2.0 / (1.0 + SLOPE**2))  # keeps activations' variance through LeakyReLU(0.2)


def _init(layer: nn.Conv2d | nn.Linear, gain: float) -> nn.Module:
    """He-style init std = gain / sqrt(fan_in) (gain 0: zeros), bias 0."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in)) if gain else nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def stage_sizes(image_size: int) -> list[int]:
    """The feature-map sides from the first stage to the image: [4, 8, 16, 32] for 32 px, [7, 14, 28] for 28."""
    start = 7 if image_size % 7 == 0 else 4
    return [start * 2**i for i in range(int(math.log2(image_size // start)) + 1)]


def stage_widths(image_size: int, base: int) -> list[int]:
    """Channels per stage (same order as ``stage_sizes``): ``base`` at the image size, doubling per halving
    of the side, at most 8 * base."""
    sizes = stage_sizes(image_size)
    return [base * min(8, image_size // s) for s in sizes]


class ResidualBlock(nn.Module):
    """x + conv1x1(act(gconv3x3(act(conv1x1(x))))), no normalisation; the residual branch starts at zero."""

    def __init__(self, channels: int, total_blocks: int):
        super().__init__()
        expanded = channels * EXPANSION
        scale = GAIN * total_blocks ** (-1.0 / 4)  # fix-up: 3 layers per branch -> L^(-1/(2*3-2))
        self.expand = _init(nn.Conv2d(channels, expanded, 1), scale)
        self.conv = _init(nn.Conv2d(expanded, expanded, 3, padding=1,
                                    groups=max(1, expanded // CHANNELS_PER_GROUP)), scale)
        self.reduce = _init(nn.Conv2d(expanded, channels, 1, bias=False), 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(x), SLOPE, inplace=True)  # in place: the conv's output is not kept for
        h = F.leaky_relu(self.conv(h), SLOPE, inplace=True)    # its backward, and memory traffic is the cost
        return x + self.reduce(h)


class R3Generator(nn.Module):
    """z (N, noise_dim) [+ y (N,)] -> images (N, C, S, S) in [-1, 1]."""

    def __init__(self, noise_dim: int, ngf: int, channels: int, image_size: int, num_classes: int = 0,
                 blocks: int = 1):
        super().__init__()
        sizes, widths = stage_sizes(image_size), stage_widths(image_size, ngf)
        total = blocks * len(sizes)
        self.embed = nn.Embedding(num_classes, noise_dim) if num_classes else None
        in_dim = noise_dim * (2 if num_classes else 1)
        self.basis = nn.Parameter(torch.randn(widths[0], sizes[0], sizes[0]))
        self.modulation = _init(nn.Linear(in_dim, widths[0], bias=False), 1.0)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, width in enumerate(widths):
            if i:  # bilinear x2, then a 1x1 conv where the width changes
                prev = widths[i - 1]
                self.transitions.append(_init(nn.Conv2d(prev, width, 1, bias=False), 1.0) if prev != width
                                        else nn.Identity())
            self.stages.append(nn.Sequential(*[ResidualBlock(width, total) for _ in range(blocks)]))
        self.out = _init(nn.Conv2d(widths[-1], channels, 1), 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        h = self.basis.unsqueeze(0) * self.modulation(z)[:, :, None, None]
        for i, stage in enumerate(self.stages):
            if i:
                h = F.interpolate(self.transitions[i - 1](h), scale_factor=2.0, mode="bilinear", align_corners=False)
            h = stage(h)
        return torch.tanh(self.out(h))


class R3Discriminator(nn.Module):
    """images (N, C, S, S) [+ y (N,)] -> logits (N,)."""

    def __init__(self, ndf: int, channels: int, image_size: int, num_classes: int = 0, blocks: int = 1):
        super().__init__()
        sizes, widths = stage_sizes(image_size)[::-1], stage_widths(image_size, ndf)[::-1]
        total = blocks * len(sizes)
        self.extract = _init(nn.Conv2d(channels, widths[0], 1), GAIN)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, width in enumerate(widths):
            self.stages.append(nn.Sequential(*[ResidualBlock(width, total) for _ in range(blocks)]))
            if i + 1 < len(widths):  # 2x2 mean (bilinear down by 2), then a 1x1 conv where the width changes
                nxt = widths[i + 1]
                self.transitions.append(_init(nn.Conv2d(width, nxt, 1, bias=False), 1.0) if nxt != width
                                        else nn.Identity())
        last, side = widths[-1], sizes[-1]
        self.basis = _init(nn.Conv2d(last, last, side, groups=last, bias=False), 1.0)  # depthwise, side -> 1
        self.out = _init(nn.Linear(last, 1), 1.0)
        self.embed = projection(num_classes, last)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.extract(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.transitions):
                h = self.transitions[i](F.avg_pool2d(h, 2))
        h = F.leaky_relu(self.basis(h), SLOPE).flatten(1)
        return project(self.out(h).view(-1), h, self.embed, y)
