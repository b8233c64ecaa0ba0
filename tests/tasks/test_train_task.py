"""The training task with several processes: torchrun launched, ranks' output in the Prefect log."""

import asyncio
import time

import pytest


@pytest.mark.slow
def test_train_task_launches_torchrun_and_streams_the_ranks_into_the_log(tiny, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from ganlib.data.store import prepare_dataset
    from tasks.train import train_task

    cfg = tiny(run_id="ddp-task", dist__nproc_per_node=2)
    store = prepare_dataset(cfg.data, cfg.out)

    @flow
    def train_only():
        return train_task(cfg, str(store))

    state = train_only(return_state=True)
    record = state.result()
    assert record["final_step"] == 12 and record["resumed_from_step"] == 0
    assert (cfg.run_dir / "checkpoints" / "step_000012.pt").is_file()

    async def messages():
        async with get_client() as client:
            run_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            return [log.message for log in await client.read_logs(run_filter)]

    # Prefect ships logs to the API in batches (every PREFECT_LOGGING_TO_API_BATCH_INTERVAL, 2 s by
    # default), so the last lines may land a moment after the flow run has finished.
    deadline = time.monotonic() + 30
    lines = asyncio.run(messages())
    while not any(m.startswith("[rank 0] INFO step 12/12") for m in lines) and time.monotonic() < deadline:
        time.sleep(0.5)
        lines = asyncio.run(messages())
    assert any(m.startswith("[rank 0] INFO data-parallel training: 2 processes (gloo)") for m in lines), lines
    assert any(m.startswith("[rank 0] INFO step 12/12") for m in lines), lines
