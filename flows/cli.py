"""What the command lines in flows/ share: flags made from the config's fields, and one way to end.

Every CLI here is a ``main(argv) -> int`` made of these pieces:

- ``cli_parser(__doc__)``: an argparse parser whose own mistakes are one line and exit code 2;
- ``add_config_flags(parser, fields)``: one flag per field of ``RunConfig``, its type, default and help
  taken from the field in ``ganlib/config.py``, so a setting is added there alone and ``--help``
  cannot drift from it; ``config_data`` reads them back (on top of ``--config FILE.json``);
- ``add_dry_run(parser, what)`` and ``print_json``: ``--dry-run`` means the same everywhere: print
  what the command would run (the resolved config, or its plan) as JSON on stdout and exit 0, with no
  Prefect server and nothing written. It resolves as far as the real command would before starting:
  train.py and sweep.py only validate the config (train.py's output is a config.json that ``--config``
  and ``ganlib.training.launch --config`` take back, and it must work on a second machine while the
  first trains); evaluate.py, generate.py and continue_run.py resolve against the existing run, with
  the checks they make before starting; serve.py validates the schedules file;
- ``run_main(body, argv)``: the same exit codes everywhere (see ``run_main``).
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ganlib.config import RunConfig, set_dotted
from ganlib.errors import ConfigError, GanlibError, StorageError, first_line

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

# The fields of RunConfig that flows/train.py and flows/sweep.py take as flags, by dotted name. The
# flag is the field's own name (train.batch_size -> --batch-size) unless RUN_FLAG_NAMES renames it;
# its type, default and help come from the field.
RUN_FIELDS: tuple[str, ...] = (
    "data.dataset", "data.data_root", "data.num_images", "data.image_size", "data.channels",
    "data.rgba_background", "data.classes", "data.limit", "data.split", "data.strict", "data.download",
    "data.resident_limit_mb",
    "model.name", "model.hidden_dim", "model.d_hidden_dim", "model.ngf", "model.ndf", "model.blocks", "model.noise_dim",
    "model.spectral_norm", "model.conditional",
    "train.steps", "train.epochs", "train.batch_size", "train.lr", "train.lr_g", "train.lr_d", "train.lr_decay",
    "train.lr_decay_start", "train.beta1", "train.beta2", "train.loss", "train.d_steps", "train.top_k",
    "train.top_k_decay", "train.r1", "train.r2", "train.r1_every", "train.ada", "train.ada_target", "train.ada_kimg",
    "train.ada_pipeline", "train.ada_supersample", "train.mirror",
    "train.ema_decay",
    "train.diffaug", "train.precision", "train.compile", "train.channels_last", "train.fused_optimizer",
    "train.threads", "train.max_minutes", "train.checkpoint_every",
    "eval.num_samples", "eval.batch_size",
    "gallery.num_samples",
    "dist.nproc_per_node", "dist.nnodes", "dist.rdzv_endpoint", "dist.backend", "dist.timeout_minutes",
    "tracking.mlflow_uri", "tracking.mlflow_experiment",
    "run_id", "out", "device", "seed",
)
RUN_FLAG_NAMES: dict[str, str] = {
    "model.name": "--model",
    "eval.num_samples": "--eval-samples",
    "eval.batch_size": "--eval-batch-size",
    "gallery.num_samples": "--gallery-samples",
    "dist.backend": "--dist-backend",
    "dist.timeout_minutes": "--dist-timeout-minutes",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes end like every other user error: one line, exit code 2."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def cli_parser(doc: str | None, prog: str | None = None) -> OneLineParser:
    """The parser of a CLI whose ``--help`` starts with ``doc`` (its module docstring, examples included)."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


# --- flags from the config's fields -------------------------------------------------------------------


def config_field(dotted: str, model: type[BaseModel] = RunConfig) -> FieldInfo:
    """The pydantic field at ``dotted`` ("train.lr") of ``model``."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[leaf]


def section_doc(dotted: str, model: type[BaseModel] = RunConfig) -> str:
    """The first line of the docstring of the section holding ``dotted`` ("train.lr" -> TrainConfig's)."""
    for section in dotted.split(".")[:-1]:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return (model.__doc__ or "").strip().splitlines()[0]


def flag_name(dotted: str, names: Mapping[str, str]) -> str:
    """``--batch-size`` for ``train.batch_size``, unless ``names`` renames the field."""
    return names.get(dotted) or "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")


