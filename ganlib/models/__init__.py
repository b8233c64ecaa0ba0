"""Generators and discriminators.

Every generator maps noise ``z`` (N, noise_dim) float to images (N, C, H, W) float in [-1, 1]
(tanh output). Every discriminator maps images (N, C, H, W) in [-1, 1] to logits (N,) float:
no sigmoid, so the losses can use the numerically safe log-sigmoid forms.

Presets:
- ``mlp``: the tutorial's idea done right: z -> hidden -> hidden -> C*H*W, tanh; D mirrors it with
  LeakyReLU. (The tutorial reshaped 784 outputs to 7x7; here the output is the image size.)
- ``dcgan``: transposed-conv G and strided-conv D with batch norm (Radford et al. 2015). At 64 px
  with ngf=ndf=64 and nz=100 the layers are those of pytorch/examples' DCGAN, so the two can be
  compared step for step. 28 and 32 px drop one up/down-sampling block and start from 7x7 or 4x4;
  128 px adds one (G starts from ngf*16 channels at 4x4, D ends with ndf*16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.errors import ConfigError

if TYPE_CHECKING:  # only a type here: models (and the training step) import without pydantic, for bench/
    from ganlib.config import ModelConfig

DCGAN_SIZES = (28, 32, 64, 128)
# Presets whose discriminator scores each image on its own (no batch norm): the training step may
# then score the real and the fake batch in one forward pass, with matrices twice as tall.
BATCH_INDEPENDENT_DISCRIMINATORS = frozenset({"mlp", "resnet"})


class Norm(nn.Module):
    """Batch norm, class-conditional when ``num_classes`` > 0 (de Vries et al. 2017).

    Conditional: the normalisation has no affine parameters of its own; a per-class scale and shift
    are looked up from an embedding. ``forward(x, y)``: x (N, C[, H, W]), y int64 (N,) or None.
    """

    def __init__(self, features: int, num_classes: int = 0, dim: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(features, affine=num_classes == 0)
        if num_classes:
            self.embed = nn.Embedding(num_classes, 2 * features)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.bn(x)
        if not self.num_classes:
            return out
        gamma, beta = self.embed(y).chunk(2, dim=1)
        shape = (-1, out.shape[1]) + (1,) * (out.dim() - 2)
        return out * gamma.view(shape) + beta.view(shape)


def _projection(num_classes: int, features: int) -> nn.Embedding | None:
    """The class embedding of a projection discriminator, initialised small: with the default N(0, 1)
    the projection term would dwarf the unconditional logit at the start (|logit| ~ 50)."""
    if not num_classes:
        return None
    embed = nn.Embedding(num_classes, features)
    nn.init.normal_(embed.weight, 0.0, 0.02)
    return embed


def _project(logits: torch.Tensor, features: torch.Tensor, embed: nn.Embedding | None,
             y: torch.Tensor | None) -> torch.Tensor:
    """Projection discriminator (Miyato & Koyama 2018): add <embed(y), features>; features (N, F)."""
    if embed is None:
        return logits
    return logits + (embed(y) * features).sum(dim=1)


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
        self.embed = _projection(num_classes, hidden_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x)
        return _project(self.out(h).view(-1), h, self.embed, y)


def _dcgan_widths(image_size: int) -> tuple[int, int]:
    """(number of stride-2 blocks after the first, side of the first feature map)."""
    return {28: (2, 7), 32: (3, 4), 64: (4, 4), 128: (5, 4)}[image_size]


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
        self.embed = _projection(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x)
        return _project(self.out(h).view(-1), h.sum(dim=(2, 3)) if self.embed is not None else h, self.embed, y)


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


RESNET_SIZES = (32, 64)


class ResNetGenerator(nn.Module):
    """SNGAN-style residual generator (Miyato et al. 2018) for 32 or 64 px: 4x4 -> up-blocks -> image."""

    def __init__(self, noise_dim: int, ngf: int, channels: int, image_size: int, num_classes: int = 0):
        super().__init__()
        width = ngf * 4
        self.width = width
        self.fc = nn.Linear(noise_dim, 4 * 4 * width)
        self.blocks = nn.ModuleList([_ResBlockUp(width, width, num_classes)
                                     for _ in range({32: 3, 64: 4}[image_size])])
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
        downs = {32: 2, 64: 3}[image_size]
        self.blocks = nn.Sequential(_ResBlockDown(channels, width, first=True),
                                    *[_ResBlockDown(width, width, first=False) for _ in range(downs)])
        self.out = nn.Linear(width, 1)
        self.embed = _projection(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))
        return _project(self.out(h).view(-1), h, self.embed, y)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, Norm) and m.num_classes:  # per-class scales around 1, shifts 0
            features = m.embed.weight.shape[1] // 2
            nn.init.normal_(m.embed.weight[:, :features], 1.0, 0.02)
            nn.init.zeros_(m.embed.weight[:, features:])


def build_models(cfg: ModelConfig, channels: int, image_size: int, num_classes: int = 0
                 ) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator for images of shape (channels, image_size, image_size).

    With ``cfg.conditional`` both take class labels: ``G(z, y)``, ``D(x, y)`` with y int64 (N,) in
    [0, num_classes); G then uses conditional batch norm and D a projection head.
    Weights are initialised from the global torch RNG: seed it (or use ``torch.random.fork_rng``)
    before calling for reproducible models. ``cfg`` is read by attribute only, so any object with
    ModelConfig's fields will do (the benchmarks pass a pydantic-free stand-in).
    """
    k = num_classes if cfg.conditional else 0
    if cfg.conditional and num_classes < 2:
        raise ConfigError("model.conditional: needs a labelled dataset with at least 2 classes; "
                          "drop --conditional or use a labelled dataset")
    check_image_size(cfg.name, image_size)
    if cfg.name == "mlp":
        g: nn.Module = MLPGenerator(cfg.noise_dim, cfg.hidden_dim, channels, image_size, k)
        d: nn.Module = MLPDiscriminator(cfg.hidden_dim, channels, image_size, k)
    elif cfg.name == "dcgan":
        g = DCGANGenerator(cfg.noise_dim, cfg.ngf, channels, image_size, k)
        d = DCGANDiscriminator(cfg.ndf, channels, image_size, k)
    elif cfg.name == "resnet":
        g = ResNetGenerator(cfg.noise_dim, cfg.ngf, channels, image_size, k)
        d = ResNetDiscriminator(cfg.ndf, channels, image_size, k)
    else:  # pydantic's Literal makes this unreachable from validated configs
        raise ConfigError(f"model.name: unknown model {cfg.name!r}; choose mlp, dcgan or resnet")
    dcgan_init_(g)
    dcgan_init_(d)
    if cfg.spectral_norm:
        _spectral_norm_(d)
    return g, d


def check_image_size(model_name: str, image_size: int) -> None:
    """``ConfigError`` (one line) when the preset ``model_name`` cannot make ``image_size``-px images."""
    sizes, fix = {"dcgan": (DCGAN_SIZES, "use --image-size 28, 32, 64 or 128, or --model mlp"),
                  "resnet": (RESNET_SIZES, "use --image-size 32 or 64, or --model dcgan")}.get(model_name, (None, ""))
    if sizes is not None and image_size not in sizes:
        raise ConfigError(f"data.image_size: {model_name} makes {sizes} px images, not {image_size}; {fix}")


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
