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

# The public API. Loaded on first use (PEP 562), so ``import ganlib.models`` or ``ganlib.training.step``
# stays light (torch only) and importing ganlib never pulls in pandas or pydantic by itself.
_API = {
    "build_config": "ganlib.config",  # a nested dict -> the validated RunConfig (one-line ConfigError)
    "RunConfig": "ganlib.config",
    "prepare_dataset": "ganlib.data.store",  # DataConfig, out -> the prepared store's directory
    "train": "ganlib.training.loop",  # RunConfig, store -> TrainResult (resumes the run if it exists)
    "evaluate_run": "ganlib.evaluation.evaluate",  # RunConfig, store -> metrics/eval.parquet as a DataFrame
    "load_generator": "ganlib.sampling",  # checkpoint path -> (G in eval mode, metadata)
    "generate": "ganlib.sampling",  # G, latents -> images (N, C, H, W) float in [-1, 1]
    "fixed_noise": "ganlib.sampling",
    "RunDir": "ganlib.runs.paths",  # every file of a run, and readers for them
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ganlib' has no attribute {name!r}")