def shown_default(value: Any) -> str | None:
    """How ``--help`` writes a field's default: ``(default X)``; None for None (the description says what it means)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_help(field: FieldInfo, default_text: str | None = None) -> str:
    """The field's description and its default, as argparse help (``%`` escaped)."""
    shown = shown_default(field.get_default(call_default_factory=True))
    default = default_text or (f"(default {shown})" if shown is not None else "")
    return " ".join(part for part in ((field.description or "").strip(), default) if part).replace("%", "%%")


def _word_or_int(text: str) -> str | int:
    """A flag's value for a field that takes a word or a number (``--image-size auto`` or ``64``)."""
    return int(text) if text.strip().lstrip("+-").isdigit() else text


def _argument(dotted: str, flag: str, field: FieldInfo) -> dict[str, Any]:
    """argparse keywords for the field's type. Values are not checked here: the config validates them,
    so a bad one gets the same message from a flag, a config file or a flow parameter."""
    kind: Any = field.annotation
    if get_origin(kind) in (Union, types.UnionType):  # X | None: the flag gives an X
        kind = next(a for a in get_args(kind) if a is not type(None))
    metavar = flag.removeprefix("--").upper().replace("-", "_")
    if kind is bool:  # --strict / --no-strict; absent: the config's default
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        metavar = "{" + ",".join(map(str, choices)) + "}"
        if {type(c) for c in choices} == {str, int}:  # 'auto' or a number: a number stays an int
            return {"type": _word_or_int, "metavar": metavar}
        return {"type": type(choices[0]), "metavar": metavar}
    if get_origin(kind) is list:  # one comma-separated string ("a,b"), split by the field's validator
        (item,) = get_args(kind)
        if get_origin(item) is Literal:
            metavar = "{" + ",".join(map(str, get_args(item))) + "}[,...]"
        return {"type": str, "metavar": metavar}
    if kind is Path:
        return {"type": str, "metavar": metavar}
    if kind in (int, float, str):
        return {"type": kind, "metavar": metavar}
    raise TypeError(f"{dotted}: no command-line form for a field of type {field.annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser, fields: Iterable[str],
                     names: Mapping[str, str] | None = None, *, default_text: str | None = None,
                     model: type[BaseModel] = RunConfig) -> dict[str, str]:
    """One flag per field of ``model`` (dotted names), grouped by section in ``--help``.

    Name: ``names`` or the field's own. Type: the field's (int, float, str, path, a ``Literal``'s values,
    a list as one ``a,b`` string, bool as ``--x``/``--no-x``; ``X | None`` as X). Help: the field's
    description and default, or ``default_text`` where the default is something else (the run's).
    An absent flag leaves the field alone (the argparse default is None), so the config's own default holds.
    Each flag's value lands in ``args.<dotted name>`` (``given_fields`` reads them); returns {dotted: flag}.
    """
    names = names or {}
    flags: dict[str, str] = {}
    groups: dict[str, Any] = {}
    for dotted in fields:
        field = config_field(dotted, model)
        flag = flag_name(dotted, names)
        if flag in flags.values() or dotted in flags:
            raise ValueError(f"{dotted}: {flag} is taken twice; rename one in the flag names")
        section = dotted.rpartition(".")[0]
        if section not in groups:
            title = section or "run"
            groups[section] = parser.add_argument_group(title, section_doc(dotted, model) if section else None)
        groups[section].add_argument(flag, dest=dotted, default=None, help=field_help(field, default_text),
                                     **_argument(dotted, flag, field))
        flags[dotted] = flag
    return flags


