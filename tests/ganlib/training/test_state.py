"""TrainingState: one object holds what a checkpoint holds, saved and restored by one pair of functions."""

from __future__ import annotations

import pytest
import torch

from ganlib.data.store import load_store, prepare_dataset
from ganlib.runs import checkpoint as ckpt
from ganlib.runs.paths import RunDir
from ganlib.sampling import load_generator
from ganlib.training import TrainingState, train
from ganlib.training.distributed import ProcessContext


def _flat(state, prefix=""):
    """Every leaf of a nested state dict as (dotted key, value)."""
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), state


def _assert_same(a: dict, b: dict) -> None:
    fa, fb = dict(_flat(a)), dict(_flat(b))
    assert fa.keys() == fb.keys()
    for key, va in fa.items():
        vb = fb[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


@pytest.mark.parametrize("overrides", [{}, {"model__name": "mlp", "train__ema_decay": 0.0}])
def test_a_saved_state_loads_into_a_fresh_one_unchanged(tiny, overrides):
    cfg = tiny(**overrides).resolved()
    result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    saved = ckpt.load_checkpoint(result.checkpoints[-1])
    store = load_store(prepare_dataset(cfg.data, cfg.out))
    fresh = TrainingState(cfg, tuple(store.images.shape[1:]), store.num_classes, len(store.images),
                          ProcessContext(torch.device("cpu")))
    assert fresh.step == 0
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    # The global RNG states are what the process holds now (restored by load_state_dict); the rest
    # must be exactly what was saved.
    _assert_same({k: v for k, v in again.items() if k != "format"}, {k: v for k, v in saved.items() if k != "format"})
    assert fresh.step == cfg.train.steps and ("generator_ema" in saved) == (cfg.train.ema_decay > 0)


def test_a_rollback_health_wins_over_the_saved_one_and_lowers_the_rates(tiny):
    cfg = tiny().resolved()
    result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    saved = ckpt.load_checkpoint(result.checkpoints[-1])
    store = load_store(prepare_dataset(cfg.data, cfg.out))
    state = TrainingState(cfg, tuple(store.images.shape[1:]), store.num_classes, len(store.images),
                          ProcessContext(torch.device("cpu")))
    state.load_state_dict(saved, health={"rollbacks": 1, "lr_scale": 0.5})
    assert state.health["rollbacks"] == 1 and state.health["lr_scale"] == 0.5
    assert "best_spread" in state.health  # the monitors' counters come from the checkpoint
    assert [g["lr"] for g in state.opt_g.param_groups] == [cfg.train.lr * 0.5]
    assert [g["lr"] for g in state.opt_d.param_groups] == [cfg.train.lr * 0.5]


def test_the_checkpoint_holds_what_load_generator_needs(tiny):
    cfg = tiny().resolved()
    result = train(cfg, prepare_dataset(cfg.data, cfg.out))
    generator, meta = load_generator(RunDir(cfg.run_dir).checkpoint(result.final_step))
    assert meta["step"] == result.final_step and meta["weights"] == "ema"
    assert meta["image_shape"] == [1, 28, 28] and meta["num_classes"] == 10


def test_a_single_process_context_is_the_identity():
    ctx = ProcessContext(torch.device("cpu"))
    x = torch.arange(12.0).reshape(6, 2)
    module = torch.nn.Linear(2, 2)
    shared = torch.Generator()
    assert ctx.is_writer and ctx.world_size == 1
    assert ctx.local_rows(x, chunks=2) is x and ctx.mean_over_ranks(x) is x
    assert ctx.wrap(module) is module and ctx.share_batch_statistics(module) is module
    assert ctx.any_rank(True) and not ctx.any_rank(False)
    assert ctx.step_noise(shared, seed=7, step=3) is shared
