"""Generators and discriminators.

Every generator maps noise ``z`` (N, noise_dim) float to images (N, C, H, W) float in [-1, 1]
(tanh output). Every discriminator maps images (N, C, H, W) in [-1, 1] to logits (N,) float:
no sigmoid, so the losses can use the numerically safe log-sigmoid forms.

Presets:
- ``mlp``: the tutorial's idea done right: z -> hidden -> hidden -> C*H*W, tanh; D mirrors it with
  LeakyReLU. (The tutorial reshaped 784 outputs to 7x7; here the output is the image size.)
- ``dcgan``: transposed-conv G and strided-conv D with batch norm (Radford et al. 2015). At 64 px
  with ngf=ndf=64 and nz=100 the layers are those of pytorch/examples' DCGAN, so the two can be
  compared step for step. 28 and 32 px drop one up/down-sampling block and start from 7x7 or 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from ganlib.config import ModelConfig
from ganlib.errors import ConfigError

DCGAN_SIZES = (28, 32, 64)


class MLPGenerator(nn.Module):
    def __init__(self, noise_dim: int, hidden_dim: int, channels: int, image_size: int):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        out = channels * image_size * image_size
        self.net = nn.Sequential(
            nn.Linear(noise_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(True),
            nn.Linear(hidden_dim, hidden_dim * 2), nn.BatchNorm1d(hidden_dim * 2), nn.ReLU(True),
            nn.Linear(hidden_dim * 2, out), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden_dim: int, channels: int, image_size: int):
        super().__init__()
        inp = channels * image_size * image_size
        # No batch norm in D: it would couple the real and fake batches' statistics.
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(inp, hidden_dim * 2), nn.LeakyReLU(0.2, True),
            nn.Linear(hidden_dim * 2, hidden_dim), nn.LeakyReLU(0.2, True),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def _dcgan_widths(image_size: int) -> tuple[int, int]:
    """(number of stride-2 blocks after the first, side of the first feature map)."""
    return {28: (2, 7), 32: (3, 4), 64: (4, 4)}[image_size]


class DCGANGenerator(nn.Module):
    def __init__(self, noise_dim: int, ngf: int, channels: int, image_size: int):
        super().__init__()
        num_up, start = _dcgan_widths(image_size)
        width = ngf * 2 ** (num_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(noise_dim, width, start, 1, 0, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(True),
        ]
        for _ in range(num_up - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf: int, channels: int, image_size: int):
        super().__init__()
        num_down, end = _dcgan_widths(image_size)
        width = ndf
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(num_down - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, end, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_models(cfg: ModelConfig, channels: int, image_size: int) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator for images of shape (channels, image_size, image_size).

    Weights are initialised from the global torch RNG: seed it (or use ``torch.random.fork_rng``)
    before calling for reproducible models.
    """
    if cfg.name == "mlp":
        g: nn.Module = MLPGenerator(cfg.noise_dim, cfg.hidden_dim, channels, image_size)
        d: nn.Module = MLPDiscriminator(cfg.hidden_dim, channels, image_size)
    elif cfg.name == "dcgan":
        if image_size not in DCGAN_SIZES:
            raise ConfigError(
                f"model.name: 'dcgan' makes images of {', '.join(map(str, DCGAN_SIZES))} px, "
                f"not {image_size}; set data.image_size to one of them or use --model mlp")
        g = DCGANGenerator(cfg.noise_dim, cfg.ngf, channels, image_size)
        d = DCGANDiscriminator(cfg.ndf, channels, image_size)
    else:  # pydantic's Literal makes this unreachable from validated configs
        raise ConfigError(f"model.name: unknown model {cfg.name!r}; choose mlp or dcgan")
    dcgan_init_(g)
    dcgan_init_(d)
    if cfg.spectral_norm:
        _spectral_norm_(d)
    return g, d


def _spectral_norm_(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear weight of ``module``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, spectral_norm(child))
        else:
            _spectral_norm_(child)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
