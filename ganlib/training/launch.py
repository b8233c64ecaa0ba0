"""Data-parallel runs from the outside: torchrun starts the processes, this module starts torchrun.

- **In each training process** (``python -m ganlib.training.launch``, started by torchrun):
  ``worker_main`` joins the process group and calls ``ganlib.training.train`` with a ``DistContext``
  (``ganlib.training.distributed`` explains how the ranks split the work).
- **In the launching process** (the Prefect training task, or ``launch`` from a notebook):
  ``launch`` builds the ``torchrun`` command (``--standalone`` on one machine; ``--nnodes``,
  ``--node-rank`` and a static rendezvous at ``--rdzv-endpoint`` for several), holds the run lock on
  behalf of the ranks, streams their output line by line, returns rank 0's result, raises when any
  rank fails, and kills every process it started on timeout, error or cancellation. torchrun puts each
  worker in a session of its own, so killing torchrun's process group is not enough: the launcher
  first lets torchrun stop its workers (SIGTERM), then SIGKILLs torchrun's group and, on Linux, every
  process still carrying this launch's id in its environment. Workers also die with torchrun
  (``PR_SET_PDEATHSIG``, Linux) and exit when the launcher itself disappears (a watchdog thread).
- **A polite stop** (``should_stop``, e.g. SIGTERM or Ctrl-C caught by the launching process) is
  forwarded as a file, ``stop``, in the launch's work directory, which every rank polls between steps
  (not a signal: torchrun answers SIGTERM by killing its workers). The ranks agree at the next metrics
  flush, all stop at the same step, checkpoint it and exit normally; rank 0's result says
  ``stopped_early``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ganlib import errors
from ganlib.config import RunConfig, build_config
from ganlib.data.store import prepare_dataset, store_path
from ganlib.errors import ConfigError, GanlibError
from ganlib.runs.device import configure_backends, resolve_device
from ganlib.runs.files import atomic_write_json
from ganlib.runs.lock import pid_alive, proc_start, read_lock, run_lock
from ganlib.runs.paths import RunDir
from ganlib.training.distributed import DistContext
from ganlib.training.loop import train

log = logging.getLogger("ganlib")

PROGRESS_PREFIX = "@ganlib-progress "  # rank 0's progress records on stdout, read by the launcher


ENV_LOCK_TOKEN = "GANLIB_RUN_LOCK_TOKEN"  # the launcher holds the run lock with this token


ENV_LAUNCHER = "GANLIB_LAUNCHER_PID"  # "pid:start-time" of the launcher; workers exit when it is gone


ENV_LAUNCH_ID = "GANLIB_LAUNCH_ID"  # marks every process of one launch (torchrun and its workers)


WATCHDOG_S = 1.0


STOP_FILE = "stop"  # in the work directory: the launcher asks the ranks to stop politely


STOP_POLL_S = 0.2  # how often the launcher polls should_stop, and a rank the stop file


def _stop_file_poller(path: Path) -> Callable[[], bool]:
    """``should_stop`` for a rank: whether ``path`` exists, looked at most every ``STOP_POLL_S`` (a stat
    per step would cost little, but the loop asks after every step)."""
    seen, next_look = False, 0.0

    def requested() -> bool:
        nonlocal seen, next_look
        if not seen and time.monotonic() >= next_look:
            seen, next_look = path.exists(), time.monotonic() + STOP_POLL_S
        return seen

    return requested


class DistributedError(GanlibError):
    """A training process failed, or the launch timed out. Retried: the retry resumes."""


def _die_with_parent() -> None:
    """Linux: be SIGKILLed when the parent (torchrun's agent) dies, whatever killed it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _watch_launcher(spec: str) -> None:
    """Exit at once when the launcher ("pid:start-time") is gone, e.g. its flow run was killed."""
    pid_text, _, start = spec.partition(":")
    pid = int(pid_text)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_S)
            if not pid_alive(pid) or (start and proc_start(pid) not in (None, start)):
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ganlib-launcher-watchdog", daemon=True).start()


def _backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError(f"dist.backend: nccl needs CUDA devices, but training runs on {device}; "
                          "use --dist-backend gloo or auto")
    return name


