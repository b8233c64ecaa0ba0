"""The sweep flow: members on a local Dask cluster, a failing member recorded, re-runs reuse members."""

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest

# At import, not inside a test: Prefect's console log handler binds to the stderr of the moment, which
# must not be a test's capsys stream (closed after that test).
from flows.sweep import gan_sweep, main


def test_dry_run_prints_the_members_and_mistakes_are_one_line(capsys, tmp_path):
    assert main(["--grid", "train.lr=1e-4,2e-4", "seed=1,2", "--sweep-id", "s", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["sweep_id"], plan["sweep_dir"], plan["runner"]) == ("s", str(tmp_path / "s"), "threads")
    members = plan["members"]
    assert len(members) == 4 and members[0]["run_id"].startswith("s-0.0001_1-")
    assert members[0]["settings"] == {"train.lr": 0.0001, "seed": 1}
    assert main(["--grid", "train.lr=-1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep member train.lr=-1: invalid config: train.lr:") and err.count("\n") == 1


@pytest.mark.slow
def test_local_dask_sweep_records_a_failed_member_and_reuses_finished_ones(tiny_settings, tmp_path, prefect_harness,
                                                                         monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    from ganlib.config import build_config
    from tasks.common import artifact_key

    base = build_config({**tiny_settings, "out": str(tmp_path / "out")})
    # One worker process of one thread (2 CPU cores in CI): members run one after the other, in another
    # process (so the task and the pipeline flow it calls travel by pickle), reporting to the test server.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None})
    grid = {"train.batch_size": [32, 1000]}  # 1000 is more than the 400 images: that member fails
    result = gan_sweep.with_options(task_runner=runner)(grid, "tiny-sweep", base)

    table = pd.read_parquet(result["table"])
    assert result["table"] == str(tmp_path / "out" / "tiny-sweep" / "sweep.parquet")
    assert table["train.batch_size"].tolist() == [32, 1000] and result["failed"] == 1
    assert table["status"].tolist() == ["completed", "failed"]
    assert "larger than the dataset" in table["error"][1] and pd.isna(table["error"][0])
    assert table["final_step"][0] == 12 and table["fd"][0] > 0 and table["classes_present"][0] >= 1
    assert Path(table["run_dir"][0], "summary.json").is_file()
    assert Path(result["plot"]).stat().st_size > 1000 and (tmp_path / "out" / "tiny-sweep" / "sweep.md").is_file()

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert artifact_key("sweep", "tiny-sweep") in asyncio.run(artifact_keys())

    # Again: the finished member is reused (not retrained), the failed one is tried again.
    again = pd.read_parquet(gan_sweep.with_options(task_runner=runner)(grid, "tiny-sweep", base)["table"])
    assert again["status"].tolist() == ["reused", "failed"]
    assert again["fd"][0] == table["fd"][0] and again["train_seconds"][0] == table["train_seconds"][0]
