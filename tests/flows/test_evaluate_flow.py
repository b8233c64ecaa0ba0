"""flows/evaluate.py: re-scoring an existing run without training; its one-line errors; the flow itself."""

from __future__ import annotations

import copy
import json
import shutil

import pandas as pd
import pytest

from flows.evaluate import eval_settings_from, main, parse_args, plan_evaluation
from ganlib.config import build_config
from ganlib.data.store import prepare_dataset
from ganlib.errors import ConfigError, RunError
from ganlib.training.loop import train

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_settings, own_cache):
    """A tiny trained run, never evaluated (config.json and checkpoints only)."""
    cfg = build_config({"run_id": "rescore", "out": str(tmp_path_factory.mktemp("evaluate-flow") / "out"),
                        **copy.deepcopy(tiny_settings)})
    train(cfg, prepare_dataset(cfg.data, cfg.out))
    return cfg.resolved()  # what config.json holds: the preset's settings filled in


def test_plan_applies_the_eval_flags_to_the_saved_config(trained):
    config = plan_evaluation(trained.run_dir, {"num_seeds": 2, "select_metric": "recall"}, device="cpu")
    assert (config.eval.num_seeds, config.eval.select_metric, config.eval.num_samples) == (2, "recall", 200)
    assert config.run_dir == trained.run_dir and config.train == trained.train


def test_plan_finds_a_moved_run_by_its_directory(trained, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(trained.run_dir, moved, ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(trained.out / "_cache", tmp_path / "elsewhere" / "_cache")
    config = plan_evaluation(moved)
    assert config.run_id == "renamed" and config.run_dir == moved


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"num_seeds": 0}, ConfigError, r"eval.num_seeds: Input should be greater than or equal to 1 \(got 0\)"),
    ({"select_metric": "fid"}, ConfigError, r"eval.select_metric: Input should be 'fd', "),
    ({"inception_weights": "w.pth"}, ConfigError, "inception_weights needs inception_weights_sha256"),
    ({"inception": "on", "inception_weights": "missing.pth", "inception_weights_sha256": "0" * 64}, ConfigError,
     "eval.inception_weights: missing.pth does not exist"),
])
def test_plan_refuses_mistakes_with_one_line(trained, settings, error, message):
    with pytest.raises(error, match=message) as info:
        plan_evaluation(trained.run_dir, settings)
    assert "\n" not in str(info.value)


def test_plan_refuses_a_missing_run_and_a_run_without_checkpoints(tmp_path, trained):
    with pytest.raises(RunError, match="no run at"):
        plan_evaluation(tmp_path / "nope")
    empty = tmp_path / "out" / "empty"
    empty.mkdir(parents=True)
    (empty / "config.json").write_text(trained.to_json())
    with pytest.raises(RunError, match="'empty' has no checkpoints .*; train it first"):
        plan_evaluation(empty)


def test_command_line_errors_fail_fast_without_prefect(trained, capsys, tmp_path):
    assert main(["--run-id", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run at") and err.count("\n") == 1
    assert main(["--run-id", trained.run_id, "--out", str(trained.out), "--num-seeds", "0"]) == 2
    assert "eval.num_seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-id", "x", "--num-seeds", "two"])
    assert exit_info.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_dry_run_prints_the_config_with_the_eval_flags_applied(trained, capsys):
    argv = ["--run-id", trained.run_id, "--out", str(trained.out), "--select-generator", "raw", "--num-seeds", "3",
            "--dry-run"]
    assert eval_settings_from(parse_args(argv)) == {"num_seeds": 3, "use_ema": False}
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["eval"]["num_seeds"], printed["eval"]["use_ema"], printed["eval"]["select_metric"]) == \
        (3, False, "fd")
    assert printed["eval"]["num_samples"] == trained.eval.num_samples == 200  # the run's, not the config default
    assert build_config(printed).train == trained.train


