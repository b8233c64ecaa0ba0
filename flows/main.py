"""The one command, ``ganlib <command> [flags]``: each command is a flow's command line in flows/.

    ganlib train --steps 3000 --run-id digits        # = python flows/train.py --steps 3000 --run-id digits
    ganlib evaluate --run-id digits --num-seeds 3
    ganlib generate --run-id digits -n 500 --format png
    ganlib export --run-id digits --format onnx
    ganlib continue --run-id digits --more-steps 500
    ganlib sweep --grid train.lr=1e-4,2e-4 --sweep-id lr
    ganlib serve --check
    ganlib train --help                              # every flag of one command

Installed by ``pip install -e .`` ([project.scripts] in pyproject.toml); ``python flows/<command>.py``
does the same without it. Exit codes are the commands' own (flows/cli.py: 0 done, 1 failed, 2 a user
error, 130/143 interrupted).
"""

from __future__ import annotations

import importlib
import os
import sys

from flows import launch

# command -> (module in flows/, what it does); the module's main(argv) is the command.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flows.train", "the pipeline: prepare data, train (or resume), evaluate, gallery"),
    "evaluate": ("flows.evaluate", "re-score an existing run's checkpoints; choose the best again"),
    "generate": ("flows.generate", "N images from a run's checkpoint or an exported generator"),
    "export": ("flows.export", "a run's generator as TorchScript and ONNX files with a model card"),
    "continue": ("flows.continue_run", "continue a run for more steps, then evaluate and render it"),
    "sweep": ("flows.sweep", "the pipeline over a grid of configurations, compared in one table"),
    "serve": ("flows.serve", "serve the scheduled deployments of deployments.toml"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: ganlib {" + ",".join(COMMANDS) + "} [flags]\n\n" + (__doc__ or "").strip()
            + "\n\ncommands:\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    command_line, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr, end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of {', '.join(COMMANDS)} (see ganlib --help)", file=sys.stderr)
        return 2
    if command_line:  # the process is this command's: start its server while it imports (flows/launch.py)
        launch.begin(name, rest)
    module = importlib.import_module(COMMANDS[name][0])
    # The command's --help and messages say "ganlib train", as typed (argparse's prog is argv[0]'s name).
    program = sys.argv[0] if sys.argv else "ganlib"
    sys.argv[0:1] = [f"{os.path.basename(program) or 'ganlib'} {name}"]
    try:
        return launch.run(lambda: module.main(rest)) if command_line else module.main(rest)
    finally:
        sys.argv[0:1] = [program]


if __name__ == "__main__":
    sys.exit(main())
