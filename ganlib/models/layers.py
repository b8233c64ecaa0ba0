"""Building blocks shared by the presets: (conditional) batch norm, the projection head, initialisers."""

from __future__ import annotations

import torch
from torch import nn


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


def projection(num_classes: int, features: int) -> nn.Embedding | None:
    """The class embedding of a projection discriminator, initialised small: with the default N(0, 1)
    the projection term would dwarf the unconditional logit at the start (|logit| ~ 50)."""
    if not num_classes:
        return None
    embed = nn.Embedding(num_classes, features)
    nn.init.normal_(embed.weight, 0.0, 0.02)
    return embed


def project(logits: torch.Tensor, features: torch.Tensor, embed: nn.Embedding | None,
             y: torch.Tensor | None) -> torch.Tensor:
    """Projection discriminator (Miyato & Koyama 2018): add <embed(y), features>; features (N, F)."""
    if embed is None:
        return logits
    return logits + (embed(y) * features).sum(dim=1)


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


def spectral_norm_(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear weight of ``module``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, spectral_norm(child))
        else:
            spectral_norm_(child)
