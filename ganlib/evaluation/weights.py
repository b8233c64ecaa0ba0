"""A network's weights from a file the user supplies, checked by sha256 before they are unpickled.

Inception-v3 and DINOv2 load their weights the same way: the file must exist, have the sha256 the user
gave (``sha256sum FILE``), and hold a plain state dict (read with ``weights_only``, so no code runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ganlib.errors import CheckpointError, ConfigError, first_line
from ganlib.runs.files import sha256_file


def read_checked_state_dict(path: Path, sha256: str, field: str, missing: str, what: str,
                            check: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` once its sha256 is ``sha256``.

    ``field``: the config field named in errors (``eval.dinov2_weights``); ``missing``: what to do when the
    file does not exist; ``what``: the file's kind in words; ``check``: raises ``ValueError`` when the
    state dict is not that kind. One-line ``ConfigError`` (missing file, another hash) or ``CheckpointError``
    (not a plain state dict of that kind).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{field}: {path} does not exist; {missing}")
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ConfigError(f"{field}: {path} has sha256 {actual}, not {sha256.lower()} ({field}_sha256); the file "
                          "is not the one you meant or is damaged")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("no plain state dict in it")
        check(state)
    except Exception as exc:  # the unpickler's errors span many lines; keep the first
        raise CheckpointError(f"{field}: {path} is not {what} ({first_line(exc)[:200]})") from None
    return state