def _worker_device(cfg: RunConfig, local_rank: int) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"device: {cfg.device!r} names one GPU, but each training process takes the GPU "
                              "of its local rank; use --device cuda or auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"dist.nproc_per_node: local rank {local_rank} has no GPU "
                              f"({torch.cuda.device_count()} here); use at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return device


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one training process under torchrun: ``python -m ganlib.training.launch``."""
    parser = argparse.ArgumentParser(prog="python -m ganlib.training.launch",
                                     description="One data-parallel training process; start it with torchrun.")
    parser.add_argument("--config", type=Path, required=True, help="RunConfig JSON file")
    parser.add_argument("--store", type=Path, default=None,
                        help="prepared dataset store directory (default: the config's under out/_cache, which "
                        "rank 0 prepares if needed)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where rank 0 writes result.json, and a rank that fails with a user error error.json")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        print("error: python -m ganlib.training.launch is one process of a torchrun job; start it with "
              "torchrun (python -m torch.distributed.run) or ganlib.training.launch.launch", file=sys.stderr)
        return 2
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _die_with_parent()
    if hasattr(signal, "SIGUSR1"):  # kill -USR1 <pid>: a rank that seems stuck prints every thread's stack
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if os.environ.get(ENV_LAUNCHER):
        _watch_launcher(os.environ[ENV_LAUNCHER])

    logging.basicConfig(stream=sys.stdout, format=f"[rank {rank}] %(levelname)s %(message)s", force=True)
    # DDP warns when a gradient's strides differ from its bucket's. Here that is a 1-channel conv weight
    # (N, 1, k, k): strides of a size-1 dimension are arbitrary and the memory layout is the same.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)  # rank 0 tells the story; all report trouble
    try:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"--config: cannot read {args.config}: {err}") from None
        cfg = build_config(data).resolved()
        device = _worker_device(cfg, local_rank)
        configure_backends(cfg.train.precision, device)
        dist.init_process_group(_backend(cfg.dist.backend, device))
        try:
            store = args.store
            if store is None:  # started by hand: rank 0 prepares the dataset (or finds it)
                store = prepare_dataset(cfg.data, cfg.out) if rank == 0 else store_path(cfg.data, cfg.out)
            dist.barrier()  # on every rank (some machines may give --store, others not): the data is there
            lock = read_lock(cfg.run_dir) or {}
            handed_over = bool(os.environ.get(ENV_LOCK_TOKEN)) and lock.get("token") == os.environ[ENV_LOCK_TOKEN]
            context = DistContext(device, rank, world, local_rank, owns_run_lock=not handed_over)
            log.info("data-parallel training: %d processes (%s), global batch %d = %d per process", world,
                     dist.get_backend(), cfg.train.batch_size, cfg.train.batch_size // world)

            def progress(record: dict[str, Any]) -> None:
                print(PROGRESS_PREFIX + json.dumps({k: record[k] for k in ("step", "total_steps")}), flush=True)

            launched = args.work_dir is not None  # by ganlib.training.launch.launch, which reads the progress lines
            stop = _stop_file_poller(args.work_dir / STOP_FILE) if launched else None
            result = train(cfg, store, on_progress=progress if rank == 0 and launched else None, should_stop=stop,
                           ctx=context)
            if rank == 0 and args.work_dir is not None:
                atomic_write_json(args.work_dir / "result.json", result.to_dict())
            # Leave together: a rank that tears its gloo group down while a peer is still in its last
            # collective or writes can be aborted by gloo ("terminate called without an active
            # exception"; the interpreter's teardown is skipped too, see _leave). Only on success: a failed
            # rank must not wait for peers that will never arrive (torchrun stops them).
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except GanlibError as err:
        print(f"error: [rank {rank}] {err}", file=sys.stderr, flush=True)
        if args.work_dir is not None:
            atomic_write_json(args.work_dir / "error.json", {"type": type(err).__name__, "message": str(err)})
        return 2
    return 0


def torchrun_command(cfg: RunConfig, config_file: Path, store_dir: Path, work_dir: Path,
                     python: str = sys.executable) -> list[str]:
    """The ``torchrun`` (``python -m torch.distributed.run``) command that trains ``cfg`` on this machine."""
    d = cfg.dist
    if d.nnodes == 1:
        where = ["--standalone"]
    else:  # static rendezvous: machine 0's first process is global rank 0, the writer
        where = ["--nnodes", str(d.nnodes), "--node-rank", str(d.node_rank), "--rdzv-backend", "static",
                 "--rdzv-endpoint", str(d.rdzv_endpoint)]
    return [python, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(d.nproc_per_node),
            "--max-restarts", "0", "-m", "ganlib.training.launch",
            "--config", str(config_file), "--store", str(store_dir), "--work-dir", str(work_dir)]


def _marked_processes(launch_id: str) -> list[int]:
    """Linux: pids of the processes whose environment carries ``launch_id`` (this launch's)."""
    marker = f"{ENV_LAUNCH_ID}={launch_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/environ").exists() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes() and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _kill_everything(proc: subprocess.Popen, launch_id: str, grace_s: float = 5.0) -> None:
    """Stop torchrun and every worker it started, whatever state they are in."""
    if proc.poll() is None:  # not reaped, so its process group id cannot have been reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun stops its workers (sessions of their own)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + grace_s
    while (left := _marked_processes(launch_id)) and time.monotonic() < deadline:  # e.g. a worker still starting
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def launch(
    cfg: RunConfig,
    store_dir: Path,
    *,
    on_line: Callable[[str], None] = print,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` with ``cfg.dist.nproc_per_node`` processes here (and ``nnodes`` machines) via torchrun.

    Returns rank 0's ``TrainResult.to_dict()`` (on machine 0; other machines return ``{}``).
    ``on_line`` receives every line the processes print (rank-prefixed), ``on_progress`` rank 0's
    progress records (``step``, ``total_steps``). ``should_stop`` (polled every ``STOP_POLL_S``): once it
    returns True, every rank finishes its step, all stop together at the next metrics flush and
    checkpoint that step; the result then has ``stopped_early``. ``timeout_s`` (default ``cfg.dist.timeout_minutes``):
    kill everything after it. Any failure raises: the rank's own ``GanlibError`` type when it raised
    one (a bad config is not worth retrying), else ``DistributedError``. Whatever ends the call
    (an exception in a callback, a cancellation, a timeout), every process started is killed.
    """
    cfg = cfg.resolved()
    cfg = cfg.keeping_preset(RunDir(cfg.run_dir).saved_config()).resolved()  # resumed: the run's own preset
    if timeout_s is None and cfg.dist.timeout_minutes is not None:
        timeout_s = 60 * cfg.dist.timeout_minutes
    writer_machine = cfg.dist.node_rank == 0
    with (run_lock(cfg.run_dir) if writer_machine else contextlib.nullcontext()), \
            tempfile.TemporaryDirectory(prefix="ganlib-dist-") as tmp:
        work_dir = Path(tmp)
        config_file = work_dir / "config.json"
        config_file.write_text(cfg.model_dump_json())
        launch_id = uuid.uuid4().hex
        env = {**os.environ, "PYTHONUNBUFFERED": "1", ENV_LAUNCH_ID: launch_id,
               ENV_LAUNCHER: f"{os.getpid()}:{proc_start(os.getpid()) or ''}"}
        if writer_machine:
            env[ENV_LOCK_TOKEN] = (read_lock(cfg.run_dir) or {}).get("token", "")
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; one thread per process
        repo_root = str(Path(__file__).resolve().parents[2])  # ganlib importable from any directory
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
        command = torchrun_command(cfg, config_file, Path(store_dir), work_dir)
        log.info("launching %d training processes: %s", cfg.dist.nproc_per_node, " ".join(command))
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc, lines), name="ganlib-torchrun-output", daemon=True)
        reader.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stop_forwarded = False
        try:
            while True:
                if not stop_forwarded and should_stop is not None and should_stop():
                    (work_dir / STOP_FILE).touch()
                    stop_forwarded = True
                    log.info("stop requested: the training processes finish their step and stop together at "
                             "the next metrics flush (train.log_every), checkpointing it")
                wait = STOP_POLL_S if deadline is None else min(STOP_POLL_S, max(0.0, deadline - time.monotonic()))
                try:
                    line = lines.get(timeout=wait)
                except queue.Empty:
                    if deadline is None or time.monotonic() < deadline:
                        continue
                    raise DistributedError(
                        f"distributed training timed out after {timeout_s / 60:g} min (dist.timeout_minutes); "
                        "killed all its processes; running again resumes from the newest checkpoint") from None
                if line is None:
                    break
                if line.startswith(PROGRESS_PREFIX):
                    if on_progress is not None:
                        on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
                    continue
                on_line(line)
            returncode = proc.wait()
        finally:
            if proc.poll() is None:
                log.warning("stopping the training processes")
            _kill_everything(proc, launch_id)  # also after a clean exit: no worker outlives the launch
            reader.join(timeout=10)
        if returncode != 0:
            error_file = work_dir / "error.json"
            if error_file.is_file():
                info = json.loads(error_file.read_text())
                kind = getattr(errors, info.get("type", ""), None)
                if isinstance(kind, type) and issubclass(kind, GanlibError):
                    raise kind(info["message"])
            raise DistributedError(
                f"distributed training failed: torchrun exited with code {returncode} (the failing rank's "
                "output is above); running again resumes from the newest checkpoint")
        result_file = work_dir / "result.json"
        return json.loads(result_file.read_text()) if result_file.is_file() else {}


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)



def _leave(code: int) -> None:
    """End this process with ``code`` once its output is out, skipping the interpreter's teardown.

    By now every file is written (atomically), the final barrier passed and the process group destroyed. At
    teardown gloo's threads can still hold tensors that need the GIL of a half-finalised interpreter, and
    a rank died there with SIGABRT ("terminate called without an active exception") twice in CI, after the
    run had finished, failing it. Nothing is left for the teardown to do.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _leave(worker_main())
