"""ganlib's OpenMP spin setting: a short spin unless the user chose their own."""

import os
import subprocess
import sys


def _env_after_import(**env: str) -> list[str]:
    code = "import os, ganlib; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_importing_ganlib_sets_a_short_openmp_spin_but_keeps_the_users_choice():
    assert _env_after_import() == ["10000", "None"]
    assert _env_after_import(OMP_WAIT_POLICY="PASSIVE") == ["None", "PASSIVE"]
    assert _env_after_import(GOMP_SPINCOUNT="0") == ["0", "None"]
