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


def test_the_mlp_discriminator_takes_its_own_width_where_given():
    def build(d_hidden_dim):
        return build_models(ModelConfig(name="mlp", hidden_dim=64, d_hidden_dim=d_hidden_dim), 1, 28)

    (g_usual, d_usual), (g_narrow, d_narrow) = build(None), build(16)
    assert [m.out_features for m in d_usual.modules() if isinstance(m, torch.nn.Linear)] == [128, 64, 1]
    assert [m.out_features for m in d_narrow.modules() if isinstance(m, torch.nn.Linear)] == [32, 16, 1]
    assert count_parameters(g_usual) == count_parameters(g_narrow)


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
    g1, _ = build_models(ModelConfig(name="mlp"), 1, 28)
    torch.manual_seed(0)
    g2, _ = build_models(ModelConfig(name="mlp"), 1, 28)
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))


@pytest.mark.parametrize("size", [28, 32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_r3gan_makes_every_size_and_starts_as_identity_blocks(size, channels):
    from ganlib.models.r3gan import ResidualBlock

    g, d = build_models(ModelConfig(name="r3gan", ngf=4, ndf=4), channels, size)
    x = g(torch.randn(3, 100))
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    assert d(x).shape == (3,)
    block = next(m for m in g.modules() if isinstance(m, ResidualBlock))
    h = torch.randn(2, block.expand.in_channels, 4, 4)
    assert torch.equal(block(h), h)  # fix-up: the residual branch starts at zero
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)) for m in g.modules())


def test_r3gan_is_conditional_and_bf16_safe():
    g, d = build_models(ModelConfig(name="r3gan", ngf=4, ndf=4, conditional=True), 3, 32, num_classes=5)
    y = torch.tensor([0, 1, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = d(g(torch.randn(3, 100), y), y)
    assert logits.shape == (3,) and torch.isfinite(logits.float()).all()
    a, b = g(torch.zeros(1, 100), torch.tensor([0])), g(torch.zeros(1, 100), torch.tensor([1]))
    assert not torch.equal(a, b)  # the label changes the image


@pytest.mark.parametrize("name", ["dcgan", "resnet"])
def test_conv_presets_make_256_px(name):
    g, d = build_models(ModelConfig(name=name, ngf=4, ndf=4), 3, 256)
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 3, 256, 256) and d(x).shape == (2,)
