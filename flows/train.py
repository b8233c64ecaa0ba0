"""The GAN pipeline flow: prepare data -> train -> evaluate checkpoints -> render the gallery.

Run it:

    python flows/train.py                                  # embedded digits, defaults, ~5 min on 2 CPU cores
    python flows/train.py --steps 6000 --run-id digits-long
    python flows/train.py --dataset mnist --data-root ../shared/data/mnist --model dcgan
    python flows/train.py --run-id digits-long --steps 9000   # continue that run to 9000 steps
    python flows/train.py --dry-run                        # print the resolved config and exit

Everything lands in <out>/<run-id>/ (default out: artifacts). Running again with the same
--run-id resumes from the newest checkpoint.
"""

from __future__ import annotations  # noqa: I001 (tasks is imported before prefect on purpose)

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (sets the project's Prefect defaults before prefect is imported)
from prefect import flow, runtime
from pydantic import ValidationError

from flows.cli import OneLineParser
from ganlib.config import MODELS, RUN_ID_PATTERN, RunConfig, build_config
from ganlib.errors import GanlibError
from ganlib.runs.files import remove_temporary_files
from ganlib.runs.lock import run_lock
from ganlib.preflight import check_run
from tasks.evaluate import evaluate_task
from tasks.gallery import gallery_task
from tasks.prepare import prepare_dataset_task
from tasks.train import train_task


def _flow_run_name() -> str:
    """'<dataset>-<model>-<run id>'; a run without an id gets the timestamped one it will use."""
    config = runtime.flow_run.parameters.get("config")
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json")
    try:
        cfg = RunConfig.model_validate(config or {})
    except ValidationError:  # the flow itself reports the bad parameter
        return "invalid-config"
    if cfg.run_id is None:
        return cfg.resolved().run_id  # already '<dataset>-<model>-<timestamp>'
    return f"{cfg.data.dataset}-{cfg.model.name}-{cfg.run_id}"


@flow(name="gan-pipeline", flow_run_name=_flow_run_name, log_prints=True)
def gan_pipeline(config: RunConfig = RunConfig()) -> dict[str, Any]:  # noqa: B008 (pydantic default shown in the UI)
    """Prepare the dataset, train (resuming if the run exists), evaluate every checkpoint, render the gallery."""
    if config.run_id is None:  # the name the run was given is its id, so a retry finds the same directory
        name = runtime.flow_run.name
        config = config.model_copy(update={"run_id": name}) if name and re.fullmatch(RUN_ID_PATTERN, name) else config
    config = config.resolved()
    check_run(config)
    with run_lock(config.run_dir):  # the same run id started twice at once is refused
        remove_temporary_files(config.run_dir)  # left by a killed attempt; nobody else writes here
        store = prepare_dataset_task(config.data, str(config.out))
        trained = train_task(config, store["store_dir"])
        evaluation = evaluate_task(config, store["store_dir"])
        return gallery_task(config, evaluation["best_checkpoint"], trained)


# --- command line -------------------------------------------------------------------------------

FLAGS: list[tuple[str, str, type, str]] = [
    # flag, config field (dotted), type, help
    ("--dataset", "data.dataset", str, "digits (embedded, default), mnist, fashion-mnist, kmnist, cifar10, "
     "celeba, folder, npz or idx"),
    ("--data-root", "data.data_root", str, "the source: a directory (mnist family, cifar10, celeba, folder "
     "of images with one sub-folder per class or flat) or a file (npz, idx)"),
    ("--num-images", "data.num_images", int, "digits: how many images to generate (default 20000)"),
    ("--image-size", "data.image_size", int, "28, 32, 64 or 128 (default 28; 128: dcgan or mlp, not the "
     "embedded digits); shorter side resized, then cropped"),
    ("--channels", "data.channels", str, "auto (default: gray if every image is gray), grayscale or rgb"),
    ("--rgba-background", "data.rgba_background", str, "white (default) or black: what transparency becomes"),
    ("--classes", "data.classes", str, "comma-separated class names or indices to keep (labelled datasets)"),
    ("--limit", "data.limit", int, "keep at most this many images"),
    ("--split", "data.split", str, "auto (default), train or test"),
    ("--strict", "data.strict", bool, "fail if any image cannot be read (default: skip and list it)"),
    ("--download", "data.download", bool, "download a torchvision dataset into --data-root if it is missing"),
    ("--resident-limit-mb", "data.resident_limit_mb", int, "largest dataset kept on the training device, "
     "MiB; larger ones stream from disk (default: half the free device memory)"),
    ("--model", "model.name", str, f"{', '.join(MODELS)} (default mlp; resnet: 32 or 64 px)"),
    ("--hidden-dim", "model.hidden_dim", int, "mlp width of the hidden layers (default 512)"),
    ("--ngf", "model.ngf", int, "dcgan generator width (default 32)"),
    ("--ndf", "model.ndf", int, "dcgan discriminator width (default 32)"),
    ("--noise-dim", "model.noise_dim", int, "latent size (default 100)"),
    ("--steps", "train.steps", int, "training steps (default 10000)"),
    ("--epochs", "train.epochs", float, "training epochs instead of --steps"),
    ("--batch-size", "train.batch_size", int, "batch size (default 128)"),
    ("--lr", "train.lr", float, "Adam learning rate (default 2e-4)"),
    ("--lr-g", "train.lr_g", float, "generator learning rate (default: --lr)"),
    ("--lr-d", "train.lr_d", float, "discriminator learning rate (default: --lr)"),
    ("--lr-decay", "train.lr_decay", str, "none (default) or linear: rates fall to 0 over the run's end"),
    ("--lr-decay-start", "train.lr_decay_start", float, "linear decay starts at this fraction of the steps "
     "(default 0.5)"),
    ("--loss", "train.loss", str, "ns (non-saturating, default), hinge, wgan-gp or ls"),
    ("--d-steps", "train.d_steps", int, "discriminator updates per generator update (default 1)"),
    ("--r1", "train.r1", float, "R1 penalty weight on real images (default 0: off)"),
    ("--r1-every", "train.r1_every", int, "apply R1 every this many D updates (lazy; default 1)"),
    ("--ema-decay", "train.ema_decay", float, "generator EMA decay (default 0.999; 0 = off)"),
    ("--spectral-norm", "model.spectral_norm", bool, "spectral normalisation on the discriminator"),
    ("--conditional", "model.conditional", bool, "class-conditional G and D (labelled datasets)"),
    ("--diffaug", "train.diffaug", str, "differentiable augmentation: translation,cutout,color or none "
     "(default translation)"),
    ("--precision", "train.precision", str, "fp32 (default) or bf16 (autocast; faster on GPUs and CPUs with AMX)"),
    ("--compile", "train.compile", bool, "torch.compile G and D"),
    ("--channels-last", "train.channels_last", str, "auto (default: on for the conv models), on or off: "
     "NHWC memory format for the conv models and batches"),
    ("--fused-optimizer", "train.fused_optimizer", str, "auto (default: fused Adam where torch has it), on "
     "or off (foreach)"),
    ("--max-minutes", "train.max_minutes", float,
     "stop training after this many minutes (checkpointed; rerun continues)"),
    ("--checkpoint-every", "train.checkpoint_every", int, "checkpoint interval in steps (default 2500)"),
    ("--eval-samples", "eval.num_samples", int, "generated samples per evaluated checkpoint (default 10000)"),
    ("--gallery-samples", "gallery.num_samples", int, "images saved in gallery/samples.npz (default 10000)"),
    ("--nproc-per-node", "dist.nproc_per_node", int, "training processes on this machine, one per GPU "
     "(default 1; more launches torchrun; --batch-size stays the global batch)"),
    ("--nnodes", "dist.nnodes", int, "machines training together (default 1; see README, Scaling)"),
    ("--rdzv-endpoint", "dist.rdzv_endpoint", str, "HOST:PORT on this machine (machine 0) where the "
     "processes of all machines meet (--nnodes > 1)"),
    ("--dist-backend", "dist.backend", str, "auto (default: nccl on CUDA, gloo on the CPU), nccl or gloo"),
    ("--dist-timeout-minutes", "dist.timeout_minutes", float, "kill the training processes after this many "
     "minutes (the retry resumes)"),
    ("--seed", "seed", int, "run seed (default 7)"),
    ("--device", "device", str, "auto (default), cpu, cuda, cuda:N or mps"),
    ("--run-id", "run_id", str, "run name; reusing one resumes that run (default: dataset-model-timestamp)"),
    ("--out", "out", str, "output root (default artifacts)"),
]


def parse_config(argv: list[str] | None = None) -> tuple[RunConfig, bool]:
    """Build the validated config from command-line flags (and an optional --config JSON file)."""
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="JSON file with a full or partial RunConfig; flags override it")
    for flag, field, kind, help_text in FLAGS:
        if kind is bool:  # a switch: present means true
            parser.add_argument(flag, dest=field, action="store_const", const=True, help=help_text)
            continue
        parser.add_argument(flag, dest=field, type=kind, default=None, help=help_text,
                            metavar=flag[2:].upper().replace("-", "_"))
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    args = parser.parse_args(argv)

    return build_config(config_data(args)).resolved(), args.dry_run


def config_data(args: argparse.Namespace) -> dict[str, Any]:
    """The config as plain data: ``--config FILE.json`` (if given) with the FLAGS given on top."""
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise GanlibError(f"--config: cannot read {args.config}: {err}") from None
    for _, field, _, _ in FLAGS:
        value = getattr(args, field, None)
        if value is None:
            continue
        node = data
        *parents, leaf = field.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def main(argv: list[str] | None = None) -> int:
    try:
        config, dry_run = parse_config(argv)
        if dry_run:
            print(config.to_json(), end="")
            return 0
        check_run(config)  # fail in a second, not after the Prefect server has started
        summary = gan_pipeline(config)
        best = summary["best"]
        print(f"done: {summary['run_dir']}  best {best['checkpoint']}  FD {best['fd']:.2f}  "
              f"IS {best['is_mean']:.2f}  classes {best['classes_present']}  "
              f"gallery {summary['gallery']['grid_5x5']}")
    except GanlibError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run again with the same --run-id to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
