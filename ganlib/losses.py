"""GAN objectives, computed from logits.

Working on logits rather than probabilities keeps the losses finite when D saturates:
``binary_cross_entropy_with_logits`` evaluates log(sigmoid(x)) as -softplus(-x) without ever
forming sigmoid(x) = 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss -log D(x) - log(1 - D(G(z))), averaged over the batch; logits (N,)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss -log D(G(z)) (the non-saturating form of Goodfellow et al. 2014); logits (N,)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
