"""ganlib.evaluation.inception: weights from a file checked by sha256, the library download, clean offline skips."""

from __future__ import annotations

import logging
import pickle
import urllib.error

import pytest
import torch

from ganlib.config import EvalConfig
from ganlib.errors import CheckpointError, ConfigError
from ganlib.evaluation.inception import (
    InceptionNet,
    check_weights_file,
    inception_features,
    load_inception,
    to_inception_input,
    write_random_weights,
)
from ganlib.runs.files import sha256_file

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A randomly initialised Inception-v3 state dict in torch-fidelity's layout, and its sha256."""
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    return path, write_random_weights(path, seed=0)


@pytest.mark.slow  # builds and runs the real network: seconds on an idle CPU
def test_weights_from_a_local_file_checked_by_sha256(random_weights):
    path, sha = random_weights
    assert sha == sha256_file(path)
    net = load_inception(EvalConfig(inception="on", inception_weights=path, inception_weights_sha256=sha), CPU)
    assert net.status == "ok" and net.weights_sha256 == sha and not net.model.training
    images = torch.rand(2, 1, 28, 28) * 2 - 1  # grayscale digits become RGB
    pool, logits = inception_features(net.model, images, batch_size=2)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool).all() and torch.isfinite(logits).all()


def test_a_wrong_sha256_is_a_one_line_error(tmp_path):
    path = tmp_path / "weights.pth"  # checked before anything is loaded: any file will do
    torch.save({"Mixed_7c.branch_pool.conv.weight": torch.zeros(1)}, path)
    sha = sha256_file(path)
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    cfg = EvalConfig(inception="on", inception_weights=path, inception_weights_sha256=wrong)
    with pytest.raises(ConfigError, match=f"eval.inception_weights: .* has sha256 {sha}, not {wrong}") as info:
        load_inception(cfg, CPU)
    assert "\n" not in str(info.value)


def test_missing_or_foreign_weight_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_weights_file(tmp_path / "nope.pth", "0" * 64)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not torch-fidelity's Inception weights .*Mixed_7c"):
        check_weights_file(other, sha256_file(other))
    code = tmp_path / "code.pth"  # a pickle that would run code: refused by weights_only loading
    code.write_bytes(pickle.dumps(print))
    with pytest.raises(CheckpointError, match="not torch-fidelity's Inception weights") as info:
        check_weights_file(code, sha256_file(code))
    assert "\n" not in str(info.value)


def test_the_weights_setting_needs_its_hash():
    from ganlib.config import build_config

    with pytest.raises(ConfigError, match="inception_weights needs inception_weights_sha256"):
        build_config({"eval": {"inception_weights": "w.pth"}})
    with pytest.raises(ConfigError, match="eval.inception_weights_sha256: String should match pattern"):
        build_config({"eval": {"inception_weights": "w.pth", "inception_weights_sha256": "abc"}})


def test_off_and_auto_on_a_cpu_are_skipped_with_the_reason():
    off = load_inception(EvalConfig(inception="off"), CPU)
    assert off == InceptionNet(None, "skipped: eval.inception is 'off'")
    auto = load_inception(EvalConfig(), CPU)
    assert auto.model is None and auto.status.startswith("skipped: eval.inception 'auto' computes Inception")


def test_offline_without_a_file_is_skipped_with_one_warning(monkeypatch, caplog):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    with caplog.at_level(logging.WARNING, logger="ganlib"):
        net = load_inception(EvalConfig(inception="on"), CPU)
    assert net.model is None and net.status.startswith("skipped: no eval.inception_weights file")
    assert "Name or service not known" in net.status and "\n" not in net.status
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_images_become_uint8_rgb_as_saved_images_are():
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    converted = to_inception_input(images)
    assert converted.dtype == torch.uint8 and converted.shape == (1, 3, 2, 2)
    assert converted[0, 2].flatten().tolist() == [0, 128, 255, 255]


def test_features_on_a_slow_device_print_progress_with_the_time_left(monkeypatch, caplog):
    import ganlib.evaluation.inception as inception

    class Pool(torch.nn.Module):  # stands in for the network: (pool, logits) of uint8 RGB
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            pool = x.float().mean(dim=(2, 3)) * self.scale
            return pool, pool[:, :2]

    monkeypatch.setattr(inception, "PROGRESS_EVERY_S", 0)
    with caplog.at_level(logging.INFO, logger="ganlib"):
        pool, logits = inception_features(Pool(), torch.zeros(10, 1, 4, 4), batch_size=4)
    assert pool.shape == (10, 3) and logits.shape == (10, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("evaluation: Inception features 4/10 images on cpu (")
    assert "s left)" in lines[0] and "8/10" in lines[1]


def test_the_pipeline_checks_the_weights_file_before_any_work(tiny, tmp_path):
    from ganlib.preflight import check_run

    path = tmp_path / "weights.pth"
    torch.save({}, path)
    cfg = tiny(run_id="w", eval__inception_weights=str(path), eval__inception_weights_sha256="0" * 64)
    with pytest.raises(ConfigError, match="eval.inception_weights: .* has sha256"):
        check_run(cfg)
    check_run(tiny(run_id="w", eval__inception="off", eval__inception_weights=str(path),
                   eval__inception_weights_sha256="0" * 64))  # not used, so not checked
