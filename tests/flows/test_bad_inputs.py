"""The bad-input matrix of docs/reliability.md at the command line: one line on stderr, exit code 2,
nothing written. Dataset rows live in tests/ganlib/data/test_bad_input.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.train import main

FAST = ["--num-images", "200", "--ngf", "8", "--ndf", "8", "--steps", "4", "--batch-size", "32", "--device", "cpu"]


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "-1"], "error: invalid config: train.lr: Input should be greater than 0 (got -1.0)"),
    (["--lr", "0"], "error: invalid config: train.lr: Input should be greater than 0 (got 0.0)"),
    (["--model", "vae"], "error: invalid config: model.name: Input should be"),
    (["--steps", "0"], "error: invalid config: train.steps: Input should be greater than or equal to 1 (got 0)"),
    (["--steps", "10", "--epochs", "2"], "error: invalid config: train: give steps or epochs, not both"),
    (["--batch-size", "1"], "error: invalid config: train.batch_size: Input should be greater than or equal to 2"),
    (["--num-images", "100", "--batch-size", "128"],
     "error: train.batch_size: 128 is larger than the dataset (100 images); use --batch-size 100 or less"),
    (["--image-size", "48"],
     "error: invalid config: data.image_size: Input should be 'auto', 28, 32, 64, 128 or 256 (got 48)"),
    (["--image-size", "128"], "error: data.image_size: the embedded digits are drawn at (28, 32, 64) px, not 128; "
     "use --image-size 64, or a dataset of larger images"),
    (["--model", "resnet", "--image-size", "28"],
     "error: data.image_size: resnet makes 32, 64, 128, 256 px images, not 28; use --image-size 32"),
    (["--channels-last", "yes"],
     "error: invalid config: train.channels_last: Input should be 'auto', 'on' or 'off' (got 'yes')"),
    (["--fused-optimizer", "fused"],
     "error: invalid config: train.fused_optimizer: Input should be 'auto', 'on' or 'off' (got 'fused')"),
    (["--device", "tpu"], "error: invalid config: device: String should match pattern"),
    (["--seed", "-3"], "error: invalid config: seed: Input should be greater than or equal to 0 (got -3)"),
    (["--steps", "ten"], "error: argument --steps: invalid int value: 'ten' (see --help)"),
    (["--lrr", "1"], "error: unrecognized arguments: --lrr 1 (see --help)"),
    (["--config", "/nonexistent.json"], "error: --config: cannot read /nonexistent.json"),
    (["--run-id", "../escape"], "error: invalid config: run_id: String should match pattern"),
    (["--run-id", "a/b"], "error: invalid config: run_id: String should match pattern"),
    (["--run-id", "x" * 81], "error: invalid config: run_id: String should match pattern"),
    (["--run-id", ".hidden"], "error: invalid config: run_id: String should match pattern"),
    # Accepted before, now refused (issue #22): unbounded or non-finite numbers, a huge device index.
    (["--r1", "inf"], "error: invalid config: train.r1: Input should be a finite number (got inf)"),
    (["--r1", "nan"], "error: invalid config: train.r1: Input should be a finite number (got nan)"),
    (["--steps", "99999999999999999999999"], "error: invalid config: train.steps: Input should be less than or equal"),
    (["--device", "cuda:99999999999999999999"], "error: invalid config: device: String should match pattern"),
])
def test_config_and_run_id_rows(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    out = tmp_path / "out"
    code, err = run_cli(argv + ["--out", str(out)], capsys)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("a bad input started the pipeline")


def test_device_cuda_without_cuda(capsys, tmp_path, monkeypatch):
    """A machine without CUDA, simulated: the message is checked on every machine, and should the check
    ever let it through, the pipeline is not there to start."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    code, err = run_cli(["--device", "cuda", "--out", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, "error: device: 'cuda' requested but CUDA is not available here; "
                              "use --device cpu or auto\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (test_device_cuda_without_cuda runs everywhere)")
def test_device_cuda_with_cuda_passes_the_checks(tmp_path):
    """Where CUDA is there, --device cuda gets through the checks made before the pipeline (which is not run)."""
    from flows.train import parse_config
    from ganlib.preflight import check_run

    config, _ = parse_config([*FAST, "--device", "cuda", "--out", str(tmp_path / "out")])
    assert config.device == "cuda"
    check_run(config)
    assert not (tmp_path / "out").exists()


