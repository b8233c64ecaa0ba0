"""The whole flow under one Prefect test harness: files, artifacts, caching and resume."""

import json
import time

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_cache")]  # own_cache: about <out>/_cache


def test_pipeline_end_to_end_then_rerun_reuses_everything(tiny, prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.train import gan_pipeline
    from tasks.common import artifact_key

    cfg = tiny(run_id="E2E_run.1")
    summary = gan_pipeline(cfg)
    run = cfg.run_dir
    assert summary["train"]["final_step"] == 12 and summary["best"]["classes_present"] >= 1
    assert json.loads((run / "config.json").read_text())["run_id"] == "E2E_run.1"
    assert len(pd.read_parquet(run / "metrics" / "eval.parquet")) == 4  # 2 checkpoints x (raw, EMA)
    assert (run / "gallery" / "grid_5x5.png").is_file() and (run / "summary.md").is_file()

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    keys = asyncio.run(artifact_keys())
    assert {artifact_key(k, "E2E_run.1") for k in ("eval", "summary", "progress")} <= keys
    assert artifact_key("eval", "E2E_run.1") == "eval-e2e-run-1"

    # Same settings again: the store is reused and no training step is repeated.
    t0 = time.perf_counter()
    again = gan_pipeline(cfg)
    assert again["train"]["resumed_from_step"] == 12 and again["train"]["final_step"] == 12
    assert again["best"] == summary["best"]
    assert time.perf_counter() - t0 < 60


def test_prepare_task_is_cached_on_the_dataset_spec(tiny, prefect_harness):
    from prefect import flow

    from tasks.prepare import prepare_dataset_task

    cfg = tiny(run_id="cache", data__num_images=500)

    @flow
    def prepare_twice():
        first = prepare_dataset_task(cfg.data, str(cfg.out), return_state=True)
        second = prepare_dataset_task(cfg.data, str(cfg.out), return_state=True)
        third = prepare_dataset_task(cfg.data, str(cfg.out), return_state=True)
        return first, second, third

    first, second, third = prepare_twice()
    assert first.result()["store_dir"] == third.result()["store_dir"]
    assert third.name == "Cached"