def test_eval_flags_say_their_default_is_the_runs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--num-seeds NUM_SEEDS Latent seeds per checkpoint; " in help_text
    from flows.evaluate import EVAL_FIELDS

    assert help_text.count("(default: the run's)") == len(EVAL_FIELDS) + 1  # the eval fields and --device


@pytest.mark.slow
def test_the_flow_rescores_a_run_and_rewrites_its_summary(trained, prefect_harness, tmp_path):
    from flows.evaluate import evaluate_existing_run

    out = tmp_path / "out"
    shutil.copytree(trained.out, out)
    run_dir = out / trained.run_id
    result = evaluate_existing_run(str(run_dir), {"select_metric": "recall", "num_seeds": 2})
    table = pd.read_parquet(run_dir / "metrics" / "eval.parquet")
    assert table["step"].tolist() == [6, 6, 12, 12] and (table["num_seeds"] == 2).all()
    assert table["recall_seed_std"].notna().all() and (table["select_metric"] == "recall").all()
    best = table[table["best"]].iloc[0]
    assert result["best_checkpoint"].endswith(best["checkpoint"]) and result["best_generator"] == "ema"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selection"]["metric"] == "recall" and summary["best"]["step"] == best["step"]
    assert summary["best"]["num_seeds"] == 2 and "precision" in summary["reference"]["floor"]
    assert summary["train"]["final_step"] == 12  # from the checkpoints: this run had no summary yet
    assert (run_dir / "report.html").is_file() and (run_dir / "gallery" / "grid_5x5.png").is_file()
    # The command line, table only, reuses every row of the same settings.
    assert main(["--run-id", trained.run_id, "--out", str(out), "--select-metric", "recall", "--num-seeds", "2",
                 "--no-gallery"]) == 0
    again = pd.read_parquet(run_dir / "metrics" / "eval.parquet")
    pd.testing.assert_frame_equal(table, again)


def _folder(root, n: int) -> None:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"{i:03d}.png")


@pytest.mark.slow
def test_a_run_whose_images_moved_is_scored_on_its_prepared_copy_or_where_they_are_now(
        tmp_path, tiny_settings, prefect_harness, capsys):
    """The run's data/manifest.json names the store it trained on: while that is in the cache, the run is
    scored on it wherever its source went; once both are gone, --data-root says where the images are now."""
    from flows.evaluate import evaluate_existing_run
    from ganlib.data.store import trained_store
    from ganlib.errors import DataError
    from ganlib.runs.paths import RunDir

    folder, moved = tmp_path / "imgs", tmp_path / "moved" / "imgs"
    _folder(folder, 40)
    settings = copy.deepcopy(tiny_settings)
    settings["data"] = {"dataset": "folder", "data_root": str(folder), "image_size": 28}
    settings["model"] = {"name": "mlp", "hidden_dim": 16, "d_hidden_dim": 16}
    settings["train"].update(batch_size=8, steps=4, checkpoint_every=4)
    cfg = build_config({"run_id": "moved", "out": str(tmp_path / "out"), **settings})
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    moved.parent.mkdir()
    folder.rename(moved)

    assert trained_store(RunDir(cfg.run_dir).read_manifest(), cfg.out) == store
    result = evaluate_existing_run(str(cfg.run_dir), gallery=False)  # the source is gone, its prepared copy not
    assert result["num_checkpoints"] == 1 and pd.read_parquet(result["eval_table"])["ssl_fd"].notna().all()

    shutil.rmtree(store)  # and now the prepared copy too
    with pytest.raises(DataError, match=rf"^data.data_root: {folder} is not a directory \(it does not exist\); "
                                        r"point --data-root at a "):
        plan_evaluation(cfg.run_dir)
    code = main(["--run-id", "moved", "--out", str(cfg.out), "--data-root", str(moved), "--dry-run"])
    assert code == 0 and json.loads(capsys.readouterr().out)["data"]["data_root"] == str(moved)
    result = evaluate_existing_run(str(cfg.run_dir), data_root=str(moved), gallery=False, rescore=True)
    assert result["num_checkpoints"] == 1  # prepared again from where they are now: the same images, so scored
