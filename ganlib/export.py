"""A checkpoint's generator as files that load without ganlib: TorchScript (``.pt``) and ONNX (``.onnx``).

- ``export_generator``: one checkpoint's G (its EMA by default) to ``<stem>-<weights>.pt`` and/or
  ``.onnx`` plus ``<stem>-<weights>.json``, the model card: latent size, classes, value range, image
  shape, the checkpoint's scores from ``metrics/eval.parquet`` (when evaluated) and the config's hash;
- ``load_exported``: an exported file as a callable ``(z, labels) -> images`` with its card, so
  ``flows/generate.py`` samples from it as from a checkpoint.

Both files take ``z`` (N, noise_dim) float32 and, for a class-conditional generator, ``labels`` (N,)
int64, and give ``images`` (N, C, H, W) float32 in [-1, 1]; N is free (a dynamic axis in ONNX). The
card is embedded in both files too (TorchScript ``_extra_files``, ONNX ``metadata_props``), so a file
copied on its own still says what it is. In a plain PyTorch script::

    G = torch.jit.load("step_010000-ema.pt")
    images = G(torch.randn(16, 100))                 # conditional: G(z, torch.arange(16) % 10)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganlib.errors import CheckpointError, ConfigError, RunError
from ganlib.runs.files import atomic_path, atomic_write_json
from ganlib.runs.paths import RunDir
from ganlib.sampling import class_names_for, is_conditional, load_generator

log = logging.getLogger("ganlib")

EXPORT_FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
CARD_KEY = "model_card.json"  # the card's name inside a .pt (extra file) and an .onnx (metadata key)
ONNX_OPSET = 17
INSTALL_HINT = "pip install onnx onnxruntime"
# Bookkeeping columns of eval.parquet that are not scores of the generator.
_NOT_SCORES = {"step", "checkpoint", "best", "checkpoint_sha256", "settings_key", "generator", "use_ema",
               "eval_seed"}


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"onnx,torchscript"`` (or a list) -> the formats, checked; ``ConfigError`` naming a wrong one."""
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    wrong = [f for f in items if f not in EXPORT_FORMATS]
    if wrong or not items:
        raise ConfigError(f"--format: {','.join(wrong) or 'nothing'} is not an export format; give one or both "
                          f"of {','.join(EXPORT_FORMATS)} (comma-separated)")
    return sorted(set(items), key=items.index)


def checkpoint_argument(which: str) -> str:
    """``step_N`` (as in ``step_2000``) -> ``"2000"``; anything else as it is (best, latest, a step, a file)."""
    match = re.fullmatch(r"step_(\d+)", which)
    return str(int(match.group(1))) if match else which


def require_onnx() -> None:
    """``ConfigError`` with the install hint when onnx or onnxruntime is missing."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"ONNX export needs the {module} package, which is not installed: "
                              f"{INSTALL_HINT} (or --format torchscript)") from None


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a config's canonical JSON (keys sorted, no spaces): equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checkpoint_scores(run_dir: Path, checkpoint_name: str, weights: str) -> dict[str, Any]:
    """The row of ``metrics/eval.parquet`` for this checkpoint and generator (raw/ema) as plain values, NaN
    as None; ``{}`` when the run has no evaluation of it."""
    try:
        table = RunDir(run_dir).read_table(RunDir(run_dir).eval_metrics, fix="the model card has no scores")
    except RunError as err:  # the model card goes without scores, and says why in the log
        log.warning("%s", err)
        return {}
    if table is None or "checkpoint" not in table:
        return {}
    rows = table[table["checkpoint"] == checkpoint_name]
    if "generator" in rows and (rows["generator"] == weights).any():
        rows = rows[rows["generator"] == weights]
    if rows.empty:
        return {}
    scores: dict[str, Any] = {}
    for key, value in rows.iloc[-1].items():
        if key in _NOT_SCORES or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        value = value.item() if hasattr(value, "item") else value
        scores[str(key)] = None if isinstance(value, float) and math.isnan(value) else value
    return scores


class _Exportable(nn.Module):
    """G with the exported signature: ``(z)`` or ``(z, labels)`` -> float32 images."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = self.generator(z) if labels is None else self.generator(z, labels)
        return images.float()


