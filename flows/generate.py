"""Generate N images from a run's best (or a named) checkpoint, as an npz file or a PNG folder.

Run it:

    python flows/generate.py --run-id digits-long                        # 10,000 images, best checkpoint, npz
    python flows/generate.py --run-id digits-long --format png -n 500    # a folder of 500 PNGs
    python flows/generate.py --run-id digits-long --checkpoint 2000 --seed 123
    python flows/generate.py --run-id digits-long --checkpoint latest --dest /tmp/samples.npz
    python flows/generate.py --run-id digits-long --format png -n 100 --truncation 1.0  # typical, less varied
    python flows/generate.py --run-id digits-long -n 500 --dry-run      # the plan as JSON; nothing is written
    python flows/generate.py --model-file step_010000-ema.onnx -n 500  # from an exported generator (flows/export.py)

The latent seed is recorded with the images (``seed`` in the npz, ``meta.json`` in the folder):
``ganlib.rendering.gallery.fixed_noise(n, noise_dim, seed)`` gives the same latents on any machine, and the
latent of image i does not depend on N. The default seed is the run's gallery seed, so the default npz starts
with the images of ``gallery/samples.npz`` and the 5x5 grid. Class-conditional runs (issue #4)
get balanced labels (image i is class i mod K; ``--per-class M`` asks for M of each) and, as
PNGs, one folder per class. By default the images go to ``<run>/generated/``.

``--model-file FILE`` samples from an exported generator (a ``.pt`` or ``.onnx`` of ``flows/export.py``)
instead of a run, on the CPU, as an npz (default: ``generated/`` next to the file); its default seed is
the one its run's default samples use (the model card's ``sample_seed``), so the images are the same.

Like ``flows/train.py``, with no ``PREFECT_API_URL`` set it starts a temporary Prefect server.
``--dry-run`` makes the same checks and prints the plan (checkpoint, destination, number of images,
seed, ...) as JSON.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("generate", sys.argv[1:])

import argparse
import math
import re
from pathlib import Path
from typing import Any

from flows.cli import (  # before prefect: importing flows sets the project's Prefect defaults
    add_device_flag,
    add_dry_run,
    add_run_flags,
    cli_parser,
    print_json,
    run_main,
)

# isort: split
from prefect import flow, runtime

from flows.server import temporary_server
from ganlib.config import DEVICE_PATTERN
from ganlib.errors import ConfigError
from ganlib.export import load_exported
from ganlib.rendering.gallery import GALLERY_NOISE_OFFSET, resolve_checkpoint
from ganlib.runs.checkpoint import list_checkpoints
from ganlib.runs.device import resolve_device
from ganlib.runs.paths import RunDir
from tasks.export import sample_exported_task
from tasks.gallery import generate_task

DEFAULT_NUM_SAMPLES = 10_000  # as in the tutorial


def plan_generation(run_dir: Path | str, checkpoint: str = "best", num_samples: int = DEFAULT_NUM_SAMPLES,
                    fmt: str = "npz", seed: int | None = None, dest: Path | str | None = None,
                    per_class: int | None = None, device: str | None = None,
                    batch_size: int | None = None, overwrite: bool = False,
                    truncation: float | None = None) -> dict[str, Any]:
    """Resolve what to generate, checking everything before any work; ``GanlibError`` (one line) if wrong.

    Returns the arguments of ``generate_task``: checkpoint path, dest, num_samples, seed, fmt,
    device, batch_size, class_names, use_ema, truncation. ``per_class`` (conditional runs only) sets
    num_samples to per_class x the number of classes. A ``dest`` that is an existing directory gets the
    default file name inside it; an existing file or folder is replaced only with ``overwrite``, and
    nothing is ever written among a run's checkpoints.
    """
    paths = RunDir(Path(run_dir))
    config = paths.load_config()
    if fmt not in ("npz", "png"):
        raise ConfigError(f"format: 'npz' or 'png', not {fmt!r}")
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be at least 1 (got {num_samples})")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1 (got {batch_size})")
    _check_truncation(truncation)
    path = resolve_checkpoint(paths.root, checkpoint)
    manifest = paths.read_manifest()
    if per_class is not None:
        if not getattr(config.model, "conditional", False):
            raise ConfigError(f"--per-class: run {config.run_id!r} is not class-conditional; use -n instead")
        num_samples = per_class * int(manifest.get("num_classes") or 0)
    if seed is None:  # the gallery's latents: the first images are those of gallery/samples.npz
        seed = config.gallery_seed + GALLERY_NOISE_OFFSET
    name = f"{path.stem}-seed{seed}-n{num_samples}{_truncation_tag(truncation)}"
    default_name = f"{name}.npz" if fmt == "npz" else name
    if dest is None:
        dest = paths.root / "generated" / default_name
    else:
        dest = Path(dest)
        if dest.is_dir() and not (fmt == "png" and (dest / "meta.json").is_file()):  # not an earlier PNG export:
            dest = dest / default_name  # a directory to write into
        _check_destination(dest, paths, overwrite)
    device = device or config.device
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise ConfigError(f"--device: {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    resolve_device(device)  # a GPU asked for where there is none: said now, before any server starts
    return {"checkpoint": str(path), "dest": str(dest), "num_samples": num_samples, "seed": seed, "fmt": fmt,
            "device": device, "batch_size": batch_size or config.eval.batch_size,
            "class_names": manifest.get("class_names"), "use_ema": getattr(config.eval, "use_ema", True),
            "truncation": truncation}


def plan_file_generation(model_file: Path | str, num_samples: int = DEFAULT_NUM_SAMPLES, fmt: str = "npz",
                         seed: int | None = None, dest: Path | str | None = None, per_class: int | None = None,
                         batch_size: int = 500, overwrite: bool = False,
                         truncation: float | None = None) -> dict[str, Any]:
    """``plan_generation`` for an exported generator file (``flows/export.py``): the arguments of
    ``sample_exported_task`` (model_file, dest, num_samples, seed, batch_size, truncation); ``GanlibError``
    if wrong."""
    card = load_exported(model_file).card
    if fmt != "npz":
        raise ConfigError(f"--format {fmt}: an exported generator writes npz files only; use --format npz, "
                          "or --run-id for PNGs")
    if per_class is not None:
        if not card["conditional"]:
            raise ConfigError(f"--per-class: {model_file} is not class-conditional; use -n instead")
        num_samples = per_class * int(card["num_classes"])
    if num_samples < 1:
        raise ConfigError(f"num_samples: must be at least 1 (got {num_samples})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1 (got {batch_size})")
    _check_truncation(truncation)
    if seed is None:
        seed = card.get("sample_seed") or 0
    model_file = Path(model_file)
    default_name = f"{model_file.stem}-seed{seed}-n{num_samples}{_truncation_tag(truncation)}.npz"
    dest = model_file.parent / "generated" / default_name if dest is None else Path(dest)
    if dest.is_dir():
        dest = dest / default_name
    if dest.exists() and not overwrite:
        raise ConfigError(f"--dest: {dest} exists; add --overwrite to replace it, or choose another --dest")
    return {"model_file": str(model_file), "dest": str(dest), "num_samples": num_samples, "seed": seed,
            "batch_size": batch_size, "truncation": truncation}


def _check_truncation(truncation: float | None) -> None:
    if truncation is not None and not (math.isfinite(truncation) and truncation > 0):
        raise ConfigError(f"--truncation: {truncation:g} is not a cut-off; give standard deviations above 0 "
                          "(1.0 is a common choice: smaller gives more typical images and less variety), or leave "
                          "it out for none")


def _truncation_tag(truncation: float | None) -> str:
    """The part of a default file name that says the images were truncated, e.g. ``-trunc0.7``."""
    return "" if truncation is None else f"-trunc{truncation:g}"


def _check_destination(dest: Path, run: RunDir, overwrite: bool) -> None:
    """A one-line ``ConfigError`` for a destination that would destroy something."""
    where = dest.resolve()
    if run.checkpoints.resolve() in (where, *where.parents) or list_checkpoints(where.parent):
        raise ConfigError(f"--dest: {dest} is among a run's checkpoints; samples are never written there, "
                          "choose another --dest")
    if dest.exists() and not overwrite:
        raise ConfigError(f"--dest: {dest} exists; add --overwrite to replace it, or choose another --dest")


def _flow_run_name() -> str:
    p = runtime.flow_run.parameters
    return f"generate-{Path(p.get('run_dir', 'run')).name}-{p.get('checkpoint', 'best')}-n{p.get('num_samples')}"


@flow(name="generate-samples", flow_run_name=_flow_run_name, log_prints=True)
def generate_samples(run_dir: str, checkpoint: str = "best", num_samples: int = DEFAULT_NUM_SAMPLES,
                     fmt: str = "npz", seed: int | None = None, dest: str | None = None,
                     per_class: int | None = None, device: str | None = None,
                     overwrite: bool = False, batch_size: int | None = None,
                     truncation: float | None = None) -> dict[str, Any]:
    """Generate ``num_samples`` images from a checkpoint of the run in ``run_dir``; returns where and how."""
    plan = plan_generation(run_dir, checkpoint, num_samples, fmt, seed, dest, per_class, device,
                           batch_size=batch_size, overwrite=overwrite, truncation=truncation)
    record = generate_task(**plan)
    print(f"wrote {record['num_samples']} images to {record['path']} ({record['checkpoint']}, "
          f"step {record['step']}, seed {record['seed']}, {record['weights']} weights{_truncated(record)})")
    return record


@flow(name="generate-from-file", log_prints=True)
def generate_from_file(model_file: str, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int | None = None,
                       dest: str | None = None, per_class: int | None = None,
                       overwrite: bool = False, batch_size: int = 500,
                       truncation: float | None = None) -> dict[str, Any]:
    """Generate ``num_samples`` images from an exported generator file (.pt or .onnx) into an npz."""
    plan = plan_file_generation(model_file, num_samples, "npz", seed, dest, per_class, batch_size=batch_size,
                                overwrite=overwrite, truncation=truncation)
    record = sample_exported_task(**plan)
    print(f"wrote {record['num_samples']} images to {record['path']} ({Path(model_file).name}, "
          f"step {record['step']}, seed {record['seed']}{_truncated(record)})")
    return record


def _truncated(record: dict[str, Any]) -> str:
    return "" if record.get("truncation") is None else f", truncation {record['truncation']:g}"


# --- command line -------------------------------------------------------------------------------


def _main(argv: list[str] | None) -> int:
    parser = cli_parser(__doc__)
    add_run_flags(parser, "the run to sample from (or --model-file)", required=False)
    parser.add_argument("--model-file", help="an exported generator (.pt or .onnx, flows/export.py) to sample "
                        "from instead of a run")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), latest, a step (2000), a file name or a path")
    parser.add_argument("-n", "--num-samples", type=int, default=DEFAULT_NUM_SAMPLES,
                        help=f"how many images (default {DEFAULT_NUM_SAMPLES:,})")
    parser.add_argument("--per-class", type=int, help="conditional runs: this many images of each class")
    parser.add_argument("--format", choices=("npz", "png"), default="npz",
                        help="npz file (default) or PNG folder")
    parser.add_argument("--seed", type=int, help="latent seed (default: the run's gallery seed)")
    parser.add_argument("--dest",
                        help="where to write: a file (npz) or folder (png), or a directory to write into "
                        "(default: <run>/generated/<checkpoint>-seed<S>-n<N>[.npz])")
    parser.add_argument("--overwrite", action="store_true", help="replace --dest if it exists")
    parser.add_argument("--batch-size", type=int, help="images generated at once (default: the run's "
                        "eval.batch_size; halved by itself where a batch does not fit the GPU)")
    parser.add_argument("--truncation", type=float, metavar="T",
                        help="the truncation trick: latents cut off at T standard deviations (e.g. 1.0; smaller is "
                        "more typical and less varied; default none). Image i stays image i, drawn to the typical")
    add_device_flag(parser)
    add_dry_run(parser, "the plan (checkpoint, destination, number of images, seed, device, ...)")
    args = parser.parse_args(argv)
    if (args.run_id is None) == (args.model_file is None):
        parser.error("give --run-id (a run's checkpoint) or --model-file (an exported generator), one of them")
    if args.model_file is not None:
        return _main_from_file(args)
    run_dir = str(Path(args.out) / args.run_id)
    # Checked here first: a mistake fails in a second, not after the Prefect server has started.
    plan = plan_generation(run_dir, args.checkpoint, args.num_samples, args.format, args.seed, args.dest,
                           args.per_class, args.device, batch_size=args.batch_size, overwrite=args.overwrite,
                           truncation=args.truncation)
    if args.dry_run:
        return print_json(plan)
    with temporary_server():
        record = generate_samples(run_dir, args.checkpoint, args.num_samples, args.format, args.seed,
                                  args.dest, args.per_class, args.device, overwrite=args.overwrite,
                                  batch_size=args.batch_size, truncation=args.truncation)
    print(f"done: {record['path']}  {record['num_samples']} images  seed {record['seed']}  "
          f"step {record['step']}")
    return 0


def _main_from_file(args: argparse.Namespace) -> int:
    batch_size = 500 if args.batch_size is None else args.batch_size
    plan = plan_file_generation(args.model_file, args.num_samples, args.format, args.seed, args.dest,
                                args.per_class, batch_size=batch_size, overwrite=args.overwrite,
                                truncation=args.truncation)
    if args.dry_run:
        return print_json(plan)
    with temporary_server():
        record = generate_from_file(args.model_file, args.num_samples, args.seed, args.dest, args.per_class,
                                    overwrite=args.overwrite, batch_size=batch_size, truncation=args.truncation)
    print(f"done: {record['path']}  {record['num_samples']} images  seed {record['seed']}  step {record['step']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(launch.run(main))
