"""``resnet``: SNGAN-style residual nets (Miyato et al. 2018): batch-norm G, norm-free D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.models.layers import Norm, project, projection

SIZES = (32, 64, 128, 256)


class _ResBlockUp(nn.Module):
    """SNGAN generator block: BN-ReLU-up-conv3-BN-ReLU-conv3, plus an upsampled 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.norm1, self.conv1 = Norm(cin, num_classes), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = Norm(cout, num_classes), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(torch.relu(self.norm1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(torch.relu(self.norm2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _ResBlockDown(nn.Module):
    """SNGAN discriminator block: (ReLU)-conv3-ReLU-conv3-avgpool, plus a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else torch.relu(x)
        h = F.avg_pool2d(self.conv2(torch.relu(self.conv1(h))), 2)
        shortcut = self.skip(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.skip(x), 2)
        return h + shortcut


class ResNetGenerator(nn.Module):
    """SNGAN-style residual generator (Miyato et al. 2018) at 32 to 256 px: 4x4 -> up-blocks -> image."""

    def __init__(self, noise_dim: int, ngf: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        width = ngf * 4
        self.width = width
        self.fc = nn.Linear(noise_dim, 4 * 4 * width)
        self.blocks = nn.ModuleList([_ResBlockUp(width, width, num_classes)
                                     for _ in range(image_size.bit_length() - 3)])  # 4 -> image_size
        self.norm = Norm(width, num_classes)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(torch.relu(self.norm(h, y))))


class ResNetDiscriminator(nn.Module):
    """SNGAN-style residual discriminator: down-blocks, ReLU, global sum pooling, linear (+ projection)."""

    def __init__(self, ndf: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        width = ndf * 4
        downs = image_size.bit_length() - 4  # the first block and `downs` more: image_size -> 4 px
        self.blocks = nn.Sequential(_ResBlockDown(channels, width, first=True),
                                    *[_ResBlockDown(width, width, first=False) for _ in range(downs)])
        self.out = nn.Linear(width, 1)
        self.embed = projection(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))
        return project(self.out(h).view(-1), h, self.embed, y)
