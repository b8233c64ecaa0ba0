"""Speed of the training step at two commits, measured alternately (an A/B of a change to the step).

    git worktree add /tmp/before 27f4f6b            # the commit to compare against
    python -m bench.ab_step --before /tmp/before --batch-size 128,256 --precision bf16

Each measurement times ``--steps`` calls of ganlib's ``train_step`` (``ganlib.training.step``; in older
checkouts ``ganlib.training.loop`` or ``ganlib.train``) after ``--warmup``, in a fresh process that
imports ganlib from one checkout: the mlp preset (28-px gray) with the default run's
DiffAugment translation and EMA 0.999 (``--diffaug none --ema-decay 0`` for the bare step), random
batches from a synthetic uint8 store, Adam as training builds it. Rounds alternate between the two
checkouts, so a change in the machine's load hits both. Only APIs both sides have are used; where a
side's ``Objective`` lacks a later field (``joint_d``) it runs without it, as that commit trained.
Prints the median images/s of each side and appends every measurement to
``bench/results/ab_step.csv`` with the date, device, both commits and the settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import append_csv, commit, parse_diffaug

RESULTS = Path(__file__).resolve().parent / "results" / "ab_step.csv"

# The child: self-contained code that imports ganlib from the checkout it runs in (see ``start``), so
# it works against older commits too, whose ganlib kept these functions elsewhere; prints one JSON line.
CHILD = r"""
import json, sys, time, copy
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"]) if args["threads"] else None
try:  # this layout
    from ganlib.training.step import Objective, adam_implementation, train_step
    from ganlib.sampling import to_unit_range
except ImportError:
    try:  # ganlib/training/loop.py (commit e1cf1d8)
        from ganlib.training.loop import Objective, adam_implementation, to_unit_range, train_step
    except ImportError:  # ganlib/train.py (before e1cf1d8)
        from ganlib.train import Objective, adam_implementation, to_unit_range, train_step
import ganlib
from ganlib.models import build_models
import ganlib.models as models
from types import SimpleNamespace
spec = SimpleNamespace(name=args["model"], conditional=False, noise_dim=100, hidden_dim=args["hidden_dim"],
                       d_hidden_dim=None, ngf=32, ndf=32, spectral_norm=False)
torch.manual_seed(0)
g, d = build_models(spec, 1, 28)
ema = copy.deepcopy(g).requires_grad_(False) if args["ema_decay"] > 0 else None
impl = adam_implementation("auto", torch.device("cpu"))
opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), **impl)
fields = Objective.__dataclass_fields__
extra = {}
if "joint_d" in fields:
    extra["joint_d"] = args["model"] in getattr(models, "BATCH_INDEPENDENT_DISCRIMINATORS", ())
objective = Objective(bf16=args["precision"] == "bf16", diffaug=tuple(args["diffaug"]),
                      ema_decay=args["ema_decay"], **extra)
store = torch.randint(0, 256, (10_000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
pick, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
b = args["batch_size"]
for i in range(args["warmup"] + args["steps"]):
    if i == args["warmup"]:
        start = time.perf_counter()
    real = to_unit_range(store[torch.randint(0, len(store), (b,), generator=pick)])
    z = torch.randn(b, 100, generator=noise)
    train_step(g, d, opt_g, opt_d, real, z, objective, i, ema, noise)
seconds = time.perf_counter() - start
print(json.dumps({"images_per_sec": args["steps"] * b / seconds, "joint_d": bool(extra.get("joint_d")),
                  "ganlib": ganlib.__file__}))
"""


def start(checkout: Path, settings: dict, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The timed steps in a fresh process importing ganlib from ``checkout`` (``env``: its environment).

    The one place where bench/ runs code by location rather than as ``bench.<name>``: the other side
    of the A/B is usually an older checkout (a ``git worktree`` of the commit before the change), with
    its own ganlib and perhaps no ``bench`` package at all. So the child is the code of ``CHILD``, run
    with ``python -c`` in ``checkout``: ``-c`` puts the working directory first on ``sys.path``, ahead
    of the editable install of this checkout, and ``result`` checks which ganlib it imported.
    """
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings)], cwd=checkout, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(child: subprocess.Popen, checkout: Path) -> dict:
    """What a ``start``-ed measurement printed: {"images_per_sec", "joint_d", "ganlib"}; exits on a failure."""
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"error: the step failed in {checkout}:\n{(err.strip().splitlines() or ['?'])[-1]}")
    measured = json.loads(out.strip().splitlines()[-1])
    if not Path(measured["ganlib"]).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"error: the step meant for {checkout} imported ganlib from {measured['ganlib']}")
    return measured


def measure(checkout: Path, settings: dict) -> dict:
    return result(start(checkout, settings), checkout)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the commit to compare against")
    p.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="checkout with the change (default: this one)")
    p.add_argument("--hidden-dim", type=int, default=512, help="mlp width")
    p.add_argument("--batch-size", default="128", help="comma list, e.g. 128,256")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--diffaug", default="translation", help="comma list or none")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--steps", type=int, default=400, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2, help="measurements of each side, alternating")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--csv", type=Path, default=RESULTS, help="where the rows are appended")
    args = p.parse_args()
    for side in (args.before, args.after):
        if not (side / "ganlib" / "__init__.py").is_file():
            p.error(f"{side} is not a ganlib checkout (no ganlib/__init__.py); make one with git worktree add")
    try:
        batches = [int(b) for b in args.batch_size.split(",")]
    except ValueError:
        p.error(f"--batch-size {args.batch_size!r}: expected a comma list of integers, e.g. 128,256")
    try:
        diffaug = list(parse_diffaug(args.diffaug))
    except ValueError as err:
        p.error(str(err))
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    commits = {name: commit(path) for name, path in sides.items()}

    print(f"{'batch':>5} {'before ' + commits['before']:>18} {'after ' + commits['after']:>18} {'change':>7}")
    for batch in batches:
        settings = {"model": "mlp", "hidden_dim": args.hidden_dim, "batch_size": batch,
                    "precision": args.precision, "diffaug": diffaug, "ema_decay": args.ema_decay,
                    "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, path in sides.items():
                out = measure(path, settings)
                rates[name].append(out["images_per_sec"])
                append_csv(args.csv, {"date": dt.datetime.now().isoformat(timespec="seconds"), "side": name,
                                     "commit": commits[name], **{k: v for k, v in settings.items() if k != "diffaug"},
                                     "diffaug": ",".join(diffaug) or "none", "joint_d": out["joint_d"],
                                     "images_per_sec": round(out["images_per_sec"], 1)})
        before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
        print(f"{batch:>5} {before:>18,.0f} {after:>18,.0f} {after / before - 1:>+7.1%}", flush=True)
    print(f"appended to {args.csv}")


if __name__ == "__main__":
    main()
