"""ganlib: GAN training, evaluation and rendering in pure PyTorch (no Prefect)."""

import os

# torch's CPU kernels run on OpenMP (libgomp) threads that spin between parallel regions before they
# sleep. A GAN step is many small kernels: with no spin (OMP_WAIT_POLICY=PASSIVE, what ganlib set
# before) the default mlp step ran at 4,535 images/s on an idle 2-core machine; with libgomp's own
# long spin at 7,173 alone but 171 each when two runs share the cores; a short spin keeps most of
# both: 6,608 alone, 1,988 each two at once (bench/RESULTS.md, "OpenMP threads"). Only takes effect
# if torch is not yet imported, and never overrides a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

__version__ = "0.1.0"