def given_fields(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The fields whose flag was given, by dotted name: ``{"train.lr": 0.001}``."""
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def add_config_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.json",
                        help="JSON file with a full or partial RunConfig (a run's config.json, or what "
                        "flows/train.py --dry-run printed); the flags given override it")


def config_data(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The config as plain data: ``--config FILE.json`` (when given) with the flags given set on top."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"--config: cannot read {args.config}: {first_line(err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config: {args.config} does not hold a JSON object (a RunConfig's fields)")
    for dotted, value in given_fields(args, fields).items():
        set_dotted(data, dotted, value)
    return data


def add_run_flags(parser: argparse.ArgumentParser, run_id_help: str, *, required: bool = True) -> None:
    """``--run-id`` (required unless ``required=False``: the command then checks it) and ``--out``: the
    existing run a command works on."""
    out = config_field("out")
    parser.add_argument("--run-id", required=required, help=run_id_help)
    parser.add_argument("--out", type=Path, default=out.default, help=field_help(out))


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``: overrides the device saved with the run."""
    parser.add_argument("--device", help=field_help(config_field("device"), "(default: the run's)"))


# --- --dry-run ----------------------------------------------------------------------------------------


def add_dry_run(parser: argparse.ArgumentParser, what: str) -> None:
    """``--dry-run``: the same meaning in every CLI; ``what`` says what it prints."""
    parser.add_argument("--dry-run", action="store_true",
                        help=f"print {what} as JSON and exit 0, doing nothing (no Prefect server, nothing "
                        "written); mistakes found on the way exit 2 as usual")


def print_json(value: Any) -> int:
    """What ``--dry-run`` prints: ``value`` (a pydantic model or plain data) as indented JSON, keys sorted."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    print(json.dumps(value, indent=2, sort_keys=True, default=str))
    return EXIT_OK


# --- how a command ends -------------------------------------------------------------------------------


def scores_line(best: dict[str, Any]) -> str:
    """The best checkpoint's headline scores for a CLI's last line: the domain classifier's FD and IS on
    labelled data, the self-supervised space's FD where there are no labels (``fd`` is NaN there)."""
    fd = best.get("fd")
    if fd is not None and fd == fd:
        return f"FD {fd:.2f}  IS {best['is_mean']:.2f}  classes {best['classes_present']}"
    ssl_fd = best.get("ssl_fd")
    return f"FD {ssl_fd:.2f} (self-supervised space)" if ssl_fd is not None else "FD nan (not scored)"


def run_main(body: Callable[[list[str] | None], int | None], argv: list[str] | None = None, *,
             on_interrupt: str = "") -> int:
    """Run a CLI's ``body(argv)``; how it ends becomes the exit code every CLI here shares.

    0: done (or the code ``body`` returns). 1: failed, an unexpected exception (a bug), printed with
    its traceback. 2: a user error, a ``GanlibError``, printed as one line ``error: ...`` without a
    traceback (argparse's mistakes exit 2 the same way, see ``OneLineParser``), and so is a full disk (a
    ``StorageError``, or an ``OSError`` ENOSPC from a library's own write), with ``on_interrupt``'s advice
    on going on. 130 / 143: interrupted by SIGINT (Ctrl-C) / SIGTERM, as 128 + the signal, with one line
    saying how to go on from there (training checkpoints the step it was on first: ``tasks.common.StopSignals``).
    """
    from prefect.exceptions import TerminationSignal

    from tasks.common import RunInterrupted

    def terminate(signum: int, frame: types.FrameType | None) -> None:
        # SIGTERM outside a training step (preparation, evaluation, the gallery, or Prefect re-sending the
        # signal after its own clean-up): the same one line and exit 143 as Ctrl-C's 130, not a silent death.
        raise TerminationSignal(signal=signum)

    main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        code = body(argv)
    except GanlibError as err:
        how = f"; {on_interrupt}" if isinstance(err, StorageError) and on_interrupt else ""
        print(f"error: {first_line(err)}{how}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as err:  # a stage stopped politely on a signal, its work saved
        print(first_line(err), file=sys.stderr)
        return 128 + err.signum
    except (KeyboardInterrupt, TerminationSignal) as err:
        signum = getattr(err, "signal", None) or signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}" + (f": {on_interrupt}" if on_interrupt else ""),
              file=sys.stderr)
        return 128 + signum
    except Exception as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # met by a write not made
            where = f" ({err.filename})" if err.filename else ""                   # through ganlib.runs.files
            print(f"error: {err.strerror}{where}: free disk space, then {on_interrupt or 'run again'}",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK if code is None else code
