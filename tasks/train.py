"""Stage 2: training. No cache: resume from the run's newest checkpoint is what makes retries cheap.

With ``dist.nproc_per_node`` (or ``dist.nnodes``) above 1 the task launches torchrun through
``ganlib.training.launch.launch``, streams the processes' output into its log, and fails (so it is
retried, resuming) when any of them fails; the launcher kills them all on timeout or cancellation.
SIGTERM and Ctrl-C (``StopSignals``) stop either kind of training politely at a checkpointed step.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ganlib.config import RunConfig
from ganlib.runs.device import resolve_device, training_backends
from ganlib.training import train
from ganlib.training.launch import launch
from tasks.common import RETRIES, RunInterrupted, StopSignals, artifact_key, retry_unless_user_error

PROGRESS_EVERY_S = 5.0  # the UI needs a glance, not a per-step stream


@task(name="train", tags=["gpu"], retries=RETRIES, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error)
def train_task(config: RunConfig, store_dir: str) -> dict:
    """Train or resume the run, showing a progress artifact; returns steps, checkpoints and speed."""
    progress_id = create_progress_artifact(0.0, key=artifact_key("progress", config.run_id),
                                           description=f"Training progress of run {config.run_id}")
    last_update = 0.0

    def on_progress(record: dict) -> None:
        nonlocal last_update
        now = time.monotonic()
        if now - last_update >= PROGRESS_EVERY_S or record["step"] == record["total_steps"]:
            update_progress_artifact(progress_id, 100.0 * record["step"] / record["total_steps"])
            last_update = now

    with StopSignals().installed() as stop:
        if config.dist.world_size > 1:  # the launcher forwards a stop to the ranks, which agree on the step
            result = launch(config, Path(store_dir), on_line=get_run_logger().info, on_progress=on_progress,
                            should_stop=stop.requested)
        else:
            with training_backends(config.train.precision, resolve_device(config.device)):
                result = train(config, Path(store_dir), on_progress=on_progress, should_stop=stop.requested).to_dict()
    if not result:  # a machine other than 0: rank 0's machine reports the run
        return {}
    if stop.signum is not None:  # also when the stop came with the last step: the run stops, as asked
        raise RunInterrupted(f"interrupted by {signal.Signals(stop.signum).name}: checkpointed at step "
                             f"{result['final_step']} of {result['total_steps']}; run again with --run-id "
                             f"{config.run_id} to resume from there", stop.signum)
    update_progress_artifact(progress_id, 100.0 * result["final_step"] / result["total_steps"])
    return result
