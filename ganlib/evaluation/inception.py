"""Inception-v3 features for the standard FID, KID and IS, through torch-fidelity.

The network, its weights and its preprocessing (uint8 RGB resized to 299 px the way TensorFlow's
original FID code did) are torch-fidelity's ``FeatureExtractorInceptionV3``; nothing here
re-implements them. One forward pass gives both the 2048-d pool features (FID, KID, precision and
recall) and the logits (IS).

Weights come from ``eval.inception_weights`` (checked against ``eval.inception_weights_sha256``)
or else from torch-fidelity's own download (cached by torch.hub). Without either, for example
offline, :func:`load_inception` returns no network and the reason: the caller skips the Inception
metrics and records why, instead of failing or inventing numbers.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganlib.config import EvalConfig
from ganlib.errors import first_line
from ganlib.evaluation.weights import read_checked_state_dict
from ganlib.runs.files import atomic_torch_save, sha256_file
from ganlib.sampling import to_uint8

log = logging.getLogger("ganlib")

FEATURE_SPACE = "inception-v3"
FEATURES = ("2048", "logits_unbiased")  # pool features (FID/KID/PRDC), logits without bias (IS, as torch-fidelity)
# torch-fidelity's file name; torch.hub caches the download under it.
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
DOWNLOAD_TIMEOUT_S = 60  # an unreachable host must not hang the evaluation
PROGRESS_EVERY_S = 30  # a progress line with the time left this often (a CPU takes ~15 min per 10,000 images)


@dataclass(frozen=True)
class InceptionNet:
    """A loaded extractor, or why there is none.

    ``status``: ``"ok"`` or ``"skipped: <reason>"`` (what the table records); ``weights_sha256``:
    identifies the weights (part of the key that decides whether old scores can be reused).
    """

    model: nn.Module | None
    status: str
    weights_sha256: str = ""


def _extractor_class() -> type[nn.Module]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError(f"Inception metrics need torch-fidelity: pip install torch-fidelity ({err})") from None
    return FeatureExtractorInceptionV3


def check_weights_file(path: Path, sha256: str) -> None:
    """A ``ConfigError`` (one line) unless ``path`` exists and has this sha256; a ``CheckpointError``
    unless it holds a plain state dict of torch-fidelity's Inception-v3."""
    def is_inception(state: dict[str, torch.Tensor]) -> None:
        if "Mixed_7c.branch_pool.conv.weight" not in state:
            raise ValueError("no Inception-v3 state dict in it (Mixed_7c.branch_pool.conv.weight is missing)")

    read_checked_state_dict(path, sha256, "eval.inception_weights", f"give the path of {WEIGHTS_FILE} or leave it "
                            "empty to let torch-fidelity download the weights", "torch-fidelity's Inception weights",
                            is_inception)


def load_inception(cfg: EvalConfig, device: torch.device) -> InceptionNet:
    """torch-fidelity's Inception-v3 on ``device`` in eval mode, or the reason it is skipped.

    ``cfg.inception``: 'off' skips; 'auto' skips on a CPU (10,000 images at 299 px take many
    minutes there); 'on' always tries. A weights file that is missing, has the wrong sha256 or is
    not Inception weights is a user error (``ConfigError``/``CheckpointError``); a failed download is
    not: it is logged as one warning and returned as the skip reason.
    """
    if cfg.inception == "off":
        return InceptionNet(None, "skipped: eval.inception is 'off'")
    if cfg.inception == "auto" and device.type == "cpu":
        return InceptionNet(None, "skipped: eval.inception 'auto' computes Inception features on a GPU only; "
                                  "set it to 'on' to compute them on this CPU (slow)")
    extractor = _extractor_class()
    if cfg.inception_weights is not None:
        check_weights_file(cfg.inception_weights, cfg.inception_weights_sha256 or "")
        # The file's bytes are the ones the user vouched for with the hash, and were read with
        # weights_only=True above; torch-fidelity then loads them itself.
        model = extractor("inception-v3-compat", list(FEATURES),
                          feature_extractor_weights_path=str(cfg.inception_weights))
        return InceptionNet(model.to(device).eval(), "ok", cfg.inception_weights_sha256.lower())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        model = extractor("inception-v3-compat", list(FEATURES))
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError; a truncated file a RuntimeError
        reason = first_line(err)[:160]
        status = (f"skipped: no eval.inception_weights file and torch-fidelity could not download the weights "
                  f"({type(err).__name__}: {reason}); give eval.inception_weights and its sha256 to compute "
                  "Inception FID/KID/IS offline")
        log.warning("evaluation: Inception FID/KID/IS %s", status)
        return InceptionNet(None, status)
    finally:
        socket.setdefaulttimeout(previous)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    digest = sha256_file(cached) if cached.is_file() else "downloaded"
    return InceptionNet(model.to(device).eval(), "ok", digest)


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) float in [-1, 1], C in {1, 3} -> uint8 RGB (N, 3, H, W), as saved images are."""
    images = to_uint8(images)
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


@torch.no_grad()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64, progress: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool features (N, 2048) and logits (N, 1008), float32 on the CPU, of images (N, C, H, W) in [-1, 1].

    Batches are small: at 299 px one image's activations take about 30 MB. Every ``PROGRESS_EVERY_S``
    seconds a log line says how far it is and about how long is left (on a CPU this takes minutes), unless
    ``progress`` is False (a caller that passes the images in parts and says how far it is itself).
    """
    device = next(model.parameters()).device
    pools, logits = [], []
    started = last_line = time.perf_counter()
    for start in range(0, len(images), batch_size):
        batch = to_inception_input(images[start: start + batch_size]).to(device)
        pool, logit = model(batch)
        pools.append(pool.float().cpu())
        logits.append(logit.float().cpu())
        now, done = time.perf_counter(), min(start + batch_size, len(images))
        if progress and now - last_line >= PROGRESS_EVERY_S and done < len(images):
            last_line = now
            left = (now - started) / done * (len(images) - done)
            log.info("evaluation: Inception features %d/%d images on %s (%.0f s, about %.0f s left)",
                     done, len(images), device.type, now - started, left)
    return torch.cat(pools), torch.cat(logits)


def write_random_weights(path: Path, seed: int = 0) -> str:
    """Save a randomly initialised Inception-v3 state dict in torch-fidelity's layout; return its sha256.

    For tests and timing only: the network has the real architecture and cost, but its scores mean
    nothing.
    """
    base = _extractor_class()

    class _KeepRandom(base):  # type: ignore[misc, valid-type]
        def load_state_dict(self, state_dict, *args, **kwargs):  # noqa: ANN001
            return None  # keep the random initialisation

    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        model = _KeepRandom("inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(empty))
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(path))
    return sha256_file(Path(path))
