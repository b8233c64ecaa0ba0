"""``dcgan``: transposed-conv G and strided-conv D with batch norm (Radford et al. 2015).

At 64 px with ngf=ndf=64 and nz=100 the layers are those of pytorch/examples' DCGAN, so the two can be
compared step for step. 28 and 32 px drop one up/down-sampling block and start from 7x7 or 4x4;
128 and 256 px add one or two (G starts from ngf*16 or ngf*32 channels at 4x4).
"""

from __future__ import annotations

import torch
from torch import nn

from ganlib.models.layers import Norm, project, projection

SIZES = (28, 32, 64, 128, 256)


def _dcgan_widths(image_size: int) -> tuple[int, int]:
    """(number of stride-2 blocks after the first, side of the first feature map)."""
    return {28: (2, 7), 32: (3, 4), 64: (4, 4), 128: (5, 4), 256: (6, 4)}[image_size]


class DCGANGenerator(nn.Module):
    def __init__(self, noise_dim: int, ngf: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        num_up, start = _dcgan_widths(image_size)
        width = ngf * 2 ** (num_up - 1)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(noise_dim, width, start, 1, 0, bias=False)])
        self.norms = nn.ModuleList([Norm(width, num_classes)])
        for _ in range(num_up - 1):
            self.convs.append(nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False))
            self.norms.append(Norm(width // 2, num_classes))
            width //= 2
        self.out = nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z.view(z.shape[0], -1, 1, 1)
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(conv(h), y))
        return torch.tanh(self.out(h))


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        num_down, end = _dcgan_widths(image_size)
        width = ndf
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(num_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 1, end, 1, 0, bias=False)
        self.embed = projection(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x)
        return project(self.out(h).view(-1), h.sum(dim=(2, 3)) if self.embed is not None else h, self.embed, y)
