import pandas as pd
import pytest
import torch

from ganlib.data.store import load_store, prepare_dataset
from ganlib.errors import DataError
from ganlib.evaluate import best_checkpoint, domain_reference, evaluate_run, score_images
from ganlib.train import train


def test_evaluate_run_scores_every_checkpoint_and_marks_the_best(tiny):
    cfg = tiny(run_id="ev")
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert table["step"].tolist() == [6, 12]
    assert table["best"].sum() == 1
    assert table.loc[table["best"], "fd"].item() == table["fd"].min()
    assert ((table["is_mean"] >= 1) & (table["is_mean"] <= 10)).all()
    assert pd.read_parquet(cfg.run_dir / "metrics" / "eval.parquet").shape == table.shape
    assert best_checkpoint(table, cfg.run_dir).is_file()
    # Scoring again reuses the rows of unchanged checkpoints and gives identical numbers.
    again = evaluate_run(cfg, store)
    pd.testing.assert_frame_equal(table.drop(columns="seconds"), again.drop(columns="seconds"))


def test_real_images_score_better_than_noise(tiny):
    cfg = tiny(run_id="ref", eval__classifier_steps=150)
    store_dir = prepare_dataset(cfg.data, cfg.out)
    store = load_store(store_dir)
    classifier, ref = domain_reference(store, cfg.out, cfg.eval, cfg.seed, torch.device("cpu"))
    real = torch.from_numpy(store.images[:200].copy()).float() / 127.5 - 1
    noise = torch.rand_like(real) * 2 - 1
    real_scores = score_images(real, classifier, ref, 10)
    noise_scores = score_images(noise, classifier, ref, 10)
    assert real_scores["fd"] < noise_scores["fd"]
    assert real_scores["classes_present"] == 10


def test_no_checkpoints_is_a_clear_error(tiny):
    cfg = tiny(run_id="empty")
    with pytest.raises(DataError, match="has no checkpoints"):
        evaluate_run(cfg, prepare_dataset(cfg.data, cfg.out))


def test_conditional_runs_report_class_accuracy(tiny):
    cfg = tiny(run_id="cond-ev", model__conditional=True)
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert table["class_accuracy"].between(0, 1).all()
    assert (table["generator"] == "ema").all()


def test_raw_generator_can_be_scored_instead_of_the_ema(tiny):
    cfg = tiny(run_id="raw-ev", eval__use_ema=False)
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert (table["generator"] == "raw").all() and table["class_accuracy"].isna().all()
