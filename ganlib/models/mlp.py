"""``mlp``: the tutorial's idea done right: z -> hidden -> 2*hidden -> C*H*W, tanh; D mirrors it with
LeakyReLU. (The tutorial reshaped 784 outputs to 7x7; here the output is the image size.)"""

from __future__ import annotations

import torch
from torch import nn

from ganlib.models.layers import Norm, project, projection


class MLPGenerator(nn.Module):
    def __init__(self, noise_dim: int, hidden_dim: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.fc1, self.norm1 = nn.Linear(noise_dim, hidden_dim), Norm(hidden_dim, num_classes, dim=1)
        self.fc2, self.norm2 = nn.Linear(hidden_dim, hidden_dim * 2), Norm(hidden_dim * 2, num_classes, dim=1)
        self.out = nn.Linear(hidden_dim * 2, channels * image_size * image_size)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.norm1(self.fc1(z), y))
        h = torch.relu(self.norm2(self.fc2(h), y))
        return torch.tanh(self.out(h)).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden_dim: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        inp = channels * image_size * image_size
        # No batch norm in D: it would couple the real and fake batches' statistics.
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(inp, hidden_dim * 2), nn.LeakyReLU(0.2, True),
            nn.Linear(hidden_dim * 2, hidden_dim), nn.LeakyReLU(0.2, True),
        )
        self.out = nn.Linear(hidden_dim, 1)
        self.embed = projection(num_classes, hidden_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x)
        return project(self.out(h).view(-1), h, self.embed, y)
