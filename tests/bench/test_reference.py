"""The speed comparison is only fair if the reference trains the same networks as our preset."""

import torch

from bench.reference_dcgan import ReferenceDiscriminator, ReferenceGenerator
from ganlib.config import ModelConfig
from ganlib.models import build_models


def _shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(p.shape) for p in module.parameters())


def test_reference_dcgan_has_the_layers_of_our_dcgan_preset_at_64_px():
    g, d = build_models(ModelConfig(name="dcgan", ngf=64, ndf=64, noise_dim=100), 3, 64)
    ref_g, ref_d = ReferenceGenerator(), ReferenceDiscriminator()
    assert _shapes(g) == _shapes(ref_g)
    assert _shapes(d) == _shapes(ref_d)
    z = torch.randn(2, 100)
    assert ref_g(z.view(2, 100, 1, 1)).shape == g(z).shape == (2, 3, 64, 64)
    assert ref_d(torch.zeros(2, 3, 64, 64)).shape == d(torch.zeros(2, 3, 64, 64)).shape == (2,)