def export_paths(out_dir: Path, checkpoint: Path, weights: str, formats: Sequence[str]) -> dict[str, Path]:
    """Where ``export_generator`` writes: {format: path, ..., "card": path}, named ``<stem>-<weights>``."""
    stem = f"{Path(checkpoint).stem}-{weights}"
    paths = {f: Path(out_dir) / f"{stem}{SUFFIXES[f]}" for f in formats}
    return {**paths, "card": Path(out_dir) / f"{stem}.json"}


def model_card(meta: dict[str, Any], checkpoint: Path, run_dir: Path, class_names: Sequence[str] | None,
               sample_seed: int | None) -> dict[str, Any]:
    """What an exported generator is: inputs, outputs, classes, where it came from and how good it was."""
    config = meta["config"]
    conditional = is_conditional(meta)
    num_classes = int(meta.get("num_classes") or 0)
    return {
        "format_version": 1,
        "run_id": config.get("run_id"), "checkpoint": Path(checkpoint).name, "step": int(meta["step"]),
        "weights": meta["weights"], "model": config["model"]["name"],
        "noise_dim": int(config["model"]["noise_dim"]),
        "conditional": conditional, "num_classes": num_classes if conditional else 0,
        "class_names": class_names_for(num_classes, class_names) if conditional else None,
        "image_shape": [int(x) for x in meta["image_shape"]], "value_range": [-1.0, 1.0],
        "inputs": {"z": "(N, noise_dim) float32, standard normal",
                   **({"labels": "(N,) int64 class indices"} if conditional else {})},
        "outputs": {"images": "(N, C, H, W) float32 in [-1, 1]; uint8 = round((x + 1) * 127.5)"},
        "sample_seed": sample_seed,
        "scores": checkpoint_scores(run_dir, Path(checkpoint).name, meta["weights"]),
        "config_sha256": config_hash(config),
    }


