"""Benchmarks of ganlib, one module per measurement (docs/benchmarks.md).

Run them from the repository root as modules, ``python -m bench.<name> [flags]`` (the root is then
first on ``sys.path``, so ganlib and ``bench.common`` import from this checkout, installed or not).
The package is not shipped: pyproject's ``[tool.setuptools] packages`` leaves it out, and pytest
imports it through ``pythonpath = ["."]``.
"""
