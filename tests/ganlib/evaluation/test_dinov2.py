"""ganlib.evaluation.dinov2: Meta's DINOv2 key names and shapes, variants read from shapes, position
embeddings, the weights file checked by sha256, deterministic features, and the dinov2_* columns."""

from __future__ import annotations

import copy
import logging
import pickle

import numpy as np
import pytest
import torch

from ganlib.config import EvalConfig, build_config
from ganlib.errors import CheckpointError, ConfigError
from ganlib.evaluation.dinov2 import (
    DinoV2,
    check_weights_file,
    dinov2_features,
    from_state_dict,
    load_dinov2,
    to_dinov2_input,
    variant_name,
    write_random_weights,
)
from ganlib.runs.files import sha256_file

CPU = torch.device("cpu")


def official_keys(dim: int, depth: int, pos_tokens: int = 1370, patch: int = 14) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of Meta's dinov2_vit*14_pretrain.pth, in their order."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, pos_tokens, dim), "mask_token": (1, dim),
            "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                     b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                     b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "ls1.gamma": (dim,),
                     b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                     b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                     b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,), b + "ls2.gamma": (dim,)})
    keys.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return keys


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random backbone (width 64, depth 2, patch 14, 37x37 position grid) saved with official key
    names, and its sha256."""
    path = tmp_path_factory.mktemp("dinov2") / "tiny.pth"
    return path, write_random_weights(path, dim=64, depth=2, seed=0)


def test_vit_s14_has_the_official_keys_and_shapes():
    state = DinoV2().state_dict()  # ViT-S/14: width 384, depth 12, 6 heads, 518-px position grid
    expected = official_keys(384, 12)
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(v.numel() for k, v in state.items()) == 22_056_576  # dinov2_vits14: 22.06 M parameters


def test_the_variant_is_read_from_the_shapes():
    small = from_state_dict(DinoV2().state_dict())
    assert variant_name(small) == "vits14" and small.blocks[0].attn.num_heads == 6 and small.pos_grid == 37
    tiny = from_state_dict(DinoV2(dim=128, depth=3, num_heads=2, pos_grid=5).state_dict())
    assert variant_name(tiny) == "vit-d128-l3-p14" and tiny.blocks[0].attn.num_heads == 2 and tiny.pos_grid == 5
    registers = from_state_dict(DinoV2(dim=64, depth=1, num_heads=1, num_registers=4).state_dict())
    assert variant_name(registers) == "vit-d64-l1-p14-reg4" and registers.num_registers == 4


def test_giant_and_foreign_state_dicts_are_one_line_errors():
    state = DinoV2(dim=64, depth=1, num_heads=1).state_dict()
    giant = {**state, "blocks.0.mlp.w12.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="ViT-g/14, whose SwiGLU feed-forward ganlib does not implement") as info:
        from_state_dict(giant)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"not a DINOv2 backbone's state dict \(pos_embed"):
        from_state_dict({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="does not fit a DINOv2 ViT") as info:
        from_state_dict({**state, "head.weight": torch.zeros(2)})
    assert "\n" not in str(info.value)


def test_position_embeddings_are_resized_to_the_input_grid():
    model = DinoV2(dim=64, depth=1, num_heads=1)  # 37 x 37 patches: 518 px
    assert model.position_embedding(37) is model.pos_embed
    pos = model.position_embedding(16)  # 224 px / 14
    assert pos.shape == (1, 1 + 16 * 16, 64)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])  # the CLS token's is not resized
    with torch.no_grad():  # bicubic weights sum to one: a constant field stays constant
        model.pos_embed[:, 1:] = 0.5
    assert torch.allclose(model.position_embedding(16)[:, 1:], torch.full((1, 256, 64), 0.5), atol=1e-5)
    registers = DinoV2(dim=64, depth=1, num_heads=1, num_registers=4)
    assert registers.position_embedding(16).shape == (1, 257, 64)
    assert registers(torch.zeros(2, 3, 224, 224)).shape == (2, 64)


def test_images_become_224_px_imagenet_normalised_rgb():
    white = to_dinov2_input(torch.ones(2, 1, 28, 28))
    assert white.shape == (2, 3, 224, 224)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(white[0, :, 100, 100], expected, atol=1e-5)


def test_a_wrong_sha256_is_a_one_line_error(weights):
    path, sha = weights
    assert sha == sha256_file(path)
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    cfg = EvalConfig(dinov2="on", dinov2_weights=path, dinov2_weights_sha256=wrong)
    with pytest.raises(ConfigError, match=f"eval.dinov2_weights: .* has sha256 {sha}, not {wrong}") as info:
        load_dinov2(cfg, CPU)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; download it .*dinov2_vits14_pretrain.pth"):
        check_weights_file(tmp_path / "nope.pth", "0" * 64)
    code = tmp_path / "code.pth"  # a pickle that would run code: refused by weights_only loading
    code.write_bytes(pickle.dumps(print))
    with pytest.raises(CheckpointError, match="is not a DINOv2 weights file") as info:
        check_weights_file(code, sha256_file(code))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="dinov2_weights needs dinov2_weights_sha256"):
        build_config({"eval": {"dinov2_weights": "w.pth"}})
    with pytest.raises(ConfigError, match="select_metric 'dinov2_fd' needs the DINOv2 space"):
        build_config({"eval": {"select_metric": "dinov2_fd"}})


def test_off_auto_and_no_file_are_skipped_with_the_reason(weights, caplog):
    path, sha = weights
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        assert load_dinov2(EvalConfig(dinov2="off"), CPU).status == "skipped: eval.dinov2 is 'off'"
        assert load_dinov2(EvalConfig(), CPU).status.startswith("skipped: no eval.dinov2_weights file")
        assert not caplog.records  # the default (auto, no file) is quiet
        asked = load_dinov2(EvalConfig(dinov2="on"), CPU)
        assert asked.model is None and len(caplog.records) == 1 and "no eval.dinov2_weights" in caplog.text
        unused = load_dinov2(EvalConfig(dinov2_weights=path, dinov2_weights_sha256=sha), CPU)
        assert unused.status.startswith("skipped: eval.dinov2 'auto' computes DINOv2 features on a GPU only")
    net = load_dinov2(EvalConfig(dinov2="on", dinov2_weights=path, dinov2_weights_sha256=sha.upper()), CPU)
    assert (net.status, net.variant, net.weights_sha256) == ("ok", "vit-d64-l2-p14", sha)
    assert not net.model.training


def test_features_are_deterministic_and_grey_is_rgb(weights):
    path, sha = weights
    net = load_dinov2(EvalConfig(dinov2="on", dinov2_weights=path, dinov2_weights_sha256=sha), CPU)
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = dinov2_features(net.model, images, batch_size=2)
    assert first.shape == (5, 64) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, dinov2_features(net.model, images, batch_size=2))
    assert torch.allclose(first, dinov2_features(net.model, images.repeat(1, 3, 1, 1), batch_size=5), atol=1e-5)
    assert not torch.allclose(first[0], first[1])


def test_the_pipeline_checks_the_weights_file_before_any_work(tiny, weights):
    from ganlib.preflight import check_run

    path, sha = weights
    cfg = tiny(run_id="w", eval__dinov2_weights=str(path), eval__dinov2_weights_sha256="0" * 64)
    with pytest.raises(ConfigError, match="eval.dinov2_weights: .* has sha256"):
        check_run(cfg)
    check_run(tiny(run_id="w", eval__dinov2_weights=str(path), eval__dinov2_weights_sha256=sha))


@pytest.mark.slow  # trains a tiny run and scores it twice: tens of seconds on 2 busy cores
def test_a_tiny_run_gets_dinov2_columns_from_the_file_and_none_without(tmp_path, tiny_settings, weights, caplog):
    from ganlib.data.store import prepare_dataset
    from ganlib.evaluation.evaluate import evaluate_run
    from ganlib.training.loop import train

    path, sha = weights
    settings = copy.deepcopy(tiny_settings)
    # Few images: a ViT at 224 px is the slow part (about 1.5 s per 100 images for this tiny one on 2 cores).
    settings["eval"].update(ssl_space=False, generators="selected", dinov2="on", num_samples=100, num_real=50)
    cfg = build_config({"run_id": "dv", "out": str(tmp_path / "out"), **settings})
    store = prepare_dataset(cfg.data, cfg.out)
    train(cfg, store)
    columns = ["dinov2_fd", "dinov2_kid_mean", "dinov2_precision", "dinov2_recall", "dinov2_density",
               "dinov2_coverage", "dinov2_fd_floor", "dinov2_coverage_floor"]

    with caplog.at_level(logging.WARNING, logger="ganlib"):
        offline = evaluate_run(cfg, store)  # 'on' without a file: one warning, empty columns, the status
    assert offline[columns].isna().all().all() and offline["fd"].notna().all()
    assert offline["dinov2_status"].str.startswith("skipped: no eval.dinov2_weights file").all()
    assert sum("DINOv2" in r.getMessage() for r in caplog.records) == 1

    settings["eval"].update(dinov2_weights=str(path), dinov2_weights_sha256=sha, select_metric="dinov2_fd")
    cfg = build_config({"run_id": "dv", "out": str(tmp_path / "out"), **settings})
    table = evaluate_run(cfg, store)
    assert table["step"].tolist() == [6, 12]
    assert np.isfinite(table[columns].to_numpy()).all() and (table["dinov2_status"] == "ok").all()
    assert (table["feature_spaces"] == "domain-classifier,dinov2-vit-d64-l2-p14").all()
    assert table["select_metric"].iloc[0] == "dinov2_fd"
    assert table.loc[table["best"], "dinov2_fd"].item() == table["dinov2_fd"].min()
    assert table["fd"].tolist() == offline["fd"].tolist()  # the new space changes no other number


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_computes_on_a_gpu_like_the_cpu(weights):
    path, sha = weights
    cfg = EvalConfig(dinov2_weights=path, dinov2_weights_sha256=sha)  # 'auto'
    gpu = load_dinov2(cfg, torch.device("cuda"))
    assert gpu.status == "ok"
    cpu = load_dinov2(cfg.model_copy(update={"dinov2": "on"}), CPU)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    on_gpu, on_cpu = dinov2_features(gpu.model, images), dinov2_features(cpu.model, images)
    assert on_gpu.device == CPU and torch.allclose(on_gpu, on_cpu, atol=2e-3, rtol=1e-3)
