"""Checkpoint files: state dicts plus config, written atomically, verified, loaded safely.

A checkpoint ``checkpoints/step_NNNNNN.pt`` is one ``torch.save`` of a dict of tensors and plain
Python values (no pickled classes), so it loads with ``torch.load(weights_only=True)``. Next to
it, ``step_NNNNNN.pt.sha256`` holds the checksum of its bytes, written after it: a checkpoint whose
bytes no longer match is detected on load and moved aside, and the previous one is used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganlib.errors import CheckpointError, StorageError, first_line
from ganlib.runs.files import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from ganlib.runs.paths import checkpoint_name  # noqa: F401 (part of this module's API)
from ganlib.runs.storage import writing

log = logging.getLogger("ganlib")

FORMAT = 1
_NAME = re.compile(r"^step_(\d{6,})\.pt$")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, then its checksum next to it.

    The checksum is written first: a kill between the two writes then leaves a checksum without a
    checkpoint (ignored, and overwritten next time). A write that fails (a full disk) puts the
    checksum back as it was, so the file it describes still verifies.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    data = buffer.getbuffer()
    sidecar = _sidecar(path)
    old_sum = sidecar.read_text() if sidecar.is_file() else None
    try:
        with writing(path):
            atomic_write_text(sidecar, sha256_bytes(data) + "\n")
            atomic_write_bytes(path, bytes(data))
    except OSError as err:
        with contextlib.suppress(OSError):
            if old_sum is None:
                sidecar.unlink(missing_ok=True)
            else:
                atomic_write_text(sidecar, old_sum)
        earlier = [p for _, p in list_checkpoints(path.parent) if p != path]
        kept = (f"{path.name} as it was before is intact" if path.is_file()
                else f"the previous checkpoint {earlier[-1].name} is intact" if earlier
                else "no checkpoint of this run has been saved yet")
        if isinstance(err, StorageError):  # a full disk or a read-only place: the user's to fix, not retried
            named = StorageError(err.errno, err.strerror, str(path))  # the checkpoint, even if its checksum failed
            named.kept = kept
            raise named from None
        raise CheckpointError(f"could not write checkpoint {path}: {err.strerror or err}; run again ({kept})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint; ``CheckpointError`` if it is missing, corrupt or unsafe."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    sidecar = _sidecar(path)
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        if sha256_bytes(data) != expected:
            raise CheckpointError(f"checkpoint {path} does not match its checksum (corrupt or truncated)")
    try:
        # weights_only: never unpickle arbitrary objects from a file someone may have replaced.
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain values; "
                              f"refusing to load it ({first_line(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({first_line(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a ganlib checkpoint of format {FORMAT}")
    return state


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = []
    for p in Path(directory).iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies, with its state; ``None`` if there is none.

    Checkpoints that fail verification are moved to ``directory/corrupt/`` (kept for inspection,
    never deleted) with a warning, and the next older one is tried.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            aside = path.parent / "corrupt"
            aside.mkdir(exist_ok=True)
            for p in (path, _sidecar(path)):
                if p.exists():
                    p.replace(aside / p.name)
            log.warning("%s; moved it to %s and trying the previous checkpoint", err, aside)
            continue
        if not _sidecar(path).is_file():  # copied without it, or its checksum was deleted: it loaded, so keep it
            atomic_write_text(_sidecar(path), sha256_file(path) + "\n")
            log.warning("checkpoint %s had no checksum file: it was loaded unverified (it unpickles as a whole "
                        "checkpoint) and its checksum is now written next to it", path)
        return path, state
    return None


# RNG states as tensors and plain lists, so they survive weights_only loading.

def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators, as a training script does."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # a state per GPU that was visible; fewer may be now
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
