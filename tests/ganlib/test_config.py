import pytest

from ganlib.config import DEFAULT_STEPS, RunConfig, build_config, config_differences, total_steps
from ganlib.errors import CheckpointError, ConfigError


def test_defaults_follow_the_tutorial():
    cfg = RunConfig().resolved()  # the digits: 28-px grey images, so the mlp preset and its settings
    assert cfg.model.name == "mlp" and cfg.model.noise_dim == 100
    assert cfg.train.lr == 2e-4 and (cfg.train.beta1, cfg.train.beta2) == (0.5, 0.999)
    assert cfg.train.batch_size == 128 and cfg.seed == 7
    assert cfg.data.dataset == "digits"


@pytest.mark.parametrize(("data", "message"), [
    ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0 (got -1)"),
    ({"model": {"name": "vae"}}, "model.name: Input should be 'auto', 'mlp', 'dcgan', 'resnet' or 'r3gan' (got 'vae')"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: Input should be 'digits', 'mnist', 'fashion-mnist', 'kmnist', "
                                          "'cifar10', 'celeba', 'folder', 'npz' or 'idx' (got 'imagenet')"),
    ({"train": {"steps": 5, "epochs": 1}}, "train: give steps or epochs, not both"),
    ({"run_id": "../escape"}, "run_id: String should match pattern"),
    ({"run_id": "a/b"}, "run_id: String should match pattern"),
    ({"device": "gpu"}, "device: String should match pattern"),
    ({"data": {"dataset": "mnist"}}, "dataset 'mnist' needs data_root"),
    ({"trian": {}}, "trian: unknown field"),
    ({"data": {"image_size": 30}}, "data.image_size: Input should be 'auto', 28, 32, 64, 128 or 256 (got 30)"),
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
    a = build_config({"run_id": "x"}).resolved().model_dump(mode="json")
    b = build_config({"run_id": "x", "train": {"steps": 9000}, "eval": {"num_samples": 500}}).resolved().model_dump(
        mode="json")
    assert config_differences(a, b) == []
    c = build_config({"run_id": "x", "model": {"ngf": 64}}).resolved().model_dump(mode="json")
    assert config_differences(a, c) == ["model.ngf: 32 -> 64"]


def test_a_field_the_saved_config_predates_counts_as_its_default():
    """A run saved before train.mirror existed trained unmirrored: resuming it as it was is fine, turning the
    new setting on is a difference like any other."""
    saved = build_config({"run_id": "x"}).resolved().model_dump(mode="json")
    del saved["train"]["mirror"], saved["train"]["ada_pipeline"]
    same = build_config({"run_id": "x"}).resolved().model_dump(mode="json")
    assert config_differences(saved, same) == []
    mirrored = build_config({"run_id": "x", "train": {"mirror": True, "ada_pipeline": "bg"}}).resolved()
    assert config_differences(saved, mirrored.model_dump(mode="json")) == [
        "train.ada_pipeline: 'bgc' -> 'bg'", "train.mirror: False -> True"]


def test_diffaug_defaults_to_translation_and_none_turns_it_off():
    assert build_config({}).train.diffaug is None  # the preset's
    assert build_config({}).resolved().train.diffaug == ["translation"]
    assert build_config({"model": {"name": "r3gan"}}).resolved().train.diffaug == []  # r3gan: ADA instead
    assert build_config({"train": {"diffaug": "none"}}).train.diffaug == []
    assert build_config({"train": {"diffaug": "translation,cutout"}}).train.diffaug == ["translation", "cutout"]


@pytest.mark.parametrize(("data", "channels", "model"), [
    ({}, None, "mlp"),  # the digits: 28-px grey
    ({"data": {"dataset": "cifar10", "data_root": "x", "image_size": 32}}, None, "dcgan"),  # RGB on this CPU
    ({"data": {"image_size": 64}}, None, "dcgan"),  # larger than 28: a conv preset whatever the channels
    ({"data": {"dataset": "folder", "data_root": "x", "image_size": 28}}, None, "auto"),  # channels: once prepared
    ({"data": {"dataset": "folder", "data_root": "x", "image_size": 28}}, 1, "mlp"),
    ({"data": {"dataset": "folder", "data_root": "x", "image_size": 28}}, 3, "dcgan"),
    ({"data": {"dataset": "folder", "data_root": "x", "image_size": 28, "channels": "rgb"}}, None, "dcgan"),
    ({"device": "cuda", "data": {"dataset": "folder", "data_root": "x", "image_size": 28, "channels": "rgb"}}, None,
     "r3gan"),  # a GPU
    ({"device": "cuda"}, None, "mlp"),
    ({"data": {"dataset": "folder", "data_root": "x"}}, 3, "auto"),  # no folder there: no size yet, so no preset
    ({"model": {"name": "resnet"}, "data": {"image_size": 64}}, 3, "resnet"),  # named: kept
])
def test_model_auto_follows_the_data_and_the_device(data, channels, model):
    cfg = build_config(data).resolved(channels=channels)
    assert cfg.model.name == model
    assert (cfg.preset_note is not None) == ("name" not in data.get("model", {}) and model != "auto")


def test_a_run_keeps_the_preset_it_started_with():
    saved = build_config({"device": "cuda", "data": {"image_size": 32}}).resolved().model_dump(mode="json")
    assert saved["model"]["name"] == "r3gan"
    again = build_config({"device": "cpu", "data": {"image_size": 32}}).keeping_preset(saved).resolved()
    assert again.model.name == "r3gan" and again.train.loss == "rpgan"  # resumed on a CPU: still r3gan
    assert (again.model.ngf, again.model.ndf, again.model.blocks) == (64, 64, 2)  # and the GPU's widths
    assert config_differences(saved, again.model_dump(mode="json")) == []
    # A named model is the user's: nothing of r3gan's is taken, and the resume check then compares them.
    named = build_config({"model": {"name": "dcgan"}}).keeping_preset(saved)
    assert named.model.name == "dcgan" and named.model.ngf is None


@pytest.mark.parametrize(("device", "widths", "auto"), [("cpu", (16, 16, 1), ("dcgan", 32, 1)),
                                                       ("cuda", (64, 64, 2), ("r3gan", 64, 2))])
def test_r3gan_is_wider_on_a_gpu_unless_told(device, widths, auto):
    cfg = build_config({"device": device, "model": {"name": "r3gan"}, "data": {"image_size": 64}}).resolved()
    assert (cfg.model.ngf, cfg.model.ndf, cfg.model.blocks) == widths
    told = build_config({"device": device, "model": {"name": "r3gan", "ngf": 32, "blocks": 3},
                         "data": {"image_size": 64}}).resolved()
    assert (told.model.ngf, told.model.ndf, told.model.blocks) == (32, widths[1], 3)
    chosen = build_config({"device": device, "data": {"image_size": 64}}).resolved()  # model auto
    assert (chosen.model.name, chosen.model.ngf, chosen.model.blocks) == auto
    dcgan = build_config({"device": device, "model": {"name": "dcgan"}, "data": {"image_size": 64}}).resolved()
    assert (dcgan.model.ngf, dcgan.model.blocks) == (32, 1)  # only r3gan changes with the device


def test_a_resumed_run_keeps_the_settings_it_left_to_the_preset_and_the_users_win():
    started = build_config({"device": "cpu", "model": {"name": "r3gan"}, "data": {"image_size": 32}}).resolved()
    saved = started.model_dump(mode="json")
    on_gpu = build_config({"device": "cuda", "model": {"name": "r3gan"}, "data": {"image_size": 32}})
    resumed = on_gpu.keeping_preset(saved).resolved()
    assert (resumed.model.ngf, resumed.model.blocks) == (16, 1)  # started on a CPU: resumed at its widths
    assert config_differences(saved, resumed.model_dump(mode="json")) == []
    wider = build_config({"device": "cuda", "model": {"name": "r3gan", "ngf": 64}, "data": {"image_size": 32}})
    assert config_differences(saved, wider.keeping_preset(saved).resolved().model_dump(mode="json")) == [
        "model.ngf: 16 -> 64"]  # asked for: refused by the resume check, not silently replaced
    old = {**saved, "train": {**saved["train"], "beta2": 0.999}}  # saved when the preset said otherwise
    assert on_gpu.keeping_preset(old).resolved().train.beta2 == 0.999


def test_the_presets_settings_fill_only_what_the_user_left_to_them():
    r3 = build_config({"model": {"name": "r3gan"}, "data": {"image_size": 32}, "train": {"beta2": 0.9}}).resolved()
    t = r3.train
    assert (t.loss, t.beta1, t.beta2, t.r1, t.r2, t.diffaug, t.ada) == ("rpgan", 0.0, 0.9, 0.05, 0.05, [], "on")
    assert (r3.model.ngf, r3.model.ndf) == (16, 16)
    classic = build_config({"model": {"name": "dcgan"}, "train": {"loss": "hinge"}}).resolved()
    assert (classic.train.loss, classic.train.beta1, classic.train.ada, classic.model.ngf) == ("hinge", 0.5, "off", 32)
    # Resolving is idempotent, and a resolved config (config.json) round-trips unchanged.
    assert r3.resolved() == r3 and build_config(r3.model_dump(mode="json")).resolved() == r3


def test_the_presets_widths_agree_with_the_models_fallback():
    from ganlib.config import PRESET_DEFAULTS
    from ganlib.models import PRESETS

    for name, preset in PRESETS.items():
        assert PRESET_DEFAULTS[name]["model.ngf"] == PRESET_DEFAULTS[name]["model.ndf"] == preset.width


def test_fields_left_to_the_preset_do_not_block_a_resume_but_other_optional_ones_do():
    resolved = build_config({"run_id": "x", "train": {"lr_g": 1e-4}}).resolved().model_dump(mode="json")
    unresolved = build_config({"run_id": "x"}).model_dump(mode="json")
    assert config_differences(resolved, unresolved) == ["train.lr_g: 0.0001 -> None"]  # lr_g is not the preset's
    assert config_differences(unresolved, resolved) == ["train.lr_g: None -> 0.0001"]


def test_data_root_is_kept_absolute_and_a_run_saved_with_a_relative_one_still_resumes(tmp_path, monkeypatch):
    """A relative --data-root was saved as given: evaluate.py run from elsewhere looked elsewhere. It is made
    absolute (``~`` expanded; ``..`` and links kept, so ``link/..`` still means the link's parent); a run that
    saved it relative resumes from the same directory, and another folder is still another run."""
    from pathlib import Path

    from ganlib.config import check_resumable

    monkeypatch.chdir(tmp_path)

    def root(given):
        return build_config({"data": {"dataset": "folder", "data_root": given}}).data.data_root

    assert root("link/..") == tmp_path / "link" / ".." and root("~/x") == Path.home() / "x"
    with pytest.raises(ConfigError, match=r"^invalid config: data.data_root: Input is not a valid path"):
        root(5)  # not a path: pydantic's one line, not a TypeError traceback
    now = build_config({"run_id": "r", "data": {"dataset": "folder", "data_root": "imgs"}})
    saved = now.resolved().model_dump(mode="json")
    saved["data"].update(data_root="imgs", image_size=28)  # as runs saved it before
    check_resumable(saved, now)
    with pytest.raises(CheckpointError, match=r"\(data.data_root: 'imgs' -> '/moved/imgs'\)"):
        check_resumable(saved, build_config({"run_id": "r", "data": {"dataset": "folder", "data_root": "/moved/imgs"}}))
