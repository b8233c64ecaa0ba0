"""Chaos for the whole command line: ``python flows/train.py`` stopped by SIGKILL, SIGTERM or SIGINT at a
random moment of every stage (prepare, train, evaluate, gallery), checked after each stop and at the end.

    .venv/bin/python tests/stress/chaos_flow.py --cycles 12 --seed 5     # from the repository root: ~6 min on 2 cores
    .venv/bin/python tests/stress/chaos_flow.py --cycles 4 --seed 1 --out /tmp/cf --keep

``tests/stress/chaos.py`` kills ganlib's own train/evaluate/gallery calls with SIGKILL only, many times
and fast; this one drives the real CLI (its temporary Prefect server, its tasks, its signal handling).
First an uninterrupted reference run; then a chaos run of the same config, started again after each
stop. The plan crosses stages and signals (prepare targets first, while the dataset is not prepared
yet, then train, evaluate, gallery), each stop at a random fraction of that stage's duration on the
reference run (for training: of the training still to do). SIGTERM and SIGKILL go to the run's
process, SIGINT to its process group (what Ctrl-C at a terminal does). After each stop:

- the exit: SIGKILL -9; SIGTERM 143 and SIGINT 130 with one ``interrupted by ...`` line (or 0 when
  the run finished first); the line's checkpointed step when training was stopped;
- no process of the run left (every descendant seen at the signal, the temporary Prefect server
  included, gone within 30 s; read from ``/proc``, no psutil); leftovers are counted, then killed;
- nothing damaged: every checkpoint verifies against its ``.sha256``, the tables load, no ``.tmp`` files;
  no lock after a polite stop;
- steps lost: the last step the stopped run logged minus the step the next run resumes from (0 is
  expected after SIGTERM and SIGINT; up to ``checkpoint_every`` after SIGKILL; steps are logged every
  ``log_every``, so SIGKILL's count is a lower bound).

At the end (a last run goes to the end): every checkpoint of the reference is there and bit-identical
(G, its EMA, D, optimisers, data order; the polite stops' extra checkpoints verify too), the train table
has every step once with the reference's values, the reference checkpoints' evaluation rows equal the
reference's, the gallery is byte-identical (when the same checkpoint is best; a polite stop's extra
checkpoint may score better, then its gallery only has to load). Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "chaos"
STAGES = ("prepare", "train", "eval", "gallery")
ORDER = (*STAGES, "done")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
STEP = re.compile(r"\bstep (\d+)/(\d+) ")
RESUMED = re.compile(r"resuming run \S+ from step_(\d+)\.pt")
CHECKPOINTED = re.compile(r"interrupted by (SIG\w+): checkpointed at step (\d+)")
# ganlib.training.loop's first line, logged inside train(): the stop handler is in place from here on, so a
# polite stop after it must checkpoint; one before it (the train task still starting) has nothing to save.
TRAINING_BEGAN = re.compile(r"ganlib - training \S+ \(")


def settings(num_images: int, steps: int) -> dict[str, Any]:
    return {
        "device": "cpu",
        "data": {"dataset": "digits", "num_images": num_images},  # enough images for preparation to be hit
        "model": {"name": "mlp", "hidden_dim": 64},
        "train": {"steps": steps, "batch_size": 32, "checkpoint_every": steps // 3, "log_every": 10,
                  "precision": "fp32"},
        "eval": {"num_samples": 200, "classifier_steps": 30, "batch_size": 100, "ssl_steps": 10},
        "gallery": {"num_samples": 500},
    }


def stage_of(line: str) -> str | None:
    """The stage a line of the flow's output shows it entering (None: the line does not say)."""
    if "dataset: preparing" in line:  # only when the dataset is not prepared yet
        return "prepare"
    if "Finished in state Completed" in line:  # a task ended: the next one begins
        for task, stage in (("prepare-dataset-", "train"), ("train-", "eval"), ("evaluate-", "gallery")):
            if f"Task run '{task}" in line:
                return stage
    if line.startswith("done: "):
        return "done"
    return None


