"""Prefect behaviour: retries continue where the failure happened, and nothing is trained twice."""

import pytest

pytestmark = pytest.mark.slow


def test_transient_training_failure_is_retried_and_resumes(tiny, prefect_harness, monkeypatch):
    import flows.train as pipeline
    import tasks.train as train_module
    from ganlib.training.loop import train as real_train

    calls = []

    def flaky_train(cfg, store_dir, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # first attempt: train a little, then die like a lost worker would
            real_train(cfg, store_dir, should_stop=lambda: True)
            raise RuntimeError("simulated transient failure")
        return real_train(cfg, store_dir, **kwargs)

    monkeypatch.setattr(train_module, "train", flaky_train)
    monkeypatch.setattr(pipeline, "train_task", train_module.train_task.with_options(retry_delay_seconds=0))
    summary = pipeline.gan_pipeline(tiny(run_id="flaky"))
    assert len(calls) == 2
    assert summary["train"]["resumed_from_step"] == 1 and summary["train"]["final_step"] == 12  # stopped after step 1


def test_rerun_after_an_evaluation_failure_does_not_retrain(tiny, prefect_harness, monkeypatch):
    import flows.train as pipeline
    import tasks.evaluate as evaluate_module
    from ganlib.evaluation.evaluate import evaluate_run as real_evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("simulated evaluation crash")

    cfg = tiny(run_id="evalfail")
    monkeypatch.setattr(evaluate_module, "evaluate_run", broken)
    monkeypatch.setattr(pipeline, "evaluate_task", evaluate_module.evaluate_task.with_options(retries=0))
    with pytest.raises(RuntimeError, match="simulated evaluation crash"):
        pipeline.gan_pipeline(cfg)
    assert (cfg.run_dir / "checkpoints" / "step_000012.pt").is_file()

    monkeypatch.setattr(evaluate_module, "evaluate_run", real_evaluate)
    summary = pipeline.gan_pipeline(cfg)
    assert summary["train"]["resumed_from_step"] == 12 and summary["train"]["final_step"] == 12


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_fails_the_run_at_once_with_one_line_and_keeps_its_checkpoint(tiny, prefect_harness, monkeypatch):
    """A full disk is not transient: the training task is not retried (two more attempts would fail the same
    way), the error is the one line that says so, and the checkpoint saved before it is intact."""
    import os

    import flows.train as pipeline
    import tasks.train as train_module
    from ganlib.errors import StorageError
    from ganlib.training.loop import train as real_train

    cfg = tiny(run_id="diskfull")
    table = cfg.run_dir / "metrics" / "train.parquet"
    calls = []

    def fills_up(cfg, store_dir, **kwargs):
        calls.append(1)
        real_train(cfg, store_dir, should_stop=lambda: True)  # checkpoints step 1
        table.with_name(f".train.tmp-{os.getpid()}.parquet").symlink_to("/dev/full")  # then the disk is full
        return real_train(cfg, store_dir, **kwargs)

    monkeypatch.setattr(train_module, "train", fills_up)
    monkeypatch.setattr(pipeline, "train_task", train_module.train_task.with_options(retry_delay_seconds=0))
    with pytest.raises(StorageError, match=rf"^no space left to write {table} \(No space left on device\)"):
        pipeline.gan_pipeline(cfg)
    assert len(calls) == 1
    assert (cfg.run_dir / "checkpoints" / "step_000001.pt").is_file()
