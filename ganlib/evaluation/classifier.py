"""The domain classifier used to evaluate generated images.

Evaluation needs a feature extractor that knows the dataset's domain: ImageNet Inception
features say little about 28x28 digits. So, once per dataset, we train a small CNN on the real
prepared images and use it to

* embed images in its penultimate layer (for the Fréchet distance, ``ganlib.evaluation.metrics``),
* predict class probabilities (for the classifier Inception Score and class histograms).

Conventions: images fed to models are float tensors (N, C, H, W) in [-1, 1]; stored images are
uint8 (N, C, H, W) in [0, 255], converted with ``x.float() / 127.5 - 1``.

Training keeps the whole dataset on the target device and indexes batches there; no DataLoader
and no worker processes, which keeps it fast and deterministic for the small datasets involved.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganlib.errors import CheckpointError, first_line
from ganlib.runs.files import atomic_torch_save
from ganlib.sampling import to_unit_range

__all__ = [
    "DomainClassifier",
    "train_classifier",
    "classify",
    "save_classifier",
    "load_classifier",
]

SUPPORTED_IMAGE_SIZES = (28, 32, 64, 128, 256)
SUPPORTED_CHANNELS = (1, 3)

# Identifies classifier files so that a GAN checkpoint or an unrelated tensor file passed by
# mistake is reported as such instead of failing somewhere inside load_state_dict.
_FILE_FORMAT = "ganlib.domain_classifier"
_FILE_VERSION = 1

# Spatial size the convolutional trunk is pooled down to before the fully connected head, the
# same for every input size so the head has a fixed width.
_HEAD_GRID = 4


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    # No conv bias: BatchNorm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DomainClassifier(nn.Module):
    """Small CNN classifier whose penultimate layer serves as an image embedding.

    Architecture (widths chosen so that 1500 training steps at batch 128 on 28x28 take well
    under a minute on a 2-core CPU)::

        [64x64 and 128x128 only: average pool to 32x32]
        conv16 - maxpool2 - BN/ReLU - conv32 - conv32 - maxpool2 - conv64 - conv64
        (3x3 convs, each followed by BatchNorm and ReLU except where noted)
        adaptive avg pool to 4x4 - flatten - dropout - Linear(1024 -> feature_dim) - ReLU
        - dropout - Linear(feature_dim -> num_classes)

    Args:
        in_channels: image channels, 1 or 3.
        image_size: square image side, one of 28, 32, 64, 128.
        num_classes: number of classes K >= 2.
        feature_dim: width of the penultimate (embedding) layer, >= 1.

    Inputs are float (N, in_channels, image_size, image_size) in [-1, 1].
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, feature_dim: int = 128) -> None:
        super().__init__()
        if in_channels not in SUPPORTED_CHANNELS:
            raise ValueError(f"in_channels must be one of {SUPPORTED_CHANNELS}, got {in_channels!r}")
        if image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES}, got {image_size!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.feature_dim = feature_dim

        # 64x64 and 128x128 inputs are averaged down to 32x32 first: the classes of the datasets we
        # use are still recognisable at 32x32, and the full resolution would cost 4x (16x) the compute.
        stem: nn.Module = nn.AvgPool2d(image_size // 32) if image_size >= 64 else nn.Identity()
        self.trunk = nn.Sequential(
            stem,
            # Only one narrow conv at full resolution, and pooled *before* its BatchNorm/ReLU:
            # on CPU the cost of a layer scales with its pixel count, and a conv32-conv32 pair
            # at full resolution (the textbook layout) made training steps 2.5x slower.
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            _conv_block(16, 32),
            _conv_block(32, 32),
            nn.MaxPool2d(2),
            _conv_block(32, 64),
            _conv_block(64, 64),
            # 28 -> 7 and 32 -> 8 after the pools; adaptive pooling maps both to the same grid.
            nn.AdaptiveAvgPool2d(_HEAD_GRID),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(
            nn.Dropout(0.25),
            nn.Linear(64 * _HEAD_GRID * _HEAD_GRID, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))
        # channels_last ("NHWC") made training steps about 20% faster on CPU (oneDNN) and
        # suits tensor cores on GPU. Module.to(device) and load_state_dict keep the layout.
        self.trunk.to(memory_format=torch.channels_last)

    def config(self) -> dict[str, int]:
        """Constructor arguments, enough to rebuild an identical (untrained) model."""
        return {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass returning both outputs.

        Args:
            x: float (N, C, H, W) in [-1, 1].

        Returns:
            ``(features, logits)``: penultimate activations (N, feature_dim) (post-ReLU, so
            non-negative) and class logits (N, num_classes).
        """
        self._check_input(x)
        feats = self.embed(self.trunk(x.contiguous(memory_format=torch.channels_last)))
        return feats, self.head(feats)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim) for float images (N, C, H, W) in [-1, 1]."""
        return self.features_and_logits(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) for float images (N, C, H, W) in [-1, 1]."""
        return self.features_and_logits(x)[1]


def _random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image independently by up to ``max_shift`` pixels in x and y.

    Borders are filled by replicating the edge pixels, which for typical datasets (dark or
    uniform backgrounds) looks like more background rather than an artificial frame.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 around the channel slice yields (N, H, W, C); the
    # permuted view is (N, C, H, W) in channels_last layout, which is what the model wants.
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    num_steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    holdout_fraction: float = 0.1,
    augment: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Train a :class:`DomainClassifier` on real images.

    Args:
        images: uint8 (N, C, H, W) in [0, 255] with C in {1, 3} and H = W in {28, 32, 64, 128}.
        labels: integer (N,) class indices in [0, num_classes).
        num_classes: number of classes K >= 2.
        num_steps: optimisation steps (mini-batches).
        batch_size: mini-batch size (capped at the number of training images).
        lr: peak Adam learning rate; decays to 0 along a cosine schedule.
        seed: seeds the train/holdout split, weight init, batch order, augmentation and dropout.
            On CPU the result is bit-for-bit reproducible. The caller's global RNG state is left
            untouched.
        device: where to train; the whole dataset is moved there.
        holdout_fraction: fraction in (0, 1) of images (randomly chosen) held out to measure
            accuracy; at least one image is held out and at least two are trained on.
        augment: apply random translations of up to 2 pixels to training batches, which helps
            the classifier generalise to generated images that are slightly off-centre.
        on_log: optional callback, called about every 100 steps and at the end with a dict
            ``{"step", "num_steps", "loss", "lr"}`` (plain Python numbers; loss is the mean
            training loss since the previous call).

    Returns:
        ``(model, info)``: the trained model in eval mode on ``device``, and
        ``{"holdout_accuracy": float, "train_steps": int, "num_train": int,
        "num_holdout": int, "seconds": float}``.

    Raises:
        ValueError: on malformed images/labels or invalid hyperparameters.
    """
    started = time.perf_counter()
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        desc = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {desc}")
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square, got H={h}, W={w}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        desc = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape ({n},) matching images, got {desc}")
    if torch.is_floating_point(labels) or labels.dtype == torch.bool or torch.is_complex(labels):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if c not in SUPPORTED_CHANNELS or h not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(
            f"images must have {SUPPORTED_CHANNELS} channels and a side in {SUPPORTED_IMAGE_SIZES}, "
            f"got shape {tuple(images.shape)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("batch_size", batch_size)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (isinstance(holdout_fraction, (int, float)) and 0 < holdout_fraction < 1):
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    labels = labels.to(torch.int64)
    if n > 0 and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    num_holdout = max(1, round(n * holdout_fraction))
    num_train = n - num_holdout
    if num_train < 2:
        raise ValueError(
            f"need at least 3 images to train the classifier with a holdout, got {n} "
            f"(holdout_fraction={holdout_fraction})"
        )

    device = torch.device(device)
    # Forking the RNG (CPU, plus the CUDA device if used) keeps weight init and dropout
    # deterministic without disturbing the caller's random streams.
    fork_devices = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        # The split uses a CPU generator so it is identical whatever the device.
        split_gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=split_gen)
        train_idx, hold_idx = order[:num_train], order[num_train:]
        batch_gen = torch.Generator(device=device).manual_seed(seed + 1)

        # Index on the host, then move: only one copy of the dataset lives on the device.
        x_train, y_train = images[train_idx].to(device), labels[train_idx].to(device)
        x_hold, y_hold = images[hold_idx].to(device), labels[hold_idx].to(device)

        model = DomainClassifier(c, h, num_classes).to(device)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        bs = min(batch_size, num_train)

        perm = torch.randperm(num_train, generator=batch_gen, device=device)
        cursor = 0
        loss_sum = torch.zeros((), device=device)
        loss_count = 0
        for step in range(num_steps):
            # Cosine decay to zero over the run: fast early progress, a settled end point.
            step_lr = 0.5 * lr * (1 + math.cos(math.pi * step / num_steps))
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            # Walk through shuffled epochs; a new permutation when the current one runs out.
            if cursor + bs > num_train:
                perm = torch.randperm(num_train, generator=batch_gen, device=device)
                cursor = 0
            idx = perm[cursor : cursor + bs]
            cursor += bs
            xb = to_unit_range(x_train[idx])
            if augment:
                xb = _random_translate(xb, 2, batch_gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on-device; reading .item() every step would force a sync on GPU.
            loss_sum += loss.detach()
            loss_count += 1
            done = step + 1
            if on_log is not None and (done % 100 == 0 or done == num_steps):
                on_log(
                    {
                        "step": done,
                        "num_steps": num_steps,
                        "loss": float(loss_sum) / loss_count,
                        "lr": step_lr,
                    }
                )
                loss_sum.zero_()
                loss_count = 0

        model.eval()
        correct = 0
        # Convert in chunks: a float copy of a large holdout set can be hundreds of MB.
        for start in range(0, num_holdout, 1000):
            _, probs = classify(model, to_unit_range(x_hold[start : start + 1000]))
            correct += int((probs.argmax(dim=1) == y_hold[start : start + 1000].cpu()).sum())
        accuracy = correct / num_holdout

    info = {
        "holdout_accuracy": accuracy,
        "train_steps": num_steps,
        "num_train": num_train,
        "num_holdout": num_holdout,
        "seconds": time.perf_counter() - started,
    }
    return model, info


@torch.no_grad()
def classify(
    model: DomainClassifier, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed and classify images with a trained classifier.

    Runs in batches on the model's device.

    Args:
        model: a :class:`DomainClassifier` in eval mode (train mode would make the outputs depend
            on the batch through BatchNorm and on chance through dropout).
        images: float (N, C, H, W) in [-1, 1], on any device.
        batch_size: images per forward pass.

    Returns:
        ``(features, probs)`` on the CPU: penultimate features (N, feature_dim) float32 and
        softmax class probabilities (N, num_classes) float32.

    Raises:
        ValueError: if the model is in train mode or the images are not a float 4-D tensor.
    """
    if model.training:
        raise ValueError("classify needs the model in eval mode; call model.eval() first")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        desc = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a 4-D tensor (N, C, H, W), got {desc}")
    if not torch.is_floating_point(images):
        raise ValueError(
            f"images must be float in [-1, 1], got dtype {images.dtype}; convert stored uint8 "
            "images with x.float() / 127.5 - 1"
        )
    _check_positive_int("batch_size", batch_size)
    param = next(model.parameters())
    feats_out, probs_out = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device=param.device, dtype=param.dtype)
        feats, logits = model.features_and_logits(batch)
        feats_out.append(feats.float().cpu())
        probs_out.append(logits.float().softmax(dim=1).cpu())
    if not feats_out:
        return torch.empty(0, model.feature_dim), torch.empty(0, model.num_classes)
    return torch.cat(feats_out), torch.cat(probs_out)


_PLAIN_TYPES = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    """Reject anything ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} must hold only None/bool/int/float/str/list/dict, got {type(value).__name__}")


def save_classifier(model: DomainClassifier, meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a classifier (constructor args, weights and ``meta``) to one file, atomically.

    The file is written to a temporary name next to ``path``, fsynced, then renamed over ``path``
    (``ganlib.runs.files.atomic_torch_save``), so a crash never leaves a truncated classifier a later run would trust.

    Args:
        model: the classifier; weights are stored on the CPU.
        meta: plain data (None/bool/int/float/str, lists and str-keyed dicts of them), e.g. the
            training info and the dataset it was trained on.
        path: destination file; its parent directory is created if needed.
    """
    _check_plain(meta, "meta")
    path = Path(path)
    payload = {
        "format": _FILE_FORMAT,
        "version": _FILE_VERSION,
        "config": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    # A per-process temporary name: two runs evaluating the same dataset at once may both save.
    atomic_torch_save(payload, path)


def load_classifier(
    path: str | os.PathLike[str], device: str | torch.device
) -> tuple[DomainClassifier, dict[str, Any]]:
    """Load a classifier written by :func:`save_classifier`.

    Args:
        path: the classifier file.
        device: where to put the model.

    Returns:
        ``(model, meta)`` with the model in eval mode on ``device``.

    Raises:
        CheckpointError: if the file is missing, unreadable, corrupt or not a classifier file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"domain classifier file {path} not found; rerun so the classifier is trained")
    try:
        payload = torch.load(path, map_location=torch.device(device), weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError("not a ganlib domain classifier file")
        if payload.get("version") != _FILE_VERSION:
            raise ValueError(f"unsupported classifier file version {payload.get('version')!r}")
        model = DomainClassifier(**payload["config"])
        model.load_state_dict(payload["state_dict"])
        meta = payload["meta"]
    except Exception as exc:
        # Errors from the unpickler or load_state_dict can span many lines; keep the first.
        reason = first_line(exc)[:200]
        raise CheckpointError(
            f"domain classifier file {path} is corrupt or unreadable ({reason}); "
            "delete it so the classifier is retrained"
        ) from exc
    return model.to(device).eval(), meta
