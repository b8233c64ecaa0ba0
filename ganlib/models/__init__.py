"""Generators and discriminators: one module per preset, registered in ``PRESETS``.

Every generator maps noise ``z`` (N, noise_dim) float [and labels y (N,) int64] to images (N, C, H, W)
float in [-1, 1] (tanh output). Every discriminator maps images (N, C, H, W) in [-1, 1] [and labels] to
logits (N,) float: no sigmoid, so the losses can use the numerically safe log-sigmoid forms.

Presets (``model.name``; ``auto`` picks one from the prepared data: ``ganlib.config.choose_preset``):

- ``mlp`` (``ganlib.models.mlp``): the tutorial's MLP done right; the fastest good digits on a CPU.
- ``dcgan`` (``ganlib.models.dcgan``): Radford et al. 2015, batch norm; 28 to 256 px.
- ``resnet`` (``ganlib.models.resnet``): SNGAN's residual nets (Miyato et al. 2018); 32 to 256 px.
- ``r3gan`` (``ganlib.models.r3gan``): the modern baseline of Huang et al. 2024 (norm-free ResNets with
  grouped convs and fix-up init, trained with the relativistic pairing loss and R1 + R2); 28 to 256 px.

Adding a preset: a module with a generator and a discriminator class, one ``Preset`` entry below, its
name in ``ganlib.config.MODELS`` and its defaults in ``ganlib.config.PRESET_DEFAULTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from ganlib.errors import ConfigError
from ganlib.models import dcgan, mlp, r3gan, resnet
from ganlib.models.layers import dcgan_init_, spectral_norm_

if TYPE_CHECKING:  # only a type here: models (and the training step) import without pydantic, for bench/
    from ganlib.config import ModelConfig


@dataclass(frozen=True)
class Preset:
    """How to build one preset's G and D, and what the training step may assume about them."""

    generator: Callable[[ModelConfig, int, int, int], nn.Module]  # (cfg, channels, image_size, num_classes)
    discriminator: Callable[[ModelConfig, int, int, int], nn.Module]
    sizes: tuple[int, ...] | None  # image sides it makes; None: any
    batch_independent_d: bool  # D scores each image on its own (no batch norm): real and fake may share a pass
    dcgan_init: bool  # re-initialise with N(0, 0.02) (the preset has no initialisation of its own)
    width: int = 32  # ngf and ndf where the config leaves them None (ganlib.config.PRESET_DEFAULTS: a CPU's)


PRESETS: dict[str, Preset] = {
    "mlp": Preset(lambda c, ch, s, k: mlp.MLPGenerator(c.noise_dim, c.hidden_dim, ch, s, k),
                  lambda c, ch, s, k: mlp.MLPDiscriminator(c.d_hidden_dim or c.hidden_dim, ch, s, k), None, True, True),
    "dcgan": Preset(lambda c, ch, s, k: dcgan.DCGANGenerator(c.noise_dim, c.ngf, ch, s, k),
                    lambda c, ch, s, k: dcgan.DCGANDiscriminator(c.ndf, ch, s, k), dcgan.SIZES, False, True),
    "resnet": Preset(lambda c, ch, s, k: resnet.ResNetGenerator(c.noise_dim, c.ngf, ch, s, k),
                     lambda c, ch, s, k: resnet.ResNetDiscriminator(c.ndf, ch, s, k), resnet.SIZES, True, True),
    "r3gan": Preset(lambda c, ch, s, k: r3gan.R3Generator(c.noise_dim, c.ngf, ch, s, k, c.blocks),
                    lambda c, ch, s, k: r3gan.R3Discriminator(c.ndf, ch, s, k, c.blocks), r3gan.SIZES, True, False, 16),
}
# Presets whose discriminator scores each image on its own (no batch norm): the training step may
# then score the real and the fake batch in one forward pass, with matrices twice as tall.
BATCH_INDEPENDENT_DISCRIMINATORS = frozenset(name for name, p in PRESETS.items() if p.batch_independent_d)
DCGAN_SIZES, RESNET_SIZES = dcgan.SIZES, resnet.SIZES


def build_models(cfg: ModelConfig, channels: int, image_size: int, num_classes: int = 0
                 ) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator for images of shape (channels, image_size, image_size).

    With ``cfg.conditional`` both take class labels: ``G(z, y)``, ``D(x, y)`` with y int64 (N,) in
    [0, num_classes); G then uses conditional batch norm (r3gan: a label embedding joined to z) and D a
    projection head. Weights are initialised from the global torch RNG: seed it (or use
    ``torch.random.fork_rng``) before calling for reproducible models. ``cfg`` is read by attribute only,
    so any object with ModelConfig's fields will do (the benchmarks pass a pydantic-free stand-in).
    """
    k = num_classes if cfg.conditional else 0
    if cfg.conditional and num_classes < 2:
        raise ConfigError("model.conditional: needs a labelled dataset with at least 2 classes; "
                          "drop --conditional or use a labelled dataset")
    preset = PRESETS.get(cfg.name)
    if cfg.name == "auto":
        raise ConfigError("model.name: 'auto' is chosen from the prepared images; resolve the config first "
                          "(RunConfig.resolved(channels=...)) or name one of " + ", ".join(PRESETS))
    if preset is None:
        raise ConfigError(f"model.name: unknown model {cfg.name!r}; choose one of {', '.join(PRESETS)}")
    check_image_size(cfg.name, image_size)
    if cfg.ngf is None or cfg.ndf is None or getattr(cfg, "blocks", 1) is None:  # unresolved: the CPU widths
        cfg = _Widths(cfg, preset.width)
    g, d = preset.generator(cfg, channels, image_size, k), preset.discriminator(cfg, channels, image_size, k)
    if preset.dcgan_init:
        dcgan_init_(g)
        dcgan_init_(d)
    if cfg.spectral_norm:
        spectral_norm_(d)
    return g, d


class _Widths:
    """``cfg`` with ngf / ndf None replaced by ``width`` and blocks None by 1 (read by attribute, like
    ModelConfig)."""

    def __init__(self, cfg: ModelConfig, width: int):
        self._cfg, self.ngf, self.ndf = cfg, cfg.ngf or width, cfg.ndf or width
        self.blocks = getattr(cfg, "blocks", None) or 1

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._cfg, name)


def check_image_size(model_name: str, image_size: int) -> None:
    """``ConfigError`` (one line) when the preset ``model_name`` cannot make ``image_size``-px images."""
    preset = PRESETS.get(model_name)
    if preset is None or preset.sizes is None or image_size in preset.sizes:
        return
    nearest = min(preset.sizes, key=lambda s: abs(s - image_size))
    others = [name for name, p in PRESETS.items() if name != model_name and (p.sizes is None or image_size in p.sizes)]
    raise ConfigError(f"data.image_size: {model_name} makes {', '.join(map(str, preset.sizes))} px images, not "
                      f"{image_size}; use --image-size {nearest} or another --model ({', '.join(others)})")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
