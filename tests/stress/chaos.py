"""Chaos test: SIGKILL a whole run (train -> evaluate -> gallery) at random moments, then check nothing broke.

    .venv/bin/python tests/stress/chaos.py --cycles 20 --seed 11    # from the repository root: about 2 min
    .venv/bin/python tests/stress/chaos.py --cycles 50 --seed 7 --out /tmp/chaos --keep
    .venv/bin/python -m pytest tests/stress                          # a short run as a test (marked slow, stress)

SIGKILL only, and ganlib's own calls (no Prefect): for the command line as people run it,
``python flows/train.py`` stopped by SIGKILL, SIGTERM and SIGINT in every stage (preparation included)
with a check for leftover processes after each, see ``tests/stress/chaos_flow.py``.

A stress test, not a benchmark: it lives with the tests (``tests/stress/test_chaos.py`` runs it) and
is run as a file, because ``tests/`` is not an importable package (torch-fidelity installs a
top-level package named ``tests`` that would shadow it). It imports nothing but ganlib, from the
project's ``.venv`` (elsewhere: ``PYTHONPATH=.``).

First a reference run of a tiny config goes through training, evaluation and the gallery in one
uninterrupted subprocess. Then a chaos run of the same config is started ``--cycles`` times, each
attempt resuming the previous one and killed with SIGKILL at a moment drawn from ``--seed``:

- ``lock``: while taking the run lock (right after start-up);
- ``train``: a random fraction of a step after a planned step (the planned steps are spread
  over the whole run, so the last step and the final save are reachable too);
- ``checkpoint``: inside the first save at or after a planned step (metrics table,
  serialisation, the ``.pt``, its ``.sha256``), at a random point of the save window measured on
  the reference run; ``--checkpoint-every`` is small so saves are frequent;
- ``eval``: inside ``evaluate_run`` (classifier training, scoring, writing eval.parquet);
- ``gallery``: inside ``make_gallery`` (sampling, the PNG grids, samples.npz).

Training targets come first, then evaluation, then gallery ones. A last attempt runs to the end.
Where each attempt really died is read from markers the worker prints as it enters each stage
(the worker wraps ganlib's writers to print them; nothing in ganlib is changed). Checks:

- the final (and every) checkpoint's G, D, optimiser and data-order state is bit-identical to the
  reference's, and every checkpoint has its checksum and verifies (none moved to ``corrupt/``);
- ``metrics/train.parquet`` has steps 1..N exactly once, with the reference's values;
- ``metrics/eval.parquet`` equals the reference's (timings and checkpoint hashes aside: the
  checkpoints embed their own output path), and its hashes are the checkpoints' own;
- the gallery PNGs are byte-identical and ``samples.npz`` holds identical arrays;
- no temporary files (``.tmp`` in the name) under the run or the shared ``_cache``, no ``.lock``;
- every attempt ended by our kill or by finishing (none refused or crashed).

Prints a table (cycle, target, where it died, step reached), a PASS/FAIL line with counts, and
appends a row to ``bench/results/chaos.csv`` (``--csv``; the record of past runs stays with the
benchmarks' results). Exits 1 on failure (the work directory is then kept).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "chaos.csv"
MARK = "@chaos"  # prefix of marker lines on the worker's stdout
RUN_ID = "chaos"

# Where a marker puts the worker: its phase, and how far along the pipeline that phase is.
PHASE_LEVEL = {"startup": 0, "train": 1, "checkpoint": 1, "eval": 2, "gallery": 3, "finished": 4}


def phase_of(marker: str) -> str:
    if marker in ("start", "lock"):
        return "startup"
    if marker in ("step", "train"):
        return "train"
    if marker.startswith("ckpt:"):
        return "checkpoint"
    if marker.startswith("eval"):
        return "eval"
    if marker.startswith("gallery"):
        return "gallery"
    return "finished"  # release, done


# --- the worker: one attempt of the run, in its own process ----------------------------------------

def _mark(name: str, detail: Any = "") -> None:
    print(f"{MARK} {time.time():.6f} {name} {detail}".rstrip(), flush=True)


def _wrap(module: Any, name: str, marker: str, after: str | None = None,
          detail: Callable[..., Any] | None = None) -> None:
    """Replace ``module.name`` by a version that prints ``marker`` on entry (and ``after`` on return)."""
    original = getattr(module, name, None)
    if original is None:  # ganlib was refactored: the kills still happen, only this stage goes unnamed
        print(f"chaos worker: {module.__name__}.{name} not found; stage {marker!r} will not be marked",
              file=sys.stderr)
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(marker, detail(*args, **kwargs) if detail else "")
        result = original(*args, **kwargs)
        if after:
            _mark(after)
        return result

    setattr(module, name, wrapper)


def worker(config_json: str, store_dir: str, threads: int) -> None:
    """Train, evaluate and render one run under its lock, printing a marker at each stage."""
    _mark("start")
    import torch

    torch.set_num_threads(threads)  # the same in every attempt and the reference: same float sums

    import ganlib.evaluation.evaluate as ganlib_evaluate
    import ganlib.rendering.gallery as ganlib_gallery
    import ganlib.runs.checkpoint as ganlib_checkpoint
    import ganlib.training.loop as ganlib_train
    from ganlib.config import RunConfig
    from ganlib.runs.device import resolve_device
    from ganlib.runs.lock import run_lock
    from ganlib.runs.paths import RunDir

    # Module (and class) attributes are looked up at call time, so these wrappers see every call ganlib makes.
    _wrap(RunDir, "write_train_rows", "ckpt:metrics")  # a method: looked up on the class at each call, too
    _wrap(ganlib_checkpoint, "save_checkpoint", "ckpt:serialize", after="train", detail=lambda p, s: p.name)
    _wrap(ganlib_checkpoint, "atomic_write_bytes", "ckpt:pt")
    _wrap(ganlib_checkpoint, "atomic_write_text", "ckpt:sha256")
    _wrap(ganlib_evaluate, "train_classifier", "eval:classifier", after="eval")
    _wrap(ganlib_evaluate, "save_classifier", "eval:classifier-save", after="eval")
    _wrap(ganlib_evaluate, "load_generator", "eval:score", detail=lambda p, *a, **k: Path(p).name)
    _wrap(ganlib_evaluate, "atomic_path", "eval:write", detail=lambda p: Path(p).name)
    _wrap(ganlib_gallery, "save_grid", "gallery:grid", detail=lambda i, p, **k: Path(p).name)
    _wrap(ganlib_gallery, "save_samples", "gallery:samples")

    cfg = RunConfig.model_validate_json(config_json)
    store = Path(store_dir)
    _mark("lock")
    with run_lock(cfg.run_dir):
        _mark("train")
        ganlib_train.train(cfg, store, on_progress=lambda record: _mark("step", record["step"]))
        _mark("eval")
        table = ganlib_evaluate.evaluate_run(cfg, store)
        best = ganlib_evaluate.best_checkpoint(table, cfg.run_dir)
        _mark("gallery")
        seed = cfg.gallery.seed if cfg.gallery.seed is not None else cfg.seed  # as tasks/gallery.py does
        ganlib_gallery.make_gallery(best, RunDir(cfg.run_dir).gallery, cfg.gallery.num_samples, seed,
                                    device=resolve_device(cfg.device), batch_size=cfg.eval.batch_size)
        _mark("release")
    _mark("done")


# --- the driver -----------------------------------------------------------------------------------

@dataclass
class Target:
    """When to kill an attempt: on reaching a stage, after a delay drawn from the seeded RNG."""

    kind: str  # none | lock | train | checkpoint | eval | gallery
    at_step: int = 0  # train, checkpoint: the step (or the first save at or after it) to aim at
    fraction: float = 0.0  # where in the stage's window (a step, a save, the whole stage) to kill

    def describe(self) -> str:
        if self.kind in ("train", "checkpoint"):
            return f"{'step' if self.kind == 'train' else 'save'} {self.at_step}+{self.fraction:.2f}"
        return self.kind if self.kind in ("none", "lock") else f"{self.kind} @{self.fraction:.2f}"


@dataclass
class Attempt:
    rc: int
    killed: bool
    markers: list[tuple[float, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def last(self) -> tuple[str, str]:
        return (self.markers[-1][1], self.markers[-1][2]) if self.markers else ("start", "")

    @property
    def max_step(self) -> int:
        return max((int(d) for _, m, d in self.markers if m == "step"), default=0)


@dataclass
class Windows:
    """Stage durations measured on the reference run, which scale the random kill delays."""

    step_s: float
    save_s: float
    classifier_s: float
    eval_s: float  # without the classifier training (cached after its first success)
    gallery_s: float

    @classmethod
    def measure(cls, markers: list[tuple[float, str, str]]) -> Windows:
        times: dict[str, list[float]] = {}
        for t, m, _ in markers:
            times.setdefault(m, []).append(t)
        steps = times["step"]
        saves = [b - a for a, b in zip(times["ckpt:metrics"], times["train"][1:], strict=False)]
        classifier = times["eval"][1] - times["eval:classifier"][0] if "eval:classifier" in times else 0.0
        return cls(step_s=statistics.median(b - a for a, b in zip(steps, steps[1:], strict=False)),
                   save_s=statistics.median(saves), classifier_s=classifier,
                   eval_s=times["gallery"][0] - times["eval"][0] - classifier,
                   gallery_s=times["release"][0] - times["gallery"][0])


def _parse(line: str) -> tuple[float, str, str] | None:
    parts = line.split(maxsplit=3)
    if len(parts) < 3 or parts[0] != MARK:
        return None
    return float(parts[1]), parts[2], parts[3].strip() if len(parts) > 3 else ""


def run_attempt(config_json: str, store: Path, threads: int, target: Target, windows: Windows | None,
                base_step: int, classifier_cached: bool, log_path: Path, timeout_s: float) -> Attempt:
    """Start one worker; SIGKILL it when ``target`` says; return what it reached."""
    # The worker is this file run by path: tests/ cannot be imported as a package (see the docstring).
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config", config_json,
           "--store", str(store), "--threads", str(threads)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        watchdog = threading.Timer(timeout_s, proc.kill)  # a hung attempt must not hang the bench
        watchdog.start()
        attempt = Attempt(rc=0, killed=False)
        step = base_step  # the last step this attempt reported
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                marker = _parse(line)
                if marker is None:
                    continue
                attempt.markers.append(marker)
                if target.kind == "none" or windows is None:
                    continue
                name, detail = marker[1], marker[2]
                level = PHASE_LEVEL[phase_of(name)]
                delay: float | None = None
                if target.kind == "lock" and name == "lock":
                    delay = target.fraction * 0.003
                elif name == "step":
                    step = int(detail)
                    if target.kind == "train" and step >= max(target.at_step, base_step + 1):
                        delay = target.fraction * windows.step_s
                elif target.kind == "checkpoint" and name == "ckpt:metrics" and step >= target.at_step:
                    delay = target.fraction * windows.save_s
                elif target.kind == "eval" and name == "eval":
                    total = windows.eval_s + (0.0 if classifier_cached else windows.classifier_s)
                    delay = target.fraction * total
                elif target.kind == "gallery" and name == "gallery":
                    delay = target.fraction * windows.gallery_s
                elif level > PHASE_LEVEL.get(target.kind, 1):  # the target stage is behind us: kill now
                    delay = 0.0
                if delay is not None:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)  # a no-op if it has already exited
                    attempt.killed = True
                    break
            assert proc.stdout is not None
            for line in proc.stdout:  # what it printed before it died says where it died
                marker = _parse(line)
                if marker is not None:
                    attempt.markers.append(marker)
        finally:
            proc.wait()  # reap it: an unreaped zombie still answers kill(pid, 0)
            watchdog.cancel()
    attempt.rc = proc.returncode
    attempt.killed = attempt.killed and proc.returncode == -signal.SIGKILL
    attempt.seconds = time.perf_counter() - t0
    return attempt


def build_plan(cycles: int, steps: int, rng: random.Random) -> list[Target]:
    """Training targets first, spread over the whole run, then evaluation, then gallery ones."""
    n_train, n_eval, n_gallery = split_cycles(cycles)
    plan = []
    for i in range(n_train):
        at_step = min(steps, max(1, round((i + rng.random()) * steps / n_train)))  # i-th slice of the run
        r = rng.random()
        if r < 0.1:
            plan.append(Target("lock", fraction=rng.random()))
        elif r < 0.55:
            plan.append(Target("train", at_step=at_step, fraction=rng.random()))
        else:
            plan.append(Target("checkpoint", at_step=at_step, fraction=rng.random()))
    plan += [Target("eval", fraction=rng.random()) for _ in range(n_eval)]
    plan += [Target("gallery", fraction=rng.random()) for _ in range(n_gallery)]
    return plan


def split_cycles(cycles: int) -> tuple[int, int, int]:
    """How many cycles target training, evaluation and the gallery (about 60/20/20)."""
    n_eval = n_gallery = max(1, round(cycles * 0.2)) if cycles >= 3 else 0
    return cycles - n_eval - n_gallery, n_eval, n_gallery


def make_config(out: Path, steps: int, checkpoint_every: int, threads: int) -> Any:
    """The tiny run's config. Its speed settings are given, not ``auto``: each run would probe them by
    timing, and the reference and the chaos run could choose differently (channels-last on in one and
    off in the other: the same model, float sums in another order, checkpoints 1e-5 apart)."""
    from ganlib.config import build_config

    return build_config({
        "run_id": RUN_ID,
        "out": str(out),
        "device": "cpu",
        "data": {"dataset": "digits", "num_images": 400},
        "model": {"name": "dcgan", "ngf": 8, "ndf": 8},
        "train": {"steps": steps, "batch_size": 32, "checkpoint_every": checkpoint_every, "log_every": 1,
                  "precision": "fp32", "channels_last": "on", "threads": threads},
        "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100},
        "gallery": {"num_samples": 2000},  # a samples.npz big enough to be killed while writing it
    })


def _equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def verify(chaos_cfg: Any, ref_cfg: Any, steps: int) -> list[tuple[str, bool, str]]:
    """The checks, as (name, passed, detail)."""
    import numpy as np
    import pandas as pd

    from ganlib.errors import CheckpointError
    from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint
    from ganlib.runs.lock import LOCK_NAME

    run, ref = chaos_cfg.run_dir, ref_cfg.run_dir
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except Exception as err:  # a check that cannot even run has failed
            problem = f"{type(err).__name__}: {err}"
        checks.append((name, problem is None, problem or "ok"))

    def checkpoints_identical() -> str | None:
        mine, theirs = list_checkpoints(run / "checkpoints"), list_checkpoints(ref / "checkpoints")
        if [s for s, _ in mine] != [s for s, _ in theirs]:
            return f"steps {[s for s, _ in mine]} vs reference {[s for s, _ in theirs]}"
        if not mine or mine[-1][0] != steps:
            return f"no final checkpoint at step {steps}"
        differ = []
        for (step, a), (_, b) in zip(mine, theirs, strict=True):
            sa, sb = load_checkpoint(a), load_checkpoint(b)
            differ += [f"{step}:{k}" for k in ("generator", "discriminator", "opt_g", "opt_d", "data")
                       if not _equal(sa[k], sb[k])]
        return f"differ: {', '.join(differ[:8])}" if differ else None

    def checkpoints_verify() -> str | None:
        bad = []
        for step, path in list_checkpoints(run / "checkpoints"):
            if not path.with_name(path.name + ".sha256").is_file():
                bad.append(f"{step}: no .sha256 sidecar (loads, but unverifiable)")
                continue
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                bad.append(f"{step}: {err}")
        corrupt = run / "checkpoints" / "corrupt"
        if corrupt.exists():
            bad.append(f"moved aside as corrupt: {sorted(p.name for p in corrupt.iterdir())}")
        return "; ".join(bad) if bad else None

    def train_table() -> str | None:
        mine = pd.read_parquet(run / "metrics" / "train.parquet")
        if mine["step"].tolist() != list(range(1, steps + 1)):
            counts = Counter(mine["step"].tolist())
            dup = sorted(s for s, n in counts.items() if n > 1)
            missing = sorted(set(range(1, steps + 1)) - set(counts))
            return f"duplicated steps {dup[:10]}, missing {missing[:10]}, {len(mine)} rows"
        theirs = pd.read_parquet(ref / "metrics" / "train.parquet")
        timing = ["images_per_sec"]
        pd.testing.assert_frame_equal(mine.drop(columns=timing), theirs.drop(columns=timing))
        return None

    def relative(table: pd.DataFrame, root: Path) -> pd.DataFrame:
        """Paths into the run (e.g. ``memorisation_png``) written relative to it: each run names its own."""
        table = table.copy()
        for column in table.columns:
            if any(isinstance(v, str) and str(root) in v for v in table[column]):
                table[column] = [v.replace(str(root), "<run>") if isinstance(v, str) else v for v in table[column]]
        return table

    def eval_table() -> str | None:
        mine = relative(pd.read_parquet(run / "metrics" / "eval.parquet"), run)
        theirs = relative(pd.read_parquet(ref / "metrics" / "eval.parquet"), ref)
        skip = ["seconds", "checkpoint_sha256"]
        pd.testing.assert_frame_equal(mine.drop(columns=skip), theirs.drop(columns=skip))
        wrong = []
        for picture in mine.get("memorisation_png", pd.Series(dtype=object)):
            if picture:  # the closest-pairs pictures: there, and the reference's bytes
                a, b = Path(picture.replace("<run>", str(run))), Path(picture.replace("<run>", str(ref)))
                if not a.is_file() or a.read_bytes() != b.read_bytes():
                    wrong.append(f"{a.name} {'differs from the reference' if a.is_file() else 'is missing'}")
        for row in mine.itertuples():
            sidecar = run / "checkpoints" / f"{row.checkpoint}.sha256"
            own = sidecar.read_text().strip() if sidecar.is_file() else "(no sidecar)"
            if own != row.checkpoint_sha256:
                wrong.append(f"{row.checkpoint} has checkpoint_sha256 {row.checkpoint_sha256!r}, "
                             f"its sidecar {own[:12]!r}")
        return "scores equal, but " + "; ".join(wrong) if wrong else None

    def gallery() -> str | None:
        problems = []
        for name in ("grid_5x5.png", "grid_10x10.png"):
            if (run / "gallery" / name).read_bytes() != (ref / "gallery" / name).read_bytes():
                problems.append(f"{name} differs")
        with np.load(run / "gallery" / "samples.npz") as a, np.load(ref / "gallery" / "samples.npz") as b:
            if sorted(a.files) != sorted(b.files):
                problems.append(f"samples.npz keys {sorted(a.files)} vs {sorted(b.files)}")
            problems += [f"samples.npz[{k}] differs" for k in a.files if not np.array_equal(a[k], b[k])]
        return "; ".join(problems) or None

    def no_temp(root: Path) -> Callable[[], str | None]:
        def fn() -> str | None:
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)
            return f"{len(found)} left: {', '.join(found[:6])}" if found else None
        return fn

    def no_lock() -> str | None:
        found = sorted(p.name for p in run.rglob(f"{LOCK_NAME}*"))
        return f"left: {found}" if found else None

    check("final and all checkpoints bit-identical to the reference (G, D, optimisers, data order)",
          checkpoints_identical)
    check("every checkpoint has its .sha256 and verifies; none moved to corrupt/", checkpoints_verify)
    check(f"train.parquet has steps 1..{steps} once each, equal to the reference", train_table)
    check("eval.parquet equals the reference's; its hashes are the checkpoints'; its pictures identical",
          eval_table)
    check("gallery PNGs byte-identical, samples.npz arrays identical", gallery)
    check("no temporary files under the run", no_temp(run))
    check("no temporary files under the shared _cache", no_temp(chaos_cfg.out / "_cache"))
    check("no lock left", no_lock)
    return checks


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> int:
    p = argparse.ArgumentParser(prog="python tests/stress/chaos.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=20, help="killed attempts of the chaos run")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--out", type=Path, help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    p.add_argument("--steps", type=int, help="training steps (default: enough for the training kills)")
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per attempt")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a hung attempt is killed")
    p.add_argument("--csv", type=Path, default=RESULTS, help="where the result row is appended")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.config, args.store, args.threads)
        return 0
    if args.cycles < 0:
        p.error("--cycles must be >= 0")

    from ganlib.data.store import prepare_dataset

    steps = args.steps or max(20, 3 * args.checkpoint_every * split_cycles(args.cycles)[0])
    plan = build_plan(args.cycles, steps, random.Random(args.seed))
    work = args.out or Path(tempfile.mkdtemp(prefix="ganlib-chaos-"))
    if (work / "chaos").exists() or (work / "reference").exists():
        p.error(f"--out {work} already holds a chaos run; use an empty directory")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # Separate output roots: the chaos run must train (and get killed training) its own classifier.
    ref_cfg = make_config(work / "reference", steps, args.checkpoint_every, args.threads)
    chaos_cfg = make_config(work / "chaos", steps, args.checkpoint_every, args.threads)
    ref_store = prepare_dataset(ref_cfg.data, ref_cfg.out)
    chaos_store = prepare_dataset(chaos_cfg.data, chaos_cfg.out)
    print(f"chaos: {args.cycles} cycles, seed {args.seed}, {steps} steps, checkpoint every "
          f"{args.checkpoint_every}, {args.threads} thread(s); work dir {work}")

    reference = run_attempt(ref_cfg.model_dump_json(), ref_store, args.threads, Target("none"), None, 0,
                            False, work / "logs" / "reference.log", args.timeout)
    if reference.rc != 0:
        print(f"FAIL: the reference run failed (rc {reference.rc}); see {work / 'logs' / 'reference.log'}")
        return 1
    windows = Windows.measure(reference.markers)
    print(f"reference: {reference.seconds:.1f} s; windows: step {windows.step_s * 1000:.0f} ms, "
          f"save {windows.save_s * 1000:.0f} ms, classifier {windows.classifier_s:.2f} s, "
          f"eval {windows.eval_s:.2f} s, gallery {windows.gallery_s * 1000:.0f} ms")

    from ganlib.runs.checkpoint import list_checkpoints

    print(f"\n{'cycle':>5}  {'target':<18} {'died in':<11} {'last stage':<28} {'resumed':>7} {'reached':>7} "
          f"{'rc':>4} {'s':>5}")
    killed_in: Counter[str] = Counter()
    unexpected: list[str] = []
    cycles = [*plan, Target("none")]
    for i, target in enumerate(cycles, start=1):
        on_disk = [s for s, _ in list_checkpoints(chaos_cfg.run_dir / "checkpoints")]
        base = max(on_disk, default=0)
        cached = any((chaos_cfg.out / "_cache" / "classifiers").glob("*.stats.pt"))
        attempt = run_attempt(chaos_cfg.model_dump_json(), chaos_store, args.threads, target, windows, base,
                              cached, work / "logs" / f"cycle_{i:03d}.log", args.timeout)
        name, detail = attempt.last
        phase = phase_of(name) if attempt.killed else "-"
        if attempt.killed:
            killed_in[phase] += 1
        elif attempt.rc != 0:
            unexpected.append(f"cycle {i}: rc {attempt.rc} (see {work / 'logs' / f'cycle_{i:03d}.log'})")
        elif target.kind != "none":
            killed_in["not killed (finished first)"] += 1
        label = "final" if i == len(cycles) else target.describe()
        print(f"{i:>5}  {label:<18} {phase:<11} {(name + ' ' + detail).strip()[:28]:<28} {base:>7} "
              f"{attempt.max_step or '-':>7} {attempt.rc:>4} {attempt.seconds:>5.1f}")
    final_rc = attempt.rc

    checks = verify(chaos_cfg, ref_cfg, steps)
    checks.append(("every attempt ended by our kill or by finishing; the last one finished",
                   not unexpected and final_rc == 0, "; ".join(unexpected) or f"final rc {final_rc}"))
    print()
    for name, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}" + ("" if ok else f": {detail}"))
    passed = sum(ok for _, ok, _ in checks)
    result = "PASS" if passed == len(checks) else "FAIL"
    kills = sum(n for k, n in killed_in.items() if k in PHASE_LEVEL)
    phases = ("startup", "train", "checkpoint", "eval", "gallery", "finished")
    per_phase = ", ".join(f"{k} {killed_in[k]}" for k in phases).replace("finished", "after done")
    not_killed = killed_in["not killed (finished first)"]
    seconds = time.perf_counter() - t_start
    print(f"\n{result}: {args.cycles} cycles, {kills} kills ({per_phase}), {not_killed} finished before "
          f"the kill; {passed}/{len(checks)} checks passed ({seconds:.0f} s)")

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.is_file()
    with open(args.csv, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["date", "commit", "cycles", "seed", "steps", "checkpoint_every",
                             *(f"kills_{k}" for k in ("startup", "train", "checkpoint", "eval", "gallery",
                                                      "after_done")),
                             "not_killed", "checks_passed", "checks_total", "failed_checks", "result",
                             "seconds"])
        writer.writerow([dt.datetime.now().isoformat(timespec="seconds"), _commit(), args.cycles, args.seed,
                         steps, args.checkpoint_every, *(killed_in[k] for k in phases), not_killed,
                         passed, len(checks),
                         "; ".join(name for name, ok, _ in checks if not ok), result, round(seconds, 1)])
    print(f"appended to {args.csv}")
    if result == "PASS" and not args.keep and args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    elif result != "PASS":
        print(f"work directory kept for inspection: {work}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
