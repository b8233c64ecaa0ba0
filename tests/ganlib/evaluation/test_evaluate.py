"""ganlib.evaluation.evaluate: the eval table (raw and EMA rows, every metric, floors), reuse, seeds, selection."""

from __future__ import annotations

import copy
import logging
import re
import shutil
import urllib.error
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import ganlib.evaluation.evaluate as ev
from ganlib.config import EvalConfig, build_config
from ganlib.data.store import load_store, prepare_dataset
from ganlib.errors import DataError, DeviceMemoryError
from ganlib.evaluation.evaluate import (
    EVAL_NOISE_OFFSET,
    SEED_STRIDE,
    SELECT_DIRECTIONS,
    best_checkpoint,
    best_generator,
    domain_reference,
    domain_space,
    embed_samples,
    evaluate_run,
    real_split,
    score_images,
    select_best,
    space_scores,
    ssl_reference,
    ssl_space,
)
from ganlib.evaluation.inception import InceptionNet
from ganlib.sampling import fixed_noise, generate, load_generator, to_uint8
from ganlib.training.loop import train

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it

METRICS = ["fd", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "density", "coverage",
           "memorisation_fraction"]


@pytest.fixture(scope="module")
def trained_out(tmp_path_factory, tiny_settings, own_cache):
    """An output root holding one tiny trained run ('ev', checkpoints at steps 6 and 12, with an EMA),
    its prepared store, its domain classifier and its self-supervised encoder."""
    out = tmp_path_factory.mktemp("evaluate") / "out"
    cfg = build_config({"run_id": "ev", "out": str(out), **copy.deepcopy(tiny_settings)})
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    domain_reference(load_store(store), cfg.out, cfg.eval, cfg.seed, torch.device("cpu"))
    ssl_reference(load_store(store), cfg.out, cfg.eval, torch.device("cpu"))
    return out


@pytest.fixture
def run(trained_out, tmp_path, tiny_settings):
    """A private copy of the trained run; returns make(**eval settings) -> (config, store dir)."""
    out = tmp_path / "out"
    shutil.copytree(trained_out, out)

    def make(**eval_settings):
        settings = copy.deepcopy(tiny_settings)
        settings["eval"].update(eval_settings)
        cfg = build_config({"run_id": "ev", "out": str(out), **settings})
        return cfg, prepare_dataset(cfg.data, cfg.out)

    return make


def test_one_row_per_checkpoint_and_generator_with_every_metric(run):
    cfg, store = run()
    table = evaluate_run(cfg, store)
    assert table["step"].tolist() == [6, 6, 12, 12]
    assert table["generator"].tolist() == ["raw", "ema", "raw", "ema"]  # the selected generator last per step
    assert table[METRICS].notna().all().all()
    assert ((table["precision"] >= 0) & (table["precision"] <= 1)).all()
    assert (table["num_samples"] == 200).all() and (table["num_real"] == 200).all()
    assert (table["feature_space"] == "domain-classifier").all()
    assert (table["feature_spaces"] == "domain-classifier,self-supervised").all()
    # The self-supervised space is computed for labelled data too, with its floors.
    ssl = ["ssl_fd", "ssl_kid_mean", "ssl_precision", "ssl_recall", "ssl_density", "ssl_coverage", "ssl_fd_floor",
           "ssl_precision_floor", "ssl_view_match"]
    assert table[ssl].notna().all().all() and "ssl_is_mean" not in table
    # Offline defaults on a CPU: Inception is not attempted, and the table says why instead of a number.
    assert table["inception_status"].str.startswith("skipped: eval.inception 'auto'").all()
    assert table["inception_fid"].isna().all() and table["inception_kid_mean"].isna().all()
    # The real-vs-real floor: held-out real images scored like a checkpoint, far better than this tiny GAN.
    assert (table["floor_num_samples"] == 200).all()
    assert (table["fd_floor"] < table["fd"]).all() and (table["precision_floor"] > 0.5).all()
    # Best: the lowest FD among the EMA rows, recorded with how it was chosen.
    ema = table[table["generator"] == "ema"]
    assert table["best"].sum() == 1 and table.loc[table["best"], "fd"].item() == ema["fd"].min()
    assert table.loc[table["best"], "generator"].item() == "ema" == best_generator(table)
    assert (table["select_metric"] == "fd").all() and (table["select_direction"] == "min").all()
    assert best_checkpoint(table, cfg.run_dir).is_file()
    for png in table["memorisation_png"]:
        assert Image.open(png).size[0] > 200
    assert pd.read_parquet(cfg.run_dir / "metrics" / "eval.parquet").shape == table.shape
    # Scoring again reuses every row (same checkpoint bytes, generator and settings).
    again = evaluate_run(cfg, store)
    pd.testing.assert_frame_equal(table, again)


