"""RunDir and CacheDir: every file a run writes in one place, and one reader per file."""

from __future__ import annotations

import json

import pytest

from ganlib.config import RunConfig
from ganlib.errors import RunError
from ganlib.runs.paths import CacheDir, RunDir, checkpoint_name

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it


def test_the_layout_of_a_run(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config == tmp_path / "r" / "config.json"
    assert run.manifest == tmp_path / "r" / "data" / "manifest.json"
    assert run.checkpoint(2500) == tmp_path / "r" / "checkpoints" / "step_002500.pt"
    assert checkpoint_name(7) == "step_000007.pt"
    assert run.eval_metrics == tmp_path / "r" / "metrics" / "eval.parquet"
    assert run.health_metrics.name == "health.parquet" and run.report.name == "report.html"
    assert CacheDir.under(tmp_path).dataset("digits-abc") == tmp_path / "_cache" / "datasets" / "digits-abc"


def test_reading_the_config_of_a_missing_or_broken_run_is_one_line(tmp_path):
    run = RunDir(tmp_path / "nope")
    with pytest.raises(RunError, match=r"^no run at .*nope \(.*config.json is missing\); check --run-id and --out$"):
        run.read_config()
    run.root.mkdir()
    run.config.write_text("{not json")
    with pytest.raises(RunError, match=r"^cannot read .*config.json: Expecting property name"):
        run.read_config()
    run.config.write_text("[1, 2]")
    with pytest.raises(RunError, match="not a JSON object"):
        run.read_config()
    assert run.read_saved_config() == {} and run.read_manifest() == {}  # the tolerant readers


def test_load_config_places_the_run_where_it_is_now(tmp_path):
    saved = RunConfig(run_id="old", out="elsewhere").model_dump(mode="json")
    run = RunDir(tmp_path / "moved")
    run.root.mkdir()
    run.config.write_text(json.dumps(saved))
    cfg = run.load_config(device="cpu")
    assert (cfg.run_id, cfg.out, cfg.device) == ("moved", tmp_path, "cpu")
    assert cfg.run_dir == run.root


def test_train_rows_are_read_up_to_a_step(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.read_train_rows(up_to_step=10) == []
    run.write_train_rows([{"step": s, "d_loss": 0.5} for s in range(1, 6)])
    assert [r["step"] for r in run.read_train_rows(up_to_step=3)] == [1, 2, 3]


def test_an_unreadable_train_table_is_set_aside_not_fatal(tmp_path, caplog):
    run = RunDir(tmp_path / "r")
    run.write_train_rows([{"step": s, "d_loss": 0.5} for s in range(1, 6)])
    run.train_metrics.write_bytes(run.train_metrics.read_bytes()[:40])  # truncated
    with caplog.at_level("WARNING", logger="ganlib"):
        assert run.read_train_rows(up_to_step=5) == []
    assert (run.metrics / "corrupt" / "train.parquet").is_file() and not run.train_metrics.exists()
    assert "is unreadable" in caplog.text and "restarts at step 6" in caplog.text
    run.write_train_rows([{"step": 1, "d_loss": 0.5}])
    run.train_metrics.write_bytes(b"not parquet at all")  # corrupt again: the first copy is kept beside it
    assert run.read_train_rows(up_to_step=5) == []
    assert sorted(p.name for p in (run.metrics / "corrupt").iterdir()) == ["train.2.parquet", "train.parquet"]


def test_a_table_that_cannot_be_read_for_permissions_is_one_line_and_stays(tmp_path, monkeypatch):
    import errno

    from ganlib.errors import RunError

    run = RunDir(tmp_path / "r")
    run.write_health_rows([{"step": 1, "event": "x"}])

    def denied(path, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("pandas.read_parquet", denied)
    with pytest.raises(RunError, match=r"health.parquet is unreadable \(Permission denied\); make it readable"):
        run.read_health_rows()
    assert run.health_metrics.is_file() and not (run.metrics / "corrupt").exists()


def test_ganlib_cache_dir_moves_the_shared_cache_for_every_output_root(tmp_path, monkeypatch):
    from ganlib.config import DataConfig
    from ganlib.data.store import prepare_dataset

    monkeypatch.setenv("GANLIB_CACHE_DIR", str(tmp_path / "shared"))
    assert CacheDir.under(tmp_path / "a").root == CacheDir.under(tmp_path / "b").root == tmp_path / "shared"
    data = DataConfig(dataset="digits", num_images=100)
    first, second = prepare_dataset(data, tmp_path / "a"), prepare_dataset(data, tmp_path / "b")
    assert first == second and first.parent == tmp_path / "shared" / "datasets"
    assert not (tmp_path / "a" / "_cache").exists()
    monkeypatch.setenv("GANLIB_CACHE_DIR", "  ")  # blank: as if unset
    assert CacheDir.under(tmp_path / "a").root == tmp_path / "a" / "_cache"
