"""Export a run's generator as TorchScript (.pt) and ONNX (.onnx) files, with a model card (.json).

Run it:

    python flows/export.py --run-id digits-long                          # best checkpoint, EMA, both formats
    python flows/export.py --run-id digits-long --checkpoint latest --format onnx
    python flows/export.py --run-id digits-long --checkpoint step_2000 --out-dir /tmp/models
    python flows/export.py --run-id digits-long --weights raw --overwrite
    python flows/export.py --run-id digits-long --dry-run                # the plan as JSON; nothing is written

The files go to <run>/export/ by default, named <checkpoint>-<weights>: step_002000-ema.pt, .onnx and
.json (the model card: latent size, classes, value range [-1, 1], image shape (C, H, W), the scores of
that checkpoint from metrics/eval.parquet, the config's sha256). Both files take z (N, noise_dim) float32
(and, for class-conditional runs, labels (N,) int64) and give images (N, C, H, W) in [-1, 1], for any N:
torch.jit.load("step_002000-ema.pt")(torch.randn(16, 100)) needs PyTorch only, and onnxruntime runs the
.onnx. Existing files are replaced only with --overwrite. ONNX needs `pip install onnx onnxruntime`.
flows/generate.py --model-file FILE samples from either file.

Like flows/train.py, with no PREFECT_API_URL set it starts a temporary Prefect server. --dry-run makes the
same checks (the run, the checkpoint, the formats, the files already there) and prints the plan as JSON.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the launch, on purpose)
import sys

from flows import launch

if __name__ == "__main__":  # first: the temporary Prefect server starts while the imports below run (flows/launch.py)
    launch.begin("export", sys.argv[1:])

from pathlib import Path
from typing import Any

from flows.cli import (  # before prefect: importing flows sets the project's Prefect defaults
    add_dry_run,
    add_run_flags,
    cli_parser,
    print_json,
    run_main,
)

# isort: split
from prefect import flow, runtime

from flows.server import temporary_server
from ganlib.errors import ConfigError
from ganlib.export import EXPORT_FORMATS, checkpoint_argument, export_paths, parse_formats, require_onnx
from ganlib.rendering.gallery import GALLERY_NOISE_OFFSET, resolve_checkpoint
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.paths import RunDir
from tasks.export import export_task


def plan_export(run_dir: Path | str, checkpoint: str = "best", formats: str | list[str] = "onnx,torchscript",
                out_dir: Path | str | None = None, weights: str = "ema", overwrite: bool = False) -> dict[str, Any]:
    """Resolve what to export, checking everything before any work; ``GanlibError`` (one line) if wrong.

    ``checkpoint``: best, latest, step_N, a step, a file name or a path. ``weights``: 'ema' (falls back
    to 'raw' for a checkpoint without EMA) or 'raw'. Returns the arguments of ``export_task`` and
    ``files``, the paths it will write.
    """
    paths = RunDir(Path(run_dir))
    config = paths.load_config()
    fmts = parse_formats(formats)
    if weights not in ("ema", "raw"):
        raise ConfigError(f"--weights: 'ema' or 'raw', not {weights!r}")
    if "onnx" in fmts:
        require_onnx()
    path = resolve_checkpoint(paths.root, checkpoint_argument(checkpoint))
    state = ckpt.load_checkpoint(path)  # verified here, so a corrupt file fails before the server starts
    used = "ema" if weights == "ema" and "generator_ema" in state else "raw"
    out = paths.root / "export" if out_dir is None else Path(out_dir)
    if out.resolve() == paths.checkpoints.resolve() or ckpt.list_checkpoints(out):
        raise ConfigError(f"--out-dir: {out} holds a run's checkpoints; exports are never written there, "
                          "choose another --out-dir")
    files = export_paths(out, path, used, fmts)
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"--out-dir: {existing[0]} exists; add --overwrite to replace it, or choose another "
                          "--out-dir")
    return {"checkpoint": str(path), "out_dir": str(out), "formats": fmts, "use_ema": used == "ema",
            "class_names": paths.read_manifest().get("class_names"),
            "sample_seed": config.gallery_seed + GALLERY_NOISE_OFFSET, "overwrite": overwrite,
            "files": {k: str(v) for k, v in files.items()}}


def _flow_run_name() -> str:
    p = runtime.flow_run.parameters
    return f"export-{Path(p.get('run_dir', 'run')).name}-{p.get('checkpoint', 'best')}"


@flow(name="export-generator", flow_run_name=_flow_run_name, log_prints=True)
def export_generator_flow(run_dir: str, checkpoint: str = "best", formats: str = "onnx,torchscript",
                          out_dir: str | None = None, weights: str = "ema", overwrite: bool = False) -> dict[str, Any]:
    """Export the generator of a checkpoint of the run in ``run_dir``; returns its model card and files."""
    plan = plan_export(run_dir, checkpoint, formats, out_dir, weights, overwrite)
    plan.pop("files")
    record = export_task(**plan)
    print(f"exported {record['checkpoint']} ({record['weights']} weights, step {record['step']}) to "
          + ", ".join(record["files"].values()))
    return record


# --- command line -------------------------------------------------------------------------------


def _main(argv: list[str] | None) -> int:
    parser = cli_parser(__doc__)
    add_run_flags(parser, "the run whose generator to export")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), latest, step_N (step_2000), a step (2000), a file name or a path")
    parser.add_argument("--format", default=",".join(EXPORT_FORMATS), metavar="{onnx,torchscript}[,...]",
                        help="which files, comma-separated (default onnx,torchscript)")
    parser.add_argument("--out-dir", help="where to write (default <run>/export/)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="the moving-average generator (default; raw when the checkpoint has none) or the raw one")
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist")
    add_dry_run(parser, "the plan (checkpoint, formats, files to write, ...)")
    args = parser.parse_args(argv)
    run_dir = str(Path(args.out) / args.run_id)
    # Checked here first: a mistake fails in a second, not after the Prefect server has started.
    plan = plan_export(run_dir, args.checkpoint, args.format, args.out_dir, args.weights, args.overwrite)
    if args.dry_run:
        return print_json(plan)
    with temporary_server():
        record = export_generator_flow(run_dir, args.checkpoint, args.format, args.out_dir, args.weights,
                                       args.overwrite)
    scores = record["scores"]
    scored = f"  FD {scores['fd']:.2f}" if scores.get("fd") is not None else ""
    print(f"done: {'  '.join(record['files'].values())}  step {record['step']}  {record['weights']}{scored}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(launch.run(main))
