"""One training step: ``objective.d_steps`` D updates, then one G update, and what it needs.

``train_step`` is the maths of one step; ``ganlib.training.loop`` calls it, and the benchmarks import
it, so what is timed is what trains. Also here: the EMA of G, Adam (fused or foreach), the learning-rate
schedule, and the speed settings that depend on the device (channels-last, bf16 autocast).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ganlib.errors import ConfigError
from ganlib.models import BATCH_INDEPENDENT_DISCRIMINATORS
from ganlib.training.ada import AdaptiveAugment
from ganlib.training.augment import diff_augment
from ganlib.training.losses import OBJECTIVES, RELATIVISTIC, gradient_penalty, real_fake_penalties

if TYPE_CHECKING:
    from ganlib.config import RunConfig, TrainConfig

log = logging.getLogger("ganlib")


@dataclass(frozen=True)
class Objective:
    """What one training step optimises: the loss pair, D updates per G update, regularisers, EMA."""

    loss: str = "ns"
    d_steps: int = 1
    gp_weight: float = 10.0
    r1: float = 0.0
    r2: float = 0.0
    r1_every: int = 1
    ema_decay: float = 0.0
    diffaug: tuple[str, ...] = ()
    bf16: bool = False  # autocast to bfloat16
    joint_d: bool = False  # D scores real and fake in one pass (only for a D without batch statistics)

    @property
    def double_backward(self) -> bool:
        """Whether D's loss differentiates D's own gradient (R1, R2, WGAN-GP's penalty): torch.compile's
        AOTAutograd cannot ("does not currently support double backward"), so such a D runs eagerly."""
        return self.r1 > 0 or self.r2 > 0 or (self.loss == "wgan-gp" and self.gp_weight > 0)

    @classmethod
    def from_config(cls, cfg: RunConfig, device: torch.device | None = None) -> Objective:
        t = cfg.resolved().train
        if t.loss == "auto":
            raise ConfigError("train.loss: 'auto' follows the preset, which follows the prepared images: pass the "
                              "config through RunConfig.resolved(channels=...) first, or name --model")
        return cls(loss=t.loss, d_steps=t.d_steps, gp_weight=t.gp_weight, r1=t.r1, r2=t.r2, r1_every=t.r1_every,
                   ema_decay=t.ema_decay, diffaug=tuple(t.diffaug),
                   bf16=t.precision == "bf16" and (device is None or device.type in ("cuda", "cpu")),
                   joint_d=cfg.model.name in BATCH_INDEPENDENT_DISCRIMINATORS)


def top_k_fraction(floor: float, decay: float, epoch: float) -> float:
    """Top-k training (Sinha et al. 2020): the fraction of G's fakes its update keeps at ``epoch``
    (images seen / dataset size): all at first, then ``decay`` ** epoch down to ``floor``."""
    return 1.0 if floor >= 1.0 else max(floor, decay**epoch)


def ema_beta(decay: float, step: int) -> float:
    """EMA decay at ``step`` (0-based), ramped up so early averages are not dominated by the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * generator for parameters; buffers (BN statistics) copied."""
    ema_params, params = list(ema.parameters()), list(generator.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), generator.buffers()):
        b_ema.copy_(b)


def train_step(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    objective: Objective = Objective(),  # noqa: B008 (frozen dataclass)
    step: int = 0,
    ema: nn.Module | None = None,
    noise: torch.Generator | None = None,
    y: torch.Tensor | None = None,
    ada: AdaptiveAugment | None = None,
    g_keep: float = 1.0,
) -> torch.Tensor:
    """``objective.d_steps`` D updates, then one G update. Returns the step's scalars on the device.

    real: (d_steps * N, C, H, W) float in [-1, 1], one batch of N per D update; z: (d_steps * N,
    noise_dim). The G update reuses the last D update's fakes (G has not changed since). ``step``
    (0-based) schedules lazy R1/R2 and the EMA ramp-up; ``noise`` draws the augmentations and the
    gradient penalty's interpolation weights; ``y`` (d_steps * N,) int64 labels of the real images for
    conditional models (the fakes are made for the same labels, so both follow the data's class balance).
    ``ada``: adaptive augmentation (before DiffAugment) of everything D sees; it observes r_t here.
    ``g_keep`` < 1: G's loss counts only that fraction of its fakes (at least one), those D scores highest
    (top-k training, ``top_k_fraction``).
    Returns float32 (d_loss, g_loss, D(x), D(G(z)), fake_std, r_t, ada_p) as in ``METRIC_COLUMNS``, the D
    outputs as mean sigmoid of the last D update (relativistic: of D(x) - D(G(z)) and its negative);
    nothing here synchronises with the host.
    """
    d_loss_fn, g_loss_fn = OBJECTIVES[objective.loss]
    relativistic = objective.loss in RELATIVISTIC

    def aug(x: torch.Tensor) -> torch.Tensor:
        if ada is not None:
            x = ada.augment(x, noise)
        return diff_augment(x, objective.diffaug, noise) if objective.diffaug else x

    def score(real_x: torch.Tensor, fake_x: torch.Tensor, y_i: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """D's fp32 logits of the augmented real and fake batches."""
        if objective.joint_d:  # one pass over both batches: the same logits, faster (taller matrices)
            both = discriminator(torch.cat([aug(real_x), aug(fake_x)]), None if y_i is None else torch.cat([y_i, y_i]))
            return both.float().chunk(2)
        # separate passes: D's batch norm normalises each batch with its own statistics
        return discriminator(aug(real_x), y_i).float(), discriminator(aug(fake_x), y_i).float()

    amp = (lambda: torch.autocast(real.device.type, dtype=torch.bfloat16)) if objective.bf16 else nullcontext
    ys = y.chunk(objective.d_steps) if y is not None else [None] * objective.d_steps
    for i, (real_i, z_i, y_i) in enumerate(zip(real.chunk(objective.d_steps), z.chunk(objective.d_steps), ys)):
        # Update D on one batch.
        d_index = step * objective.d_steps + i
        lazy = d_index % objective.r1_every == 0
        use_r1, use_r2 = objective.r1 > 0 and lazy, objective.r2 > 0 and lazy
        if use_r1:
            real_i = real_i.detach().requires_grad_(True)
        with amp():
            fake = generator(z_i, y_i)
            # R2's input in fp32, as R1's (a real batch) is: its gradient and the squared sum over C*H*W in bf16
            # lost digits (fp32 runs: .float() is the same tensor)
            fake_in = fake.detach().float().requires_grad_(True) if use_r2 else fake.detach()
            real_logits, fake_logits = score(real_i, fake_in, y_i)
        d_loss = d_loss_fn(real_logits, fake_logits)
        d_total = d_loss
        if objective.loss == "wgan-gp" and objective.gp_weight > 0:
            d_total = d_total + objective.gp_weight * gradient_penalty(discriminator, real_i.detach(), fake.detach(),
                                                                       noise, y_i)
        if use_r1 or use_r2:  # lazy: every r1_every updates, scaled up to keep the same average strength
            r1, r2 = real_fake_penalties(real_logits, fake_logits, real_i if use_r1 else None,
                                         fake_in if use_r2 else None)
            d_total = d_total + objective.r1_every * (objective.r1 / 2 * r1 + objective.r2 / 2 * r2)
        opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        opt_d.step()
        with torch.no_grad():  # the overfitting signal: sign of D(x) (relativistic: of D(x) - D(G(z)))
            margin = (real_logits - fake_logits if relativistic else real_logits).detach()
            signs = torch.sign(margin)
            if ada is not None:
                ada.observe(signs)

    # Update G against the updated D. D's weight gradients are not needed here, so they are not
    # computed (about a third of the backward pass through D).
    discriminator.requires_grad_(False)
    with amp():
        if relativistic:  # G's loss pairs its fakes with real images, scored by the updated D
            g_real, g_logits = score(real_i.detach(), fake, y_i)
        else:
            g_logits = discriminator(aug(fake), y_i).float()
    if g_keep < 1.0:  # top-k: the gradient of G's worst fakes points away from the data; leave it out
        kept = torch.topk(g_logits, max(1, int(g_keep * len(g_logits))), sorted=False).indices
        g_logits, g_real = g_logits[kept], (g_real[kept] if relativistic else None)
    g_loss = g_loss_fn(g_logits, g_real) if relativistic else g_loss_fn(g_logits)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    if ema is not None:
        update_ema(ema, generator, ema_beta(objective.ema_decay, step))

    with torch.no_grad():
        # Sample diversity (collapse drives it to 0): the per-pixel standard deviation over the batch,
        # averaged. Written out: std(dim=0) is a strided reduction, 5x slower on the CPU.
        flat = fake.detach().flatten(1).float()
        flat = flat - flat.mean(dim=0)
        spread = flat.square().sum(dim=0).div_(max(len(flat) - 1, 1)).sqrt_().mean()
        d_real = torch.sigmoid(margin if relativistic else real_logits.detach()).mean()
        d_fake = 1 - d_real if relativistic else torch.sigmoid(fake_logits.detach()).mean()
        p = ada.p if ada is not None else torch.zeros((), device=spread.device)
        return torch.stack([d_loss.detach(), g_loss.detach(), d_real, d_fake, spread, signs.mean(), p])


def adam_implementation(setting: str, device: torch.device) -> dict[str, bool]:
    """Adam's keyword for ``train.fused_optimizer`` ('auto', 'on', 'off') on ``device``.

    ``{"fused": True}`` where torch has a fused Adam for the device type (CUDA and the CPU in torch
    2.4+), else ``{"foreach": True}``. Both are deterministic, so a CPU resume stays bit-exact.
    """
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        fused_ok = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the (private) list: CUDA always had it
        fused_ok = device.type == "cuda"
    if setting == "on" and not fused_ok:
        raise ConfigError(f"train.fused_optimizer: this torch has no fused Adam for {device.type}; "
                          "use auto or off")
    return {"fused": True} if fused_ok and setting != "off" else {"foreach": True}


def use_channels_last(setting: str, model_name: str, device: torch.device) -> bool:
    """Whether ``train.channels_last`` ('auto', 'on', 'off') puts G, D and the real batches in NHWC.

    Conv models only (the mlp has no image-shaped weights); 'auto' is on for CUDA and the CPU, whose
    convolution kernels (cuDNN, oneDNN) are faster in NHWC.
    """
    return model_name != "mlp" and (setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu")))


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AMX or AVX512-BF16), so bf16 autocast pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def with_adam_kernel(saved: dict[str, Any], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) set to use ``opt``'s kernel (fused or foreach) once loaded.

    ``load_state_dict`` takes every group setting from the saved state, so without this a resumed run
    would keep the kernel of the run that saved it (and fused Adam needs its step counters moved to
    the parameters' device, which loading does only when the groups say fused).
    """
    kernel = {k: opt.defaults[k] for k in ("fused", "foreach") if k in opt.defaults}
    return {**saved, "param_groups": [{**group, **kernel} for group in saved["param_groups"]]}


def lr_factor(t: TrainConfig, step: int, num_steps: int) -> float:
    """The learning-rate multiplier of ``train.lr_decay`` for the update at ``step`` (0-based)."""
    if t.lr_decay == "none":
        return 1.0
    start = t.lr_decay_start * num_steps
    return 1.0 if step < start else max(0.0, (num_steps - step) / (num_steps - start))


def base_learning_rates(t: TrainConfig) -> tuple[float, float]:
    """(G's, D's) learning rate before any scaling: ``train.lr_g`` / ``train.lr_d``, else ``train.lr``."""
    return t.lr_g or t.lr, t.lr_d or t.lr


def make_optimizers(cfg: RunConfig, generator: nn.Module, discriminator: nn.Module, lr_scale: float = 1.0):
    """Adam for G and D on the device of their parameters (fused or foreach: ``adam_implementation``)."""
    t = cfg.train
    betas = (t.beta1 if t.beta1 is not None else 0.5, t.beta2 if t.beta2 is not None else 0.999)
    impl = adam_implementation(t.fused_optimizer, next(generator.parameters()).device)
    return tuple(torch.optim.Adam(module.parameters(), lr=lr * lr_scale, betas=betas, **impl)
                 for module, lr in zip((generator, discriminator), base_learning_rates(t)))



def check_precision(precision: str, device: torch.device) -> None:
    """Warn where ``train.precision`` bf16 will not pay off: a CPU without native bf16, or a device other
    than CUDA and the CPU (where training runs in fp32)."""
    if precision != "bf16":
        return
    if device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("train.precision: bf16 on a CPU without native bf16 (AMX or AVX512-BF16) is emulated "
                    "and usually slower than fp32; use --precision fp32")
    elif device.type not in ("cuda", "cpu"):
        log.warning("train.precision: bf16 is used on CUDA and the CPU only; training on %s in fp32", device)
