"""What a checkpoint holds, as one object: ``TrainingState`` with ``state_dict()`` / ``load_state_dict()``.

Saving and resuming both go through this object, so the keys written and the keys read cannot drift.
Everything that decides the rest of a run is here or a pure function of it:

- G, its EMA, D, both Adam states and the ADA probability p with its controller;
- the data order: a permutation derived from (seed, epoch), and the position (a batch index);
- the latent noise: a dedicated ``torch.Generator`` whose state is saved;
- Python's, NumPy's and torch's global RNG states;
- the health state (rollback count, learning-rate scale, the monitors' counters).

On the CPU a resumed run therefore continues bit-identically.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ganlib.data.loader import BatchOrder
from ganlib.models import build_models
from ganlib.runs import checkpoint as ckpt
from ganlib.training.ada import make_ada
from ganlib.training.distributed import ProcessContext
from ganlib.training.step import base_learning_rates, make_optimizers, use_channels_last, with_adam_kernel

if TYPE_CHECKING:
    from ganlib.config import RunConfig


class TrainingState:
    """G, its EMA, D, both optimizers, the data order, the noise generator, the health state and the step.

    ``image_shape`` (C, H, W) and ``num_classes`` describe the data the models are built for; the
    checkpoint keeps them (and the config) so ``ganlib.sampling.load_generator`` can rebuild G alone.
    """

    def __init__(self, cfg: RunConfig, image_shape: tuple[int, int, int], num_classes: int, num_images: int,
                 ctx: ProcessContext, health: dict[str, Any] | None = None):
        self.cfg, self.image_shape, self.num_classes = cfg, tuple(image_shape), num_classes
        device = ctx.device
        with torch.random.fork_rng(devices=[]):  # model init must not depend on (or disturb) global RNG
            torch.manual_seed(cfg.seed)
            self.generator, self.discriminator = build_models(cfg.model, image_shape[0], image_shape[1], num_classes)
        self.memory_format = (torch.channels_last if use_channels_last(cfg.train.channels_last, cfg.model.name, device)
                              else torch.contiguous_format)
        self.generator.to(device, memory_format=self.memory_format).train()
        self.discriminator.to(device, memory_format=self.memory_format).train()
        self.ema: nn.Module | None = (copy.deepcopy(self.generator).eval().requires_grad_(False)
                                      if cfg.train.ema_decay > 0 else None)
        ctx.share_batch_statistics(self.generator)  # data-parallel: batch norm over the global batch
        ctx.share_batch_statistics(self.discriminator)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        # Mirrored (train.mirror): items N..2N-1 are images 0..N-1 flipped left-right (BatchSource).
        self.order = BatchOrder(num_images * (2 if cfg.train.mirror else 1), cfg.train.batch_size, cfg.seed, device,
                                ctx.rank, ctx.world_size)
        self.health: dict[str, Any] = health or {"rollbacks": 0, "lr_scale": 1.0}
        self.opt_g, self.opt_d = make_optimizers(cfg, self.generator, self.discriminator, self.health["lr_scale"])
        self.ada = make_ada(cfg.train, cfg.train.batch_size, device)
        self.step = 0

    def set_learning_rates(self, factor: float) -> None:
        """Both optimizers at their base rate times ``factor`` (a Python float per group: no host sync)."""
        for opt, base in zip((self.opt_g, self.opt_d), base_learning_rates(self.cfg.train)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (tensors and plain values only, so it loads with weights_only)."""
        return {
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "generator": self.generator.state_dict(),
            **({"generator_ema": self.ema.state_dict()} if self.ema is not None else {}),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "data": self.order.state_dict(),
            "health": self.health,
            **({"ada": self.ada.state_dict()} if self.ada is not None else {}),
            "rng": {"noise": self.noise.get_state(), "global": ckpt.capture_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any], health: dict[str, Any] | None = None) -> None:
        """Continue from ``state`` (a ``state_dict()``); ``health``, when given, wins over the saved one
        (a rollback: its count and learning-rate scale)."""
        self.health = {**state.get("health", self.health), **(health or {})}
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        if self.ema is not None:
            self.ema.load_state_dict(state.get("generator_ema", state["generator"]))
        self.opt_g.load_state_dict(with_adam_kernel(state["opt_g"], self.opt_g))
        self.opt_d.load_state_dict(with_adam_kernel(state["opt_d"], self.opt_d))
        self.set_learning_rates(self.health["lr_scale"])  # a rollback lowers the rates the checkpoint was saved with
        self.noise.set_state(state["rng"]["noise"])
        ckpt.restore_rng_state(state["rng"]["global"])
        self.order.load_state_dict(state["data"])
        if self.ada is not None:
            self.ada.load_state_dict(state["ada"])
        self.step = int(state["step"])
