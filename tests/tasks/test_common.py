import re

import pytest

from ganlib.errors import CheckpointError, ConfigError, DataError, DeviceMemoryError
from tasks.common import artifact_key, retry_unless_user_error
from tasks.prepare import _cache_key

pytestmark = pytest.mark.usefixtures("own_cache")  # about <out>/_cache itself, or changes it


@pytest.mark.parametrize("run_id", ["E2E_run.1", "digits-dcgan-20260101-120000", "A..b__c", "x" * 80])
def test_artifact_keys_are_valid_prefect_keys(run_id):
    key = artifact_key("summary", run_id)
    assert re.fullmatch(r"[a-z0-9-]*", key) and key.startswith("summary-") and len(key) <= 100


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


@pytest.mark.parametrize(("exc", "retry"), [
    (ConfigError("bad"), False), (DataError("missing"), False), (DeviceMemoryError("out of memory"), False),
    (CheckpointError("disk full"), True), (RuntimeError("transient"), True), (OSError("io"), True),
])
def test_user_errors_are_not_retried(exc, retry):
    assert retry_unless_user_error(None, None, _State(exc)) is retry


def test_prepare_cache_key_only_while_the_store_exists(tiny):
    from ganlib.data.store import prepare_dataset

    cfg = tiny()
    params = {"data": cfg.data, "out": str(cfg.out)}
    assert _cache_key(None, params) is None  # nothing on disk: run the task, do not trust a cache
    prepare_dataset(cfg.data, cfg.out)
    key = _cache_key(None, params)
    assert key and key == _cache_key(None, params)
    other = tiny(data__num_images=500)
    assert _cache_key(None, {"data": other.data, "out": str(other.out)}) is None


def test_project_prefect_defaults_apply_from_any_directory(tmp_path):
    """The offline-friendly settings hold even where no prefect.toml is in the working directory."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    code = ("import flows.train\nfrom prefect.settings import get_current_settings as g\ns = g()\n"
            "print(s.server.analytics_enabled, s.server.ui.show_promotional_content, s.logging.extra_loggers)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False False ['ganlib']", out.stderr
