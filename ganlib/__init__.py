"""ganlib: GAN training, evaluation and rendering in pure PyTorch (no Prefect)."""

import os

# When the CPU is shared (a Prefect server, a second run, a test runner), OpenMP threads that
# spin-wait between parallel regions slow the small kernels of a GAN step down 5-10x; sleeping
# threads cost almost nothing when the machine is idle. Only takes effect if torch is not yet
# imported, and never overrides a user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
