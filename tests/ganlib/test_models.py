import pytest
import torch

from ganlib.config import ModelConfig
from ganlib.errors import ConfigError
from ganlib.models import build_models, count_parameters


@pytest.mark.parametrize("name", ["mlp", "dcgan"])
@pytest.mark.parametrize("size", [28, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_ranges(name, size, channels):
    g, d = build_models(ModelConfig(name=name, ngf=8, ndf=8, hidden_dim=32), channels, size)
    z = torch.randn(4, 100)
    x = g(z)
    assert x.shape == (4, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    logits = d(x)
    assert logits.shape == (4,)


def test_dcgan_64_has_the_pytorch_examples_layers():
    g, d = build_models(ModelConfig(name="dcgan", ngf=64, ndf=64, noise_dim=100), 3, 64)
    convs_g = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    expected = [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert [(m.in_channels, m.out_channels) for m in convs_g] == expected
    convs_d = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs_d] == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    # pytorch/examples' DCGAN: 3,576,704 parameters in G and 2,765,568 in D.
    assert count_parameters(g) == 3_576_704
    assert count_parameters(d) == 2_765_568


def test_dcgan_128_adds_one_block_each_side():
    g, d = build_models(ModelConfig(name="dcgan", ngf=4, ndf=4), 3, 128)
    convs_g = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    expected = [(100, 64), (64, 32), (32, 16), (16, 8), (8, 4), (4, 3)]  # G starts from ngf*16 at 4x4
    assert [(m.in_channels, m.out_channels) for m in convs_g] == expected
    convs_d = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs_d] == [(3, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 1)]
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 3, 128, 128) and d(x).shape == (2,)


def test_build_models_needs_only_the_fields():
    """The benchmarks build models without pydantic, from any object with ModelConfig's fields."""
    from types import SimpleNamespace

    fields = ModelConfig(name="dcgan", ngf=8, ndf=8).model_dump()
    torch.manual_seed(0)
    g1, _ = build_models(ModelConfig(**fields), 1, 28)
    torch.manual_seed(0)
    g2, _ = build_models(SimpleNamespace(**fields), 1, 28)
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))


def test_dcgan_refuses_sizes_it_cannot_make():
    with pytest.raises(ConfigError, match="dcgan.*not 48"):
        build_models(ModelConfig(name="dcgan"), 1, 48)


def test_init_is_reproducible_with_the_seed():
    torch.manual_seed(0)
    g1, _ = build_models(ModelConfig(), 1, 28)
    torch.manual_seed(0)
    g2, _ = build_models(ModelConfig(), 1, 28)
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))
