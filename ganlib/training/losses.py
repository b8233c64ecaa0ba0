"""GAN objectives, computed from logits, and the regularisers on D.

Working on logits rather than probabilities keeps the losses finite when D saturates:
``binary_cross_entropy_with_logits`` evaluates log(sigmoid(x)) as -softplus(-x) without ever
forming sigmoid(x) = 0 or 1.

Each objective is a pair (D loss from real and fake logits, G loss from fake logits), all (N,)
float logits in, scalar out:

- ``ns``: the non-saturating GAN (Goodfellow et al. 2014): D minimises -log D(x) - log(1 - D(G(z))),
  G minimises -log D(G(z)).
- ``hinge``: D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)) (Lim & Ye 2017).
- ``wgan-gp``: D minimises D(G(z)) - D(x) (+ the gradient penalty, applied by the training step),
  G minimises -D(G(z)) (Gulrajani et al. 2017).
- ``ls``: least squares with targets 1/0 (Mao et al. 2017), on the raw outputs.
- ``rpgan``: relativistic pairing (Jolicoeur-Martineau 2019; with R1 and R2 the objective of R3GAN, Huang
  et al. 2024): D minimises softplus(D(G(z)) - D(x)) over pairs of a real and a fake, G the reverse,
  softplus(D(x) - D(G(z))); its G loss needs the real logits too (``RELATIVISTIC``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def d_loss_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def d_loss_wasserstein(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return fake_logits.mean() - real_logits.mean()


def g_loss_critic(fake_logits: torch.Tensor) -> torch.Tensor:
    """-D(G(z)): the generator loss of the hinge and Wasserstein objectives."""
    return -fake_logits.mean()


def d_loss_least_squares(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real_logits - 1.0) ** 2).mean() + 0.5 * (fake_logits**2).mean()


def g_loss_least_squares(fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake_logits - 1.0) ** 2).mean()


def d_loss_relativistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(fake_logits - real_logits).mean()


def g_loss_relativistic(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(real_logits - fake_logits).mean()


OBJECTIVES = {
    "ns": (d_loss_nonsaturating, g_loss_nonsaturating),
    "hinge": (d_loss_hinge, g_loss_critic),
    "wgan-gp": (d_loss_wasserstein, g_loss_critic),
    "ls": (d_loss_least_squares, g_loss_least_squares),
    "rpgan": (d_loss_relativistic, g_loss_relativistic),
}
RELATIVISTIC = frozenset({"rpgan"})  # G's loss takes (fake_logits, real_logits)


def gradient_penalty(discriminator, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None,
                     y: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty E[(||grad D(x_hat)||_2 - 1)^2] at random interpolates x_hat of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed, y).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad D(x)||^2] at real images; ``real`` must require grad."""
    return real_fake_penalties(real_logits, real_logits, real, None)[0]


def real_fake_penalties(real_logits: torch.Tensor, fake_logits: torch.Tensor, real: torch.Tensor | None,
                        fake: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(R1, R2): E[||grad D||^2] at the real and at the generated images (R2: Roth et al. 2017, as in
    R3GAN), each 0 where its input is None. The inputs given must require grad; one backward pass
    serves both (D scores each image from its own input alone)."""
    inputs, outputs = [], []
    for x, logits in ((real, real_logits), (fake, fake_logits)):
        if x is not None:
            inputs.append(x)
            outputs.append(logits.sum())
    grads = iter(torch.autograd.grad(sum(outputs), inputs, create_graph=True))
    zero = real_logits.new_zeros(())
    return tuple(next(grads).flatten(1).pow(2).sum(dim=1).mean() if x is not None else zero for x in (real, fake))