def test_same_checkpoint_and_seed_give_identical_numbers(run):
    cfg, store = run()
    first = evaluate_run(cfg, store)
    second = evaluate_run(cfg, store, rescore=True)
    numeric = [c for c in first.columns if c != "seconds" and first[c].dtype.kind == "f"]
    assert len(numeric) > 20
    np.testing.assert_array_equal(first[numeric].to_numpy(), second[numeric].to_numpy())


def test_a_corrupt_table_is_set_aside_and_every_checkpoint_scored_again(run, caplog):
    cfg, store = run()
    first = evaluate_run(cfg, store)
    table = cfg.run_dir / "metrics" / "eval.parquet"
    table.write_bytes(table.read_bytes()[:100])  # truncated by a full disk or a copy
    with caplog.at_level("WARNING", logger="ganlib"):
        again = evaluate_run(cfg, store)
    numeric = [c for c in first.columns if c != "seconds" and first[c].dtype.kind == "f"]
    np.testing.assert_array_equal(first[numeric].to_numpy(), again[numeric].to_numpy())
    assert (cfg.run_dir / "metrics" / "corrupt" / "eval.parquet").is_file()  # kept, never deleted
    aside = cfg.run_dir / "metrics" / "corrupt" / "eval.parquet"
    assert (f"{table} is unreadable (not a whole parquet file: corrupt or truncated); moved it to {aside}, and "
            "every checkpoint is scored again") in caplog.text


def test_samples_pass_through_the_spaces_a_batch_at_a_time(run, monkeypatch):
    """No float copy of every sample is held (10,000 RGB images of 256 px: 7.9 GB): each space is given at most
    eval.batch_size images at once, and the scores are those of the whole set."""
    seen = []
    classify = ev.classify
    monkeypatch.setattr(ev, "classify", lambda model, images, **kw: seen.append(len(images)) or classify(
        model, images, **kw))
    cfg, store = run(batch_size=64)  # 200 samples: 64, 64, 64, 8
    table = evaluate_run(cfg, store, rescore=True)
    assert seen and max(seen) == 64 and sum(seen) == 200 * len(table)
    assert table["fd"].notna().all() and table["ssl_fd"].notna().all()


def test_embedding_samples_in_batches_gives_the_features_of_the_whole_set(run):
    cfg, store_dir = run()
    store, cpu = load_store(store_dir), torch.device("cpu")
    classifier, domain_ref = domain_reference(store, cfg.out, cfg.eval, cfg.seed, cpu)
    encoder, ssl_ref = ssl_reference(store, cfg.out, cfg.eval, cpu)
    spaces = [domain_space(classifier, 16, domain_ref["tag"]), ssl_space(encoder, 16, ssl_ref["tag"])]
    generator, _ = load_generator(cfg.run_dir / "checkpoints" / "step_000012.pt", cpu)
    z = fixed_noise(50, cfg.model.noise_dim, 3)
    embedded, samples = embed_samples(spaces, generator, z, None, 16, "test samples")
    whole = generate(generator, z, batch_size=16)
    assert samples.dtype == torch.uint8 and torch.equal(samples, to_uint8(whole))
    for space in spaces:
        features, aux = space.embed(whole)
        assert torch.equal(embedded[space.kind][0], features) and torch.equal(embedded[space.kind][1], aux)