def test_unknown_field_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"learning_rate": 1e-3}}))
    code, err = run_cli(["--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith("error: invalid config: train.learning_rate: unknown field")


def test_resume_with_another_model_names_the_difference(tmp_path, capsys):
    run = tmp_path / "out" / "r"
    run.mkdir(parents=True)
    from ganlib.config import build_config

    saved = build_config({"run_id": "r", "out": str(tmp_path / "out"), "model": {"ngf": 8, "ndf": 8}})
    (run / "config.json").write_text(saved.to_json())
    code, err = run_cli(["--run-id", "r", "--out", str(tmp_path / "out"), "--ngf", "16", "--ndf", "8"], capsys)
    assert code == 2
    assert err.startswith("error: run 'r' exists with a different config (model.ngf: 8 -> 16); "
                          "use a new --run-id, or the original settings to resume it")


def test_run_already_running_is_refused(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom ganlib.runs.lock import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)",
         str(tmp_path / "out" / "busy")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(["--run-id", "busy", "--out", str(tmp_path / "out"), *FAST], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    assert err.startswith("error: run 'busy' is already running (pid ")
    assert err.rstrip().endswith("wait for it to finish, or use another --run-id")
    assert sorted(p.name for p in (tmp_path / "out" / "busy").iterdir()) == [".lock"]


def test_malicious_checkpoint_is_refused_and_kept_aside(tmp_path):
    """A pickle that would run code, placed as the newest checkpoint: refused, moved to corrupt/."""
    import os
    import pickle

    from ganlib.runs.checkpoint import latest_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_000010.pt").write_bytes(pickle.dumps({"format": 1, "x": Evil()}))
    assert latest_checkpoint(ckpts) is None
    assert (ckpts / "corrupt" / "step_000010.pt").is_file() and not (tmp_path / "pwned").exists()
    assert Path(ckpts / "step_000010.pt").exists() is False



@pytest.mark.parametrize(("content", "message"), [
    ('{"train": 5}', "error: invalid config: train: expected a section (an object of fields), got 5; cannot set "
     "train.steps"),
    ('[1, 2, 3]', "error: --config: "),
    ('"hello"', "error: --config: "),
    ('{"seed": true}', "error: invalid config: seed: expected a number, not true or false (got True)"),
    ('{"train": {"gp_weight": Infinity}}', "error: invalid config: train.gp_weight: Input should be a finite number"),
    (b"\xff\xfe{", "error: --config: cannot read"),
])
def test_config_files_that_are_not_configs(content, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    path = tmp_path / "c.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    code, err = run_cli(["--config", str(path), "--steps", "30", "--out", str(out)], capsys)
    assert code == 2 and err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()


def test_out_that_is_a_file_or_empty_fails_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, err = run_cli([*FAST, "--out", str(a_file)], capsys)
    assert code == 2 and err == f"error: out: {a_file} is a file, not a directory; choose another --out\n"
    code, err = run_cli([*FAST, "--out", ""], capsys)
    assert code == 2 and err.startswith("error: invalid config: out: must be a directory path"), err


def test_out_that_cannot_be_written_fails_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a read-only disk, as access(2) reports it
    code, err = run_cli([*FAST, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.startswith(f"error: out: cannot write in {tmp_path} (read-only or not permitted)"), err


def test_a_shared_cache_that_is_a_file_fails_before_any_work_and_a_read_only_one_is_a_warning(
        capsys, tmp_path, monkeypatch, caplog):
    from ganlib.config import build_config
    from ganlib.preflight import check_run

    monkeypatch.setattr("flows.train.gan_pipeline", _must_not_run)
    cache = tmp_path / "shared-cache"
    cache.write_text("x")
    monkeypatch.setenv("GANLIB_CACHE_DIR", str(cache))
    code, err = run_cli([*FAST, "--out", str(tmp_path / "out")], capsys)
    assert (code, err) == (2, f"error: GANLIB_CACHE_DIR: {cache} is a file, not a directory; set GANLIB_CACHE_DIR "
                              "to a directory you can write, or unset it\n")
    cache.unlink()
    cache.mkdir()
    real_access = os.access
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != cache and real_access(path, mode))
    with caplog.at_level("WARNING", logger="ganlib"):
        check_run(build_config({"out": str(tmp_path / "out"), "data": {"num_images": 200}}))
    assert (f"GANLIB_CACHE_DIR: cannot write in {cache} (read-only or not permitted); set GANLIB_CACHE_DIR to a "
            "directory you can write, or unset it; a run can use what it already holds") in caplog.text