# --- processes, read from /proc ----------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier}
        found += sorted(children)
        frontier = children
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def describe(pid: int) -> str:
    try:
        return f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return str(pid)


# --- one attempt -------------------------------------------------------------------------------------

@dataclass
class Attempt:
    stage: str = "start"  # where it was when the signal went (or where it ended)
    signum: int | None = None
    rc: int = 0
    max_step: int = 0
    resumed_from: int | None = None
    checkpointed: int | None = None
    training_began: bool = False  # this attempt's training loop started (its first line was seen)
    last_line: str = ""
    leftovers: list[str] = field(default_factory=list)
    stage_times: dict[str, float] = field(default_factory=dict)  # first time each stage was seen
    pids: set[int] = field(default_factory=set)  # the run's process and every descendant seen
    seconds: float = 0.0


def run_attempt(config_file: Path, out: Path, log_path: Path, target: tuple[str, int, float] | None,
                windows: dict[str, float] | None, steps: int, base_step: int, timeout_s: float,
                script: str = "flows/train.py") -> Attempt:
    """Run ``flows/train.py`` once; when ``target`` = (stage, signal, fraction) says, send the signal."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, script, "--config", str(config_file), "--run-id", RUN_ID, "--out", str(out)]
    attempt, t0 = Attempt(), time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
        fire_at: float | None = None
        family: set[int] = set()
        ended, next_scan = False, 0.0
        while not ended:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                line = ""
            now = time.monotonic()
            if line is None:
                ended = True
                line = ""
            log.write(line)
            line = line.rstrip("\n")
            if line.strip():
                attempt.last_line = line.strip()
            stage = stage_of(line)
            if stage and stage not in attempt.stage_times:
                attempt.stage_times[stage] = now
                if attempt.signum is None:
                    attempt.stage = stage
            if (m := STEP.search(line)) and int(m.group(2)) == steps:
                attempt.max_step = max(attempt.max_step, int(m.group(1)))
            if m := RESUMED.search(line):
                attempt.resumed_from = int(m.group(1))
            if m := CHECKPOINTED.search(line):
                attempt.checkpointed = int(m.group(2))
            if TRAINING_BEGAN.search(line):
                attempt.training_began = True
            if target and windows is not None and fire_at is None and stage == target[0]:
                window = windows[stage]
                if stage == "train":  # what is left of training, from the step it resumed at
                    window *= (steps - base_step) / steps
                fire_at = now + target[2] * window
            elif target and stage and ORDER.index(stage) > ORDER.index(target[0]):
                fire_at = min(fire_at or now, now)  # the target stage went by (cached, or shorter than on the
                # reference): stop now, so no stop lets the run finish and the later stages keep their work
            if not ended and now >= next_scan:  # /proc is read twice a second, and when the signal goes
                family.update(descendants(proc.pid))
                next_scan = now + 0.5
            if fire_at is not None and now >= fire_at and attempt.signum is None and proc.poll() is None:
                family.update(descendants(proc.pid))
                signum = target[1]  # type: ignore[index]
                if signum == signal.SIGINT:
                    os.killpg(proc.pid, signum)  # Ctrl-C at a terminal: the foreground process group
                else:
                    os.kill(proc.pid, signum)
                attempt.signum = signum
            if now - t0 > timeout_s:
                proc.kill()
        attempt.rc = proc.wait()
    # No process of the run may outlive it: wait up to 30 s, then count and kill what is left.
    deadline = time.monotonic() + 30
    while [p for p in family if running(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in [p for p in family if running(p)]:
        attempt.leftovers.append(describe(pid))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    attempt.seconds = time.monotonic() - t0
    attempt.pids = family | {proc.pid}
    return attempt


# --- checks ----------------------------------------------------------------------------------------

def damage(run: Path, polite: bool, pids: set[int] | None = None) -> list[str]:
    """What is broken in ``run`` now: unverifiable checkpoints, unreadable tables; after a polite stop
    (``polite``) also temporary files written by ``pids`` (all, when None) under the output root, the
    shared cache included, and the lock."""
    import pandas as pd

    from ganlib.errors import CheckpointError
    from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint

    problems = []
    for _step, path in list_checkpoints(run / "checkpoints"):
        if not path.with_name(path.name + ".sha256").is_file():
            problems.append(f"{path.name} has no .sha256")
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            problems.append(f"{path.name}: {err}")
    corrupt = run / "checkpoints" / "corrupt"
    if corrupt.exists():
        problems.append(f"moved aside as corrupt: {sorted(p.name for p in corrupt.iterdir())}")
    for table in sorted((run / "metrics").glob("*.parquet")) if (run / "metrics").is_dir() else []:
        try:
            pd.read_parquet(table)
        except Exception as err:  # noqa: BLE001  any failure to read is damage
            problems.append(f"{table.name} does not load: {type(err).__name__}")
    if polite:  # a SIGKILLed writer leaves its temporary file and the lock: the next run removes them
        mine = re.compile(r"\.tmp-(\d+)")  # temporary names end in the writer's pid: those of this run (pids)
        temporary = sorted(str(p.relative_to(run.parent)) for p in run.parent.rglob("*") if ".tmp" in p.name
                           and (pids is None or ((m := mine.search(p.name)) is not None and int(m.group(1)) in pids)))
        problems += [f"temporary file left: {t}" for t in temporary[:5]]
        if (run / ".lock").exists():
            problems.append("the run's lock is left after a polite stop")
    return problems


def final_checks(run: Path, ref: Path, steps: int) -> list[tuple[str, str | None]]:
    import numpy as np
    import pandas as pd

    from ganlib.runs.checkpoint import list_checkpoints, load_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chaos import _equal  # tests/stress/chaos.py: bit-for-bit equality of nested state

    checks: list[tuple[str, str | None]] = []

    def check(name: str, fn) -> None:
        try:
            checks.append((name, fn()))
        except Exception as err:  # noqa: BLE001  a check that cannot run has failed
            checks.append((name, f"{type(err).__name__}: {err}"))

    def checkpoints() -> str | None:
        mine = dict(list_checkpoints(run / "checkpoints"))
        differ = []
        for step, path in list_checkpoints(ref / "checkpoints"):
            if step not in mine:
                differ.append(f"step {step} missing")
                continue
            a, b = load_checkpoint(mine[step]), load_checkpoint(path)
            differ += [f"{step}:{k}" for k in ("generator", "generator_ema", "discriminator", "opt_g", "opt_d", "data")
                       if not _equal(a[k], b[k])]
        return ", ".join(differ) or None

    def train_table() -> str | None:
        mine, theirs = (pd.read_parquet(d / "metrics" / "train.parquet").drop(columns="images_per_sec")
                        for d in (run, ref))
        if mine["step"].tolist() != list(range(1, steps + 1)):
            counts = Counter(mine["step"])
            return (f"duplicated {sorted(s for s, n in counts.items() if n > 1)[:5]}, missing "
                    f"{sorted(set(range(1, steps + 1)) - set(counts))[:5]}")
        pd.testing.assert_frame_equal(mine, theirs)
        return None

    def eval_rows() -> str | None:
        def rows(d: Path) -> pd.DataFrame:
            table = pd.read_parquet(d / "metrics" / "eval.parquet")
            keep = [c for c in table.columns if c not in ("seconds", "best") and not c.startswith("select_")
                    and pd.api.types.is_numeric_dtype(table[c])]  # the scores; names and paths differ by run
            return table[keep + ["checkpoint", "generator"]].set_index(["checkpoint", "generator"])
        mine, theirs = rows(run), rows(ref)
        pd.testing.assert_frame_equal(mine.loc[theirs.index], theirs)
        return None

    def gallery() -> str | None:
        best = [pd.read_parquet(d / "metrics" / "eval.parquet").query("best")["checkpoint"].iloc[-1]
                for d in (run, ref)]
        with np.load(run / "gallery" / "samples.npz") as a:
            loaded = {k: a[k] for k in a.files}
        from PIL import Image
        for png in (run / "gallery").glob("*.png"):
            Image.open(png).load()
        if best[0] != best[1]:
            print(f"  (best checkpoint {best[0]}, the reference's {best[1]}: the gallery is checked to load only)")
            return None
        problems = [f"{p.name} differs" for p in (ref / "gallery").glob("*.png")
                    if (run / "gallery" / p.name).read_bytes() != p.read_bytes()]
        with np.load(ref / "gallery" / "samples.npz") as b:
            problems += [f"samples.npz[{k}] differs" for k in b.files if not np.array_equal(loaded[k], b[k])]
        return "; ".join(problems) or None

    check("every reference checkpoint present and bit-identical (G, EMA, D, optimisers, data order)", checkpoints)
    check(f"train.parquet: steps 1..{steps} once each, the reference's values", train_table)
    check("eval.parquet: the reference checkpoints' rows equal the reference's", eval_rows)
    check("gallery: byte-identical (same best checkpoint), or loads", gallery)
    check("nothing damaged, no temporary file, no lock", lambda: "; ".join(damage(run, polite=True)) or None)
    return checks


def build_plan(cycles: int, rng: random.Random) -> list[tuple[str, int, float]]:
    """(stage, signal, fraction) per cycle: stages in pipeline order, signals crossed with them."""
    per_stage = [cycles // len(STAGES) + (i < cycles % len(STAGES)) for i in range(len(STAGES))]
    plan, k = [], rng.randrange(len(SIGNALS))
    for stage, n in zip(STAGES, per_stage, strict=True):
        for _ in range(n):
            plan.append((stage, SIGNALS[k % len(SIGNALS)], rng.uniform(0.05, 0.6) if stage == "train"
                         else rng.uniform(0.0, 0.9)))
            k += 1
    return plan


def main() -> int:
    p = argparse.ArgumentParser(prog="python tests/stress/chaos_flow.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=12, help="stopped attempts (12: every stage with every signal)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan (signals and moments)")
    p.add_argument("--steps", type=int, default=900, help="training steps")
    p.add_argument("--num-images", type=int, default=60000, help="digits to prepare (preparation must last a while)")
    p.add_argument("--out", type=Path, help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--script", default="flows/train.py", help="the command line to stop (a wrapper, to try a fix)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before one attempt is killed as hung")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    work = args.out or Path(tempfile.mkdtemp(prefix="ganlib-chaos-flow-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    config = work / "config.json"
    config.write_text(json.dumps(settings(args.num_images, args.steps)))
    t_start = time.monotonic()

    ref = run_attempt(config, work / "reference", work / "logs" / "reference.log", None, None, args.steps, 0,
                      args.timeout, args.script)
    if ref.rc != 0 or ref.leftovers:
        print(f"FAIL: the reference run ended with {ref.rc}, leftovers {ref.leftovers}; see {work / 'logs'}")
        return 1
    times = ref.stage_times
    windows = {"prepare": times["train"] - times["prepare"], "train": times["eval"] - times["train"],
               "eval": times["gallery"] - times["eval"], "gallery": times["done"] - times["gallery"]}
    print(f"chaos_flow: {args.cycles} cycles, seed {args.seed}, {args.steps} steps; reference {ref.seconds:.1f} s "
          f"(stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in windows.items()) + f"); work dir {work}")

    plan = build_plan(args.cycles, random.Random(args.seed))
    print("(step: the last step this attempt logged; resumed: the step it resumed from; lost: steps the stop "
          "before it lost; left: its processes left running)")
    print(f"\n{'cycle':>5} {'target':<16} {'stopped in':<10} {'rc':>4} {'step':>5} {'resumed':>7} {'lost':>4} "
          f"{'left':>4} {'s':>5}  problems")
    run = work / "chaos" / RUN_ID
    landed: dict[str, Counter[str]] = defaultdict(Counter)
    lost: dict[str, list[int]] = defaultdict(list)
    leftovers, failures = 0, []
    previous: Attempt | None = None
    base = 0
    for i, target in enumerate([*plan, None], start=1):
        attempt = run_attempt(config, work / "chaos", work / "logs" / f"cycle_{i:02d}.log", target, windows,
                              args.steps, base, args.timeout, args.script)
        problems, lost_before = [], ""
        if previous is not None and previous.signum is not None and previous.stage == "train":
            resumed = attempt.resumed_from or 0
            lost_before = str(max(0, previous.max_step - resumed))
            lost[signal.Signals(previous.signum).name].append(int(lost_before))
            if previous.signum != signal.SIGKILL and previous.max_step > resumed:
                problems.append(f"previous polite stop lost {previous.max_step - resumed} steps")
        name = signal.Signals(attempt.signum).name if attempt.signum else "-"
        if attempt.signum is not None:
            landed[name][attempt.stage] += 1
            expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[attempt.signum]
            if attempt.rc not in (expected, 0):
                problems.append(f"exit {attempt.rc}, expected {expected}")
            if attempt.rc in (130, 143) and not attempt.last_line.startswith(f"interrupted by {name}"):
                problems.append(f"last line {attempt.last_line[:100]!r}")
            if (attempt.stage == "train" and attempt.rc in (130, 143) and attempt.checkpointed is None
                    and attempt.training_began):  # before the loop began (task starting) there is nothing to save
                problems.append("stopped in training without 'checkpointed at step'")
        elif attempt.rc != 0:
            problems.append(f"exit {attempt.rc} (see {work / 'logs' / f'cycle_{i:02d}.log'})")
        if attempt.leftovers:
            problems.append(f"left running: {attempt.leftovers}")
        leftovers += len(attempt.leftovers)
        problems += damage(run, attempt.signum != signal.SIGKILL, attempt.pids) if run.exists() else []
        label = f"{target[0]} {signal.Signals(target[1]).name}" if target else "final"
        print(f"{i:>5} {label:<16} {attempt.stage if attempt.signum else '-':<10} {attempt.rc:>4} "
              f"{attempt.max_step or '-':>5} {attempt.resumed_from if attempt.resumed_from is not None else '-':>7} "
              f"{lost_before:>4} "
              f"{len(attempt.leftovers):>4} {attempt.seconds:>5.1f}  {'; '.join(problems)}", flush=True)
        failures += [f"cycle {i}: {p}" for p in problems]
        previous = attempt
        from ganlib.runs.checkpoint import list_checkpoints
        base = max((s for s, _ in list_checkpoints(run / "checkpoints")), default=0) if run.exists() else 0
    final_rc = previous.rc if previous else 1

    print()
    checks = final_checks(run, work / "reference" / RUN_ID, args.steps)
    for check_name, problem in checks:
        print(f"  [{'ok' if problem is None else 'FAIL'}] {check_name}" + (f": {problem}" if problem else ""))
    failures += [f"final: {n}: {p}" for n, p in checks if p is not None]
    if final_rc != 0:
        failures.append(f"the last run exited {final_rc}")
    print("\nstops that landed, per signal and stage:")
    for sig in ("SIGKILL", "SIGTERM", "SIGINT"):
        print(f"  {sig:<8} " + ", ".join(f"{s} {landed[sig][s]}" for s in (*STAGES, "done", "start")))
    print("steps lost after a stop in training (last step logged - step resumed from): "
          + ", ".join(f"{s} {lost[s]}" for s in ("SIGKILL", "SIGTERM", "SIGINT")))
    print(f"processes left over: {leftovers}")
    result = "PASS" if not failures else "FAIL"
    print(f"{result}: {args.cycles} cycles + a last run, {time.monotonic() - t_start:.0f} s"
          + ("" if not failures else "\n  " + "\n  ".join(failures)))
    if result == "PASS" and not args.keep and args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory: {work}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
