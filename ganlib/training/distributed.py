"""The process context the training loop always has: one process, or one rank of a data-parallel run.

``ProcessContext`` is a single process: every collective is the identity, so the loop is written
once, with no "am I distributed?" branch. ``DistContext`` is one rank of a ``torch.distributed``
process group started by torchrun (``ganlib.training.launch``). With W processes the global batch
``train.batch_size`` B is split, not multiplied: every rank follows the same ``BatchOrder`` and takes
rows ``[r*B/W, (r+1)*B/W)`` of each global batch, and draws the full global latent batch from the
identically seeded (or restored) noise generator and keeps the same rows. So the ranks together
see exactly the images and latents a single process with batch B sees, and the state a checkpoint
saves (data position, noise generator, global RNGs) is identical on every rank: rank 0's
checkpoint resumes all of them, with any number of processes.

- Gradients: G and D are wrapped in ``DistributedDataParallel``, which averages their gradients
  over the ranks during each backward pass. ``train_step`` calls D three times per step (real,
  fake, and in the G update with D's parameters frozen) and G once per D update; DDP supports
  this: a forward pass whose parameters do not take part in the next backward (D in the G
  update, the discarded fakes of extra D updates) simply fires no gradient hooks. Buffers are not
  broadcast: they are identical on all ranks already (below), and an in-place broadcast between
  D's forward passes would only cost time.
- Batch norm: every ``nn.BatchNorm*`` of G and D is replaced by ``GlobalBatchNorm``, whose
  training-mode statistics (mean and variance per channel) are all-reduced over the ranks, with
  an all-reduce whose backward is again an all-reduce, so gradients (and R1's and WGAN-GP's second
  derivatives) flow through the statistics as in one process. Each forward pass keeps its own
  statistics (D normalises the real and the fake batch separately, as in one process). The
  running statistics are updated from the global batch, so they are identical on every rank.
  ``torch.nn.SyncBatchNorm`` does the same but accepts CUDA inputs only (checked in torch 2.15: its
  forward raises on the CPU), and the CPU with gloo is where the tests run.
- EMA: the generator's moving average is updated on every rank from parameters that are
  identical after each synchronised update, so it stays identical too; only rank 0 saves it.
- Per-step scalars are averaged over the ranks at each metrics flush (one all-reduce per
  ``log_every`` steps); a stop (time budget, stop request) is agreed at the flush too.
- Rank 0 alone writes (checkpoints, tables, config, manifest, health events). It picks the newest
  valid checkpoint and broadcasts its path; every rank loads that one.
- Randomness inside a step (DiffAugment, WGAN-GP interpolation) comes from a per-rank generator
  seeded from (seed, step, rank): independent across ranks, reproducible on resume, and the shared
  noise generator stays identical on every rank. (One process draws these for the whole batch, so
  with DiffAugment or WGAN-GP a DDP run is not the same sample path as a single-process one.)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ganlib.runs import checkpoint as ckpt
from ganlib.runs.lock import run_lock


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks. Its gradient is again the sum over the ranks (of the output gradients),
    built from this function, so second derivatives (R1, gradient penalty) pass through it too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad.contiguous())


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are taken over the global batch of all ranks.

    The same maths as ``nn.BatchNorm{1,2,3}d`` on the concatenated batch: biased variance to
    normalise, unbiased for the running variance. Works on any device and backend (gloo, NCCL), and
    is twice differentiable. Every rank must hold the same number of samples. Outside training, or
    without an initialised process group of more than one rank, it is plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training or self.running_mean is None,
                                0.0 if self.momentum is None else self.momentum, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world
        x32 = x.float()  # statistics in float32 also under bf16 autocast
        mean = _AllReduceSum.apply(x32.sum(dims)) / count
        centred = x32 - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / count  # two passes: no cancellation
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(x.dtype)


def global_batch_norm_(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.BatchNorm*`` inside ``module`` by a ``GlobalBatchNorm`` sharing its
    parameters and buffers (state-dict keys unchanged, so checkpoints load into plain models)."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            for key in ("weight", "bias"):
                setattr(new, key, getattr(child, key))
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, key, getattr(child, key))
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batch_norm_(child)
    return module



@dataclass
class ProcessContext:
    """A training process on its own: rank 0 of 1, every collective the identity.

    The loop talks to this interface only; ``DistContext`` is the same interface over a process group.
    ``owns_run_lock``: whether this process takes the run lock itself (False when a launcher holds it).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_run_lock: bool = True

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files (rank 0 only)."""
        return self.rank == 0

    @property
    def decides_alone(self) -> bool:
        """Whether a stop can be acted on at any step (one process), or only where all ranks agree."""
        return self.world_size == 1

    @contextlib.contextmanager
    def run_lock(self, run_dir: Path) -> Iterator[None]:
        """Hold the run's lock for the duration, where this process is the one that must."""
        if self.is_writer and self.owns_run_lock:
            with run_lock(run_dir):
                yield
        else:
            yield

    def local_rows(self, x: torch.Tensor, chunks: int = 1) -> torch.Tensor:
        """This rank's rows of ``x``, the concatenation of ``chunks`` global batches (one per D update)."""
        return x

    def share_batch_statistics(self, module: nn.Module) -> nn.Module:
        """Batch statistics over all ranks' samples in every batch-norm layer of ``module`` (in place)."""
        return module

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as the training step calls it (data-parallel: gradients averaged over the ranks)."""
        return module

    def mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def any_rank(self, flag: bool) -> bool:
        return flag

    def latest_checkpoint(self, directory: Path) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid checkpoint of ``directory`` (corrupt ones are moved aside), with its state."""
        return ckpt.latest_checkpoint(directory)

    def step_noise(self, shared: torch.Generator, seed: int, step: int) -> torch.Generator:
        """The generator for the randomness inside one step (DiffAugment, the WGAN-GP mix): the shared one."""
        return shared


@dataclass
class DistContext(ProcessContext):
    """This process's place in an initialised ``torch.distributed`` process group (see the module docstring)."""

    _step_noise: torch.Generator | None = field(default=None, repr=False)

    def local_rows(self, x: torch.Tensor, chunks: int = 1) -> torch.Tensor:
        per_chunk = x.shape[0] // chunks
        local = per_chunk // self.world_size
        parts = x.reshape(chunks, self.world_size, local, *x.shape[1:])[:, self.rank]
        return parts.reshape(chunks * local, *x.shape[1:])

    def share_batch_statistics(self, module: nn.Module) -> nn.Module:
        return global_batch_norm_(module)

    def wrap(self, module: nn.Module) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        # No buffer broadcast before each forward pass: the buffers are identical on all ranks already.
        # (torch 2.15 renamed the option; older versions know only broadcast_buffers.)
        option = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                  else "broadcast_buffers")
        return ddp(module, device_ids=device_ids, **{option: False})

    def mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x / self.world_size

    def any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def latest_checkpoint(self, directory: Path) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0 picks the newest valid checkpoint (moving corrupt ones aside); every rank loads it."""
        found = ckpt.latest_checkpoint(directory) if self.is_writer else None
        chosen = [str(found[0]) if found is not None else None]
        dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None or self.is_writer:
            return found
        return Path(chosen[0]), ckpt.load_checkpoint(Path(chosen[0]))

    def step_noise(self, shared: torch.Generator, seed: int, step: int) -> torch.Generator:
        """A generator different on every rank, fixed by (seed, step, rank); the shared one stays in step."""
        if self._step_noise is None:
            self._step_noise = torch.Generator(device=self.device)
        mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + self.rank * 0x94D049BB133111EB)
        return self._step_noise.manual_seed(mixed % 2**63)