def export_generator(checkpoint: Path, out_dir: Path, formats: Sequence[str] = EXPORT_FORMATS,
                     use_ema: bool = True, class_names: Sequence[str] | None = None,
                     sample_seed: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export the generator of ``checkpoint`` (a run's ``checkpoints/step_N.pt``) into ``out_dir``.

    Writes ``<stem>-<weights>.pt`` (TorchScript, traced) and/or ``.onnx`` (opset 17, dynamic batch axis on
    every input and output) and the model card ``<stem>-<weights>.json``, each atomically. Existing files
    are replaced only with ``overwrite`` (else ``ConfigError``). Returns the card plus ``files``
    {format: path}. ``sample_seed``: recorded in the card as the latent seed that reproduces the run's
    default samples (``flows/generate.py``).
    """
    formats = parse_formats(formats)
    if "onnx" in formats:
        require_onnx()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    generator, meta = load_generator(checkpoint, "cpu", use_ema=use_ema)
    paths = export_paths(out_dir, checkpoint, meta["weights"], formats)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; add --overwrite to replace it, or choose another --out-dir")
    card = model_card(meta, checkpoint, checkpoint.parent.parent, class_names, sample_seed)
    card_json = json.dumps(card, indent=2, sort_keys=True)
    module = _Exportable(generator).eval()
    z = torch.randn(2, card["noise_dim"], generator=torch.Generator().manual_seed(0))
    example = (z, torch.tensor([0, card["num_classes"] - 1])) if card["conditional"] else (z,)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # torch marks torch.jit deprecated in favour of torch.export, whose .pt2 files need a matching torch
        # to load; TorchScript is still the file any PyTorch script loads with one call.
        warnings.simplefilter("ignore", FutureWarning)
        if "torchscript" in formats:
            traced = torch.jit.trace(module, example)
            with atomic_path(paths["torchscript"]) as tmp, open(tmp, "wb") as f:  # a file: a full disk is OSError
                torch.jit.save(traced, f, _extra_files={CARD_KEY: card_json})
        if "onnx" in formats:
            _export_onnx(module, example, paths["onnx"], card_json)
    atomic_write_json(paths["card"], card)
    return {**card, "files": {f: str(p) for f, p in paths.items()}}


def _export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, card_json: str) -> None:
    import onnx

    names = ["z", "labels"][: len(example)]
    axes = {name: {0: "batch"} for name in (*names, "images")}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript-based exporter: the torch.export-based default needs onnxscript, and this one
        # handles every generator here (checked against onnxruntime in tests/ganlib/test_export.py).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, example, str(tmp), input_names=names, output_names=["images"],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {CARD_KEY: card_json})
        onnx.save(model, str(tmp))


# --- sampling from an exported file ----------------------------------------------------------------------


class ExportedGenerator:
    """An exported ``.pt`` or ``.onnx`` generator, called as ``G(z, labels=None)`` -> (N, C, H, W) float32
    CPU tensor in [-1, 1]; ``card`` is its model card."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"exported generator {self.path} not found")
        suffix = self.path.suffix.lower()
        if suffix == ".onnx":
            self._load_onnx()
        elif suffix == ".pt":
            self._load_torchscript()
        else:
            raise ConfigError(f"{self.path}: an exported generator is a .pt (TorchScript) or .onnx file")

    def _load_torchscript(self) -> None:
        extra = {CARD_KEY: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, see export_generator
                self._module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra).eval()
        except RuntimeError as err:
            raise CheckpointError(f"{self.path} is not a TorchScript file (a checkpoint? export it first with "
                                  f"flows/export.py): {str(err).strip().splitlines()[0]}") from None
        self.card = self._parse_card(extra[CARD_KEY])
        self._session = None

    def _load_onnx(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(f"sampling from an .onnx file needs onnxruntime: {INSTALL_HINT}") from None
        try:
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {str(err).strip().splitlines()[0]}"
                                  ) from None
        self.card = self._parse_card(self._session.get_modelmeta().custom_metadata_map.get(CARD_KEY, ""))

    def _parse_card(self, text: str | bytes) -> dict[str, Any]:
        try:
            card = json.loads(text)
        except ValueError:
            raise CheckpointError(f"{self.path} has no ganlib model card; export it with flows/export.py") from None
        return card

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.card["conditional"] and labels is None:
            raise ValueError("a conditional generator needs labels")
        if self._session is not None:
            feed = {"z": z.float().numpy()}
            if self.card["conditional"]:
                feed["labels"] = labels.long().numpy()  # type: ignore[union-attr]
            return torch.from_numpy(self._session.run(["images"], feed)[0])
        with torch.no_grad():
            args = (z.float(), labels.long()) if self.card["conditional"] else (z.float(),)  # type: ignore[union-attr]
            return self._module(*args).float()


def load_exported(path: Path | str) -> ExportedGenerator:
    """An exported generator file (``.pt`` or ``.onnx``); ``GanlibError`` (one line) if it is not one."""
    return ExportedGenerator(path)


def sample_exported(path: Path | str, dest: Path | str, num_samples: int, seed: int,
                    batch_size: int = 500, truncation: float | None = None) -> dict[str, Any]:
    """``num_samples`` images from an exported generator into ``dest`` (npz: ``images`` uint8 (N, C, H, W),
    ``seed``, ``step``, ``checkpoint``, ``weights`` and, when conditional, ``labels``, ``class_names``).

    The latents are ``fixed_noise(num_samples, noise_dim, seed)`` and the labels balanced (image i is
    class i mod K), as ``flows/generate.py`` does from a checkpoint: with the card's ``sample_seed`` the
    images match the run's default samples up to float rounding. ``truncation``: the truncation trick's cut-off
    (``ganlib.sampling.truncate``), recorded with the images.
    """
    from ganlib.rendering.pictures import save_samples
    from ganlib.sampling import fixed_noise, to_uint8, truncate

    generator = load_exported(path)
    card = generator.card
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be at least 1 (got {num_samples})")
    z = truncate(fixed_noise(num_samples, card["noise_dim"], seed), truncation)
    labels = torch.arange(num_samples) % card["num_classes"] if card["conditional"] else None
    chunks = [to_uint8(generator(z[i: i + batch_size], None if labels is None else labels[i: i + batch_size]))
              for i in range(0, num_samples, batch_size)]
    extra = ({"labels": labels.numpy(), "class_names": card["class_names"]} if labels is not None else {})
    if truncation is not None:
        extra["truncation"] = truncation
    save_samples(torch.cat(chunks), Path(dest), seed=seed, step=card["step"], checkpoint=card["checkpoint"],
                 weights=card["weights"], exported=Path(path).name, **extra)
    return {"seed": seed, "step": card["step"], "checkpoint": card["checkpoint"], "weights": card["weights"],
            "num_samples": num_samples, "format": "npz", "path": str(dest), "exported": str(path),
            "truncation": truncation}


__all__ = ["EXPORT_FORMATS", "ExportedGenerator", "checkpoint_argument", "config_hash",
           "export_generator", "load_exported", "parse_formats", "sample_exported"]