def test_a_long_embedding_says_how_far_it_is(run, monkeypatch, caplog):
    cfg, store_dir = run()
    store, cpu = load_store(store_dir), torch.device("cpu")
    classifier, domain_ref = domain_reference(store, cfg.out, cfg.eval, cfg.seed, cpu)
    generator, _ = load_generator(cfg.run_dir / "checkpoints" / "step_000012.pt", cpu)
    monkeypatch.setattr(ev, "PROGRESS_EVERY_S", 0)
    with caplog.at_level(logging.INFO, logger="ganlib"):
        embed_samples([domain_space(classifier, 20, "t")], generator, fixed_noise(60, cfg.model.noise_dim, 0), None,
                      20, "step 12 ema samples")
    lines = [r.getMessage() for r in caplog.records if "images through" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [
        f"evaluation: step 12 ema samples: {n}/60 images through domain-classifier" for n in (20, 40)]


class _Linear(torch.nn.Module):
    """A generator of 4x4 grey images, enough for the batching (generate() wants parameters, eval mode)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(-1, 1, 4, 4)


def _space_that_fits(most: int, message: str) -> ev.Space:
    """A feature space whose device runs out of memory for batches of more than ``most`` images."""
    def embed(images):
        if len(images) > most:
            raise (torch.cuda.OutOfMemoryError if message.startswith("CUDA") else RuntimeError)(message)
        return images.flatten(1) * 2, images.new_empty(len(images), 0)

    return ev.Space("ssl", "test", "test", embed)


@pytest.mark.parametrize("message", ["CUDA out of memory. Tried to allocate 9.00 GiB. GPU 1 has a total capacity "
                                     "of 23.64 GiB", "MPS backend out of memory (MPS allocated: 17.1 GB)"])
def test_batches_too_large_for_the_gpu_are_halved_until_they_fit(caplog, message):
    generator, z = _Linear().eval(), torch.randn(250, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="ganlib"), torch.no_grad():
        embedded, samples = embed_samples([_space_that_fits(40, message)], generator, z, None, 100, "step 3 samples")
        whole = generate(generator, z, batch_size=250)
    assert torch.equal(embedded["ssl"][0], whole.flatten(1) * 2) and torch.equal(samples, to_uint8(whole))
    warnings = [r.getMessage() for r in caplog.records]
    where = "cuda:1, asking for 9.00 GiB more" if message.startswith("CUDA") else "mps"
    assert warnings == [f"evaluation: step 3 samples: out of memory on {where} in a batch of {n}; going on in "
                        f"batches of {n // 2} (to start there: --eval-batch-size {n // 2} (flows/evaluate.py: "
                        f"--batch-size {n // 2}))" for n in (100, 50)]
    with pytest.raises(DeviceMemoryError, match=f"^evaluation: step 3 samples: out of memory on {where} even one "
                                                "image at a time: free the GPU .* or use --device cpu$"):
        embed_samples([_space_that_fits(0, message)], generator, z, None, 4, "step 3 samples")


def test_an_error_other_than_memory_in_a_space_is_not_retried():
    def embed(images):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="^a bug$"):
        embed_samples([ev.Space("ssl", "t", "t", embed)], _Linear().eval(), torch.randn(10, 8), None, 4, "samples")


def test_evaluating_on_apples_mps_does_the_float64_work_on_the_cpu(run, tmp_path):
    """MPS has no float64: the statistics, KID and k-NN work of a run evaluated there runs on the CPU, with the
    CPU's numbers. (Where there is no MPS, as here, anything sent there fails: the test shows nothing is.)"""
    cfg, store_dir = run()
    store, cpu, mps = load_store(store_dir), torch.device("cpu"), torch.device("mps")
    classifier, reference = domain_reference(store, cfg.out, cfg.eval, cfg.seed, cpu)
    space = domain_space(classifier, 100, "mps-test")
    ref_idx, held_idx = real_split(len(store.images), cfg.eval.num_samples)
    on_mps = ev._space_reference(space, store, ref_idx, held_idx, tmp_path / "mps.pt", cfg.eval, mps)
    on_cpu = ev._space_reference(space, store, ref_idx, held_idx, tmp_path / "cpu.pt", cfg.eval, cpu)
    assert torch.equal(on_mps["radii"], on_cpu["radii"]) and on_mps["floor"] == on_cpu["floor"]
    features, probs = space.embed(torch.rand(60, 1, 28, 28) * 2 - 1)
    assert (space_scores("domain", features, probs, reference, cfg.eval, 0, mps)
            == space_scores("domain", features, probs, reference, cfg.eval, 0, cpu))


def test_training_the_classifier_or_encoder_says_how_far_it_is(monkeypatch, caplog):
    """Minutes at 128 px on a CPU (the classifier was silent for them): a line at most every PROGRESS_EVERY_S."""
    monkeypatch.setattr(ev, "PROGRESS_EVERY_S", 0)
    progress = ev.training_progress("domain classifier")
    with caplog.at_level(logging.INFO, logger="ganlib"):
        for step in (100, 200, 300):
            progress({"step": step, "num_steps": 300, "loss": 0.5, "lr": 1e-3})
    assert [r.getMessage().split("  (")[0] for r in caplog.records] == [
        f"evaluation: domain classifier step {step}/300  loss 0.500" for step in (100, 200)]  # not at the end
    monkeypatch.setattr(ev, "PROGRESS_EVERY_S", 30)
    caplog.clear()
    quiet = ev.training_progress("self-supervised encoder")
    quiet({"step": 100, "num_steps": 300, "loss": 0.5})
    assert caplog.records == []


def test_several_seeds_give_the_mean_and_a_standard_deviation(run):
    cfg1, store = run(generators="selected")
    one = evaluate_run(cfg1, store)
    assert one["fd_seed_std"].isna().all()
    cfg2, _ = run(generators="selected", num_seeds=2)
    two = evaluate_run(cfg2, store)  # new settings: every row is scored again
    assert (two["num_seeds"] == 2).all() and (two["fd_seed_std"] > 0).all()
    # The mean over seeds: seed 0 is the single-seed evaluation, seed 1 is recomputed here.
    classifier, reference = domain_reference(load_store(store), cfg2.out, cfg2.eval, cfg2.seed, torch.device("cpu"))
    generator, meta = load_generator(cfg2.run_dir / "checkpoints" / "step_000012.pt", "cpu")
    second_seed = cfg2.seed + EVAL_NOISE_OFFSET + SEED_STRIDE
    images = generate(generator, fixed_noise(200, meta["config"]["model"]["noise_dim"], second_seed), 100)
    fd_second = score_images(images, classifier, reference, 10, 100, cfg=cfg2.eval, seed=second_seed)["fd"]
    fd_first = one.loc[one["step"] == 12, "fd"].item()
    assert two.loc[two["step"] == 12, "fd"].item() == pytest.approx((fd_first + fd_second) / 2, rel=1e-9)
    assert two.loc[two["step"] == 12, "fd_seed_std"].item() == pytest.approx(
        np.std([fd_first, fd_second], ddof=1), rel=1e-9)


def test_reference_statistics_are_cached_per_dataset_space_and_count(run, monkeypatch):
    cfg, store = run()
    evaluate_run(cfg, store)
    cached = sorted(p.name for p in (cfg.out / "_cache" / "eval-reference").glob("*.pt"))  # (not the .lock files)
    assert len(cached) == 3 and any("-pixels-n200-" in n for n in cached) and all("-n200-k3-" in n for n in cached)
    assert any("-ssl-v1-" in n for n in cached)
    reference = torch.load(next((cfg.out / "_cache" / "eval-reference").glob("*-seed7-*.pt")), weights_only=True)
    assert reference["mu"].dtype == torch.float64 and reference["sigma"].dtype == torch.float64
    assert reference["num_real"] == 200 and set(reference["floor"]) >= {"fd", "kid_mean", "precision"}

    def fail(*args, **kwargs):
        raise AssertionError("the real data's reference was recomputed")

    monkeypatch.setattr(ev, "knn_radii", fail)  # only the reference's radii come from here
    evaluate_run(cfg, store, rescore=True)  # scores the checkpoints again from the cached reference


def test_runs_evaluating_the_same_data_at_once_compute_its_reference_once(run, monkeypatch, caplog):
    """A sweep's members (threads, or processes) reach evaluation together: one computes, the others wait."""
    import threading
    import time

    cfg, store_dir = run()
    store = load_store(store_dir)
    calls, nearest = [], ev.nearest_training

    def slow_nearest(*args, **kwargs):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one computes
        return nearest(*args, **kwargs)

    monkeypatch.setattr(ev, "nearest_training", slow_nearest)
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, ev.pixel_reference(store, cfg.out, cfg.eval)),
                                name=n) for n in ("a", "b")]
    with caplog.at_level(logging.INFO, logger="ganlib"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(calls) == 1 and set(results) == {"a", "b"}
    assert torch.equal(results["a"]["holdout_nearest"], results["b"]["holdout_nearest"])
    assert "another process is computing" in caplog.text


def test_the_self_supervised_space_changes_no_other_number(run):
    with_ssl = evaluate_run(*run())
    cfg, store = run(ssl_space=False)
    without = evaluate_run(cfg, store)
    assert without["ssl_fd"].isna().all() and (without["feature_spaces"] == "domain-classifier").all()
    other = [c for c in without.columns if c not in ("seconds", "settings_key", "feature_spaces")
             and not c.startswith("ssl_")]
    pd.testing.assert_frame_equal(with_ssl[other], without[other])


def test_memorisation_in_the_self_supervised_space(run):
    table = evaluate_run(*run(memorisation="ssl"))
    assert (table["memorisation_space"] == "ssl").all() and table["memorisation_fraction"].between(0, 1).all()
    assert (table["settings_key"] != evaluate_run(*run())["settings_key"]).all()


def test_real_split_is_deterministic_and_disjoint():
    ref, held = real_split(1000, 300)
    assert len(ref) == len(held) == 300 and not set(ref) & set(held)
    assert np.array_equal(ref, real_split(1000, 300)[0])
    assert [len(part) for part in real_split(400, 10_000)] == [200, 200]  # at most half each


def test_selected_generator_only_and_selection_by_another_metric(run):
    cfg, store = run(generators="selected", use_ema=False, select_metric="precision")
    table = evaluate_run(cfg, store)
    assert table["generator"].tolist() == ["raw", "raw"] and table["class_accuracy"].isna().all()
    assert table.loc[table["best"], "precision"].item() == table["precision"].max()
    assert (table["select_direction"] == "max").all() and (table["select_generator"] == "raw").all()


def test_a_metric_without_values_falls_back_to_fd_and_says_so(run, caplog):
    cfg, store = run(select_metric="inception_fid")
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        table = evaluate_run(cfg, store)
    assert (table["select_metric"] == "fd").all()
    assert table["select_note"].iloc[0].startswith("inception_fid has no values in this table; chose by fd")
    assert sum("chose by fd" in r.getMessage() for r in caplog.records) == 1


def test_select_best_directions_generators_and_fallbacks():
    table = pd.DataFrame({"step": [2, 2, 1, 1], "checkpoint": ["b", "b", "a", "a"],
                          "generator": ["ema", "raw", "ema", "raw"], "fd": [5.0, 1.0, 3.0, 9.0],
                          "recall": [0.2, 0.9, 0.4, 0.1], "inception_fid": [np.nan] * 4})
    chosen = select_best(table, "fd", "auto", "ema")
    assert chosen["step"].tolist() == [1, 1, 2, 2] and chosen["generator"].tolist() == ["raw", "ema", "raw", "ema"]
    assert chosen.loc[chosen["best"], ["step", "generator"]].values.tolist() == [[1, "ema"]]
    by_recall = select_best(table, "recall", "auto", "raw")
    assert by_recall.loc[by_recall["best"], "fd"].tolist() == [1.0]
    assert select_best(table, "fd", "max", "raw").loc[lambda t: t["best"], "fd"].item() == 9.0
    # Unlabelled data has no fd: the default falls back to the self-supervised space's and says so.
    unlabelled = select_best(table.assign(fd=np.nan, ssl_fd=[4.0, 2.0, 1.0, 3.0]), "fd", "auto", "ema")
    assert unlabelled.loc[unlabelled["best"], ["step", "generator"]].values.tolist() == [[1, "ema"]]
    assert unlabelled["select_metric"].iloc[0] == "ssl_fd" and "chose by ssl_fd" in unlabelled["select_note"].iloc[0]
    assert "unlabelled data?" in unlabelled["select_note"].iloc[0]  # the table does not say whether it has labels
    said = select_best(table.assign(fd=np.nan, ssl_fd=[4.0, 2.0, 1.0, 3.0], feature_space="none"), "fd", "auto", "ema")
    assert said["select_note"].iloc[0] == ("unlabelled data has no domain classifier, so no fd; chose by ssl_fd, "
                                           "the FD in the self-supervised space (lower is better), instead")
    # A metric of another space (Inception skipped) is not missing for want of labels: the general note.
    other = select_best(table.assign(fd=np.nan, ssl_fd=[4.0, 2.0, 1.0, 3.0], feature_space="none"), "inception_fid",
                        "auto", "ema")
    assert other["select_metric"].iloc[0] == "ssl_fd" and "domain classifier, so no" not in other["select_note"].iloc[0]
    newest = select_best(table.assign(fd=np.nan), "inception_fid", "auto", "ema")
    assert newest.loc[newest["best"], ["step", "generator"]].values.tolist() == [[2, "ema"]]
    assert newest["select_metric"].iloc[0] == "newest" and "newest checkpoint" in newest["select_note"].iloc[0]
    # A run without an EMA: the raw rows are the candidates even when the EMA is preferred.
    raw_only = select_best(table[table["generator"] == "raw"], "fd", "auto", "ema")
    assert raw_only["select_generator"].iloc[0] == "raw" and raw_only["best"].sum() == 1
    assert set(SELECT_DIRECTIONS) == set(get_args(EvalConfig.model_fields["select_metric"].annotation))


class _TinyExtractor(torch.nn.Module):
    """Stands in for torch-fidelity's Inception-v3 (uint8 RGB in, (pool, logits) out) at a fraction of its cost."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=3)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        pool = self.conv((x.float() - 128) / 128).relu().mean(dim=(2, 3))
        return pool, self.head(pool)


def test_inception_metrics_fill_their_columns_when_a_network_is_there(run, monkeypatch):
    network = InceptionNet(_TinyExtractor().eval(), "ok", "ab" * 32)
    monkeypatch.setattr(ev, "load_inception", lambda cfg, device: network)
    cfg, store = run(inception="on", select_metric="inception_kid_mean")
    table = evaluate_run(cfg, store)
    inception = ["inception_fid", "inception_kid_mean", "inception_is_mean", "inception_precision",
                 "inception_recall", "inception_density", "inception_coverage", "inception_fid_floor"]
    assert table[inception].notna().all().all() and (table["inception_status"] == "ok").all()
    assert (table["feature_spaces"] == "domain-classifier,self-supervised,inception-v3").all()
    assert table.loc[table["best"], "inception_kid_mean"].item() == table.loc[
        table["generator"] == "ema", "inception_kid_mean"].min()
    assert any("-inception-abababababab-n200-" in p.name for p in (cfg.out / "_cache" / "eval-reference").iterdir())


def test_offline_without_weights_skips_inception_with_one_warning(run, monkeypatch, caplog):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    cfg, store = run(inception="on")
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        table = evaluate_run(cfg, store)
    status = table["inception_status"].iloc[0]
    assert status.startswith("skipped: no eval.inception_weights file and torch-fidelity could not download")
    assert "URLError" in status and "\n" not in status and (table["inception_status"] == status).all()
    assert table["inception_fid"].isna().all() and table["fd"].notna().all()
    assert sum("Inception" in r.getMessage() for r in caplog.records) == 1


def test_real_images_score_better_than_noise(run):
    cfg, store_dir = run()
    store = load_store(store_dir)
    classifier, ref = domain_reference(store, cfg.out, cfg.eval, cfg.seed, torch.device("cpu"))
    real = torch.from_numpy(store.images[:200].copy()).float() / 127.5 - 1
    noise = torch.rand_like(real) * 2 - 1
    real_scores = score_images(real, classifier, ref, 10, cfg=cfg.eval)
    noise_scores = score_images(noise, classifier, ref, 10, cfg=cfg.eval)
    assert real_scores["fd"] < noise_scores["fd"] and real_scores["kid_mean"] < noise_scores["kid_mean"]
    assert real_scores["precision"] > 0.5 > noise_scores["precision"]
    assert real_scores["classes_present"] == 10


def test_no_checkpoints_is_a_clear_error(tiny):
    cfg = tiny(run_id="empty")
    with pytest.raises(DataError, match="has no checkpoints"):
        evaluate_run(cfg, prepare_dataset(cfg.data, cfg.out))


@pytest.mark.slow
def test_conditional_runs_report_class_accuracy(tiny):
    cfg = tiny(run_id="cond-ev", model__conditional=True)
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)
    assert table["class_accuracy"].between(0, 1).all()
    assert set(table["generator"]) == {"raw", "ema"}


def test_a_run_without_an_ema_is_scored_by_its_raw_generator(tiny):
    cfg = tiny(run_id="noema", train__ema_decay=0.0, eval__generators="selected")
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    table = evaluate_run(cfg, store)  # the EMA is asked for, the raw weights are what there is
    assert table["generator"].tolist() == ["raw", "raw"] and table["best"].sum() == 1
    assert (table["select_generator"] == "raw").all() and best_generator(table) == "raw"
    both = evaluate_run(tiny(run_id="noema", train__ema_decay=0.0), store)
    pd.testing.assert_frame_equal(table, both)  # the same rows, reused


def test_the_score_line_names_the_spaces_that_scored():
    from ganlib.evaluation.evaluate import _score_line

    row = {"step": 2500, "generator": "ema", "fd": 28.5104, "kid_mean": 0.01234, "is_mean": 9.0191, "precision": 0.5575,
           "recall": 0.5878, "ssl_fd": 4.4041, "ssl_precision": 0.6468, "ssl_recall": 0.2222, "inception_fid": 41.25,
           "memorisation_fraction": 0.48, "classes_present": 10, "seconds": 5.06}
    assert _score_line(row, ["domain", "ssl"], 10) == (  # labelled data: as it always read
        "step 2500 ema  FD 28.510  KID 0.0123  IS 9.019  P 0.557  R 0.588  | self-supervised FD 4.404  P 0.647  "
        "R 0.222  | memorised 0.48  classes 10/10  (5.1 s)")
    assert _score_line(row, ["ssl", "inception"], 0) == (
        "step 2500 ema  self-supervised FD 4.404  P 0.647  R 0.222  | Inception FID 41.250  | memorised 0.48  (5.1 s)")
    assert _score_line({**row, "memorisation_fraction": float("nan")}, [], 0) == (
        "step 2500 ema  not scored (no feature space)  | memorised nan  (5.1 s)")


def test_an_unlabelled_folder_is_scored_in_the_self_supervised_space(tiny, tmp_path, caplog):
    """A flat folder of PNGs (no classes): finite FD, KID, precision, recall, coverage and memorisation in the
    self-supervised space for every checkpoint, and the best checkpoint chosen by its FD."""
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):  # coloured squares on a dark background
        image = np.full((32, 32, 3), 20, np.uint8)
        y, x = rng.integers(0, 20, 2)
        image[y: y + 12, x: x + 12] = rng.integers(60, 255, 3)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")
    cfg = tiny(run_id="flat", data__dataset="folder", data__data_root=str(folder), data__image_size=32,
               eval__memorisation="domain")
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    with caplog.at_level(logging.INFO, logger="ganlib"):
        table = evaluate_run(cfg, store)
    assert len(table) == 4 and table["fd"].isna().all()  # no classes, no domain classifier
    # Each checkpoint's line has the scores it has, not "FD nan KID nan IS nan P nan R nan ... classes 0/0".
    lines = [r.getMessage() for r in caplog.records if re.match(r"evaluation: step \d+ (raw|ema) ", r.getMessage())]
    assert len(lines) == 4 and not any("nan" in line or "classes" in line for line in lines)
    assert all(re.fullmatch(r"evaluation: step \d+ (raw|ema)  self-supervised FD [\d.]+  P [\d.]+  R [\d.]+  \| "
                            r"memorised [\d.]+  \([\d.]+ s\)", line) for line in lines), lines
    ssl = ["ssl_fd", "ssl_kid_mean", "ssl_precision", "ssl_recall", "ssl_density", "ssl_coverage",
           "memorisation_fraction", "ssl_fd_floor"]
    assert np.isfinite(table[ssl].to_numpy()).all()
    # eval.memorisation 'domain' on unlabelled data: the feature space it has.
    assert (table["memorisation_space"] == "ssl (no domain classifier)").all()
    assert (table["select_metric"] == "ssl_fd").all()
    assert table.loc[table["best"], "ssl_fd"].item() == table.loc[table["generator"] == "ema", "ssl_fd"].min()
    assert "read the self-supervised space's ssl_* columns" in table["note"].iloc[0]
    # Said once, as information: choosing by ssl_fd is what unlabelled data is documented to do.
    said = [r for r in caplog.records if "chose by ssl_fd" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
