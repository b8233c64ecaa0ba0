import pytest

from ganlib.config import DEFAULT_STEPS, RunConfig, build_config, config_differences, total_steps
from ganlib.errors import ConfigError


def test_defaults_follow_the_tutorial():
    cfg = RunConfig()
    assert cfg.model.noise_dim == 100
    assert cfg.train.lr == 2e-4 and (cfg.train.beta1, cfg.train.beta2) == (0.5, 0.999)
    assert cfg.train.batch_size == 128 and cfg.seed == 7
    assert cfg.data.dataset == "digits"


@pytest.mark.parametrize(("data", "message"), [
    ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0 (got -1)"),
    ({"model": {"name": "vae"}}, "model.name: Input should be 'mlp', 'dcgan' or 'resnet' (got 'vae')"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: Input should be 'digits', 'mnist', 'fashion-mnist', 'kmnist', "
                                          "'cifar10', 'celeba', 'folder', 'npz' or 'idx' (got 'imagenet')"),
    ({"train": {"steps": 5, "epochs": 1}}, "train: give steps or epochs, not both"),
    ({"run_id": "../escape"}, "run_id: String should match pattern"),
    ({"run_id": "a/b"}, "run_id: String should match pattern"),
    ({"device": "gpu"}, "device: String should match pattern"),
    ({"data": {"dataset": "mnist"}}, "dataset 'mnist' needs data_root"),
    ({"trian": {}}, "trian: unknown field"),
    ({"data": {"image_size": 30}}, "data.image_size: Input should be 28, 32, 64 or 128 (got 30)"),
])
def test_invalid_values_give_one_line_naming_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_resolved_fills_in_a_run_id_once():
    cfg = RunConfig().resolved()
    assert cfg.run_id.startswith("digits-mlp-")
    assert cfg.resolved().run_id == cfg.run_id
    assert cfg.run_dir.name == cfg.run_id


def test_total_steps_from_steps_epochs_or_default():
    assert total_steps(build_config({"train": {"steps": 42}}).train, 1000) == 42
    assert total_steps(build_config({"train": {"epochs": 2, "batch_size": 100}}).train, 1000) == 20
    assert total_steps(build_config({}).train, 1000) == DEFAULT_STEPS


def test_config_differences_ignore_length_and_output_but_not_the_model():
    a = build_config({"run_id": "x"}).model_dump(mode="json")
    b = build_config({"run_id": "x", "train": {"steps": 9000}, "eval": {"num_samples": 500}}).model_dump(mode="json")
    assert config_differences(a, b) == []
    c = build_config({"run_id": "x", "model": {"ngf": 64}}).model_dump(mode="json")
    assert config_differences(a, c) == ["model.ngf: 32 -> 64"]


def test_diffaug_defaults_to_translation_and_none_turns_it_off():
    assert build_config({}).train.diffaug == ["translation"]
    assert build_config({"train": {"diffaug": "none"}}).train.diffaug == []
    assert build_config({"train": {"diffaug": "translation,cutout"}}).train.diffaug == ["translation", "cutout"]
