"""ganlib.evaluation.contrastive: the self-supervised encoder (training, determinism, files) and what its
space means: FD ranks real < slightly blurred < noisy < mode-collapsed on two datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.eval_space import KINDS, in_memory_store, ranking, shapes
from ganlib.config import EvalConfig, build_config
from ganlib.data.store import load_store, prepare_dataset
from ganlib.errors import CheckpointError
from ganlib.evaluation.contrastive import MAX_EPOCHS, embed, load_encoder, save_encoder, train_encoder


def _images(n=300, seed=0):
    return torch.from_numpy(shapes(n, size=32, seed=seed))


def test_same_seed_same_encoder_and_the_callers_random_streams_are_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    logs = []
    first, info = train_encoder(_images(), num_steps=6, batch_size=64, seed=3, on_log=logs.append)
    assert torch.equal(torch.random.get_rng_state(), before)
    second, _ = train_encoder(_images(), num_steps=6, batch_size=64, seed=3)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert info["train_steps"] == 6 and 0 <= info["view_match"] <= 1 and np.isfinite(info["final_loss"])
    assert logs[-1]["step"] == 6 and logs[-1]["num_steps"] == 6
    x = _images(10, seed=1).float() / 127.5 - 1
    assert embed(first, x).shape == (10, 128) and torch.equal(embed(first, x), embed(second, x))


def test_a_small_dataset_trains_for_at_most_max_epochs():
    _, info = train_encoder(_images(16), num_steps=10_000, batch_size=16)
    assert info["train_steps"] == MAX_EPOCHS


def test_an_encoder_file_round_trips_and_a_bad_one_is_a_clear_error(tmp_path):
    model, info = train_encoder(_images(64), num_steps=2, batch_size=32)
    save_encoder(model, {"view_match": info["view_match"]}, tmp_path / "enc.pt")
    loaded, meta = load_encoder(tmp_path / "enc.pt", "cpu")
    x = _images(8, seed=2).float() / 127.5 - 1
    assert torch.equal(embed(model.eval(), x), embed(loaded, x)) and meta["view_match"] == info["view_match"]
    (tmp_path / "bad.pt").write_bytes(b"not a file torch can read")
    with pytest.raises(CheckpointError, match="corrupt or unreadable .*delete it so the encoder is retrained"):
        load_encoder(tmp_path / "bad.pt", "cpu")


@pytest.mark.slow
@pytest.mark.stress  # a minute each (an encoder trained for 150 steps on 2,000 images): the long tier, which CI runs
@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_fd_in_the_space_ranks_real_blurred_noisy_collapsed(dataset, tmp_path):
    if dataset == "digits":
        cfg = build_config({"out": str(tmp_path), "data": {"dataset": "digits", "num_images": 2000}})
        store = load_store(prepare_dataset(cfg.data, tmp_path))
    else:
        store = in_memory_store(shapes(2000, seed=5), "shapes-test")
    # one KID subset: the test reads FD only, and KID's 100 float64 subsets were a third of its time
    eval_cfg = EvalConfig(num_samples=1000, ssl_steps=150, kid_subsets=1)
    fds = ranking(store, tmp_path, eval_cfg, with_domain=False)["ssl"]
    values = [fds[k] for k in KINDS]
    assert values == sorted(values), fds
