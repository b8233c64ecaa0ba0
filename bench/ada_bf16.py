"""What D sees of ADA's images under bf16 autocast (GPU runs, and CPUs where precision auto takes bf16).

    python -m bench.ada_bf16                        # this checkout's ganlib.training.ada
    python -m bench.ada_bf16 --against 76664e8      # ... beside the ada.py of another commit (before the fix)
    python -m bench.ada_bf16 --device cuda          # under CUDA's autocast (bench/gpu_emoji.sh runs it)

Stripe patterns of period 2, 3, 4 and 8 px (``bench.ada_spectrum.stripes``) in bf16, as G's fakes are under
autocast, go through the geometric part of the pipeline (``augment(..., pipeline="bg")``) inside
``torch.autocast(dtype=bfloat16)`` at p = 0, where ADA should change nothing, and at p = 0.55. The table gives
the high-pass energy kept (``bench.ada_spectrum.high_pass_energy``; median over the images) and, at p = 0, the
mean absolute error against the input (0 is right). Until the fix the maps and ``affine_grid`` ran in bf16,
whose 8 significant bits put sampling positions up to 1/256 of the half-side off. Prints the table and appends
it to ``bench/results/ada_bf16.csv`` with date, device and commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.ada_spectrum import high_pass_energy, stripes
from bench.common import append_csv, stamp
from ganlib.training import ada

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "ada_bf16.csv"


def augment_of(revision: str) -> Callable[..., torch.Tensor]:
    """``augment`` of ``ganlib/training/ada.py`` as it was at git ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:ganlib/training/ada.py"], cwd=ROOT.parent, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ada_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"ada_{revision}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.augment


def measure(augment: Callable[..., torch.Tensor], period: int, size: int, p: float, n: int = 64,
            device: torch.device | None = None) -> dict[str, float]:
    device = device or torch.device("cpu")
    x = stripes(period, size).expand(n, 3, size, size).to(device, torch.bfloat16)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = augment(x, torch.tensor(p, device=device), torch.Generator(device).manual_seed(1), "bg").float()
    kept = high_pass_energy(out, size // 8) / high_pass_energy(x.float(), size // 8)
    error = (out - x.float()).abs().mean()
    return {"median_kept": round(float(kept.median()), 4), "mean_abs_error": round(float(error), 4)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.ada_bf16", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=None, metavar="COMMIT", help="also measure ada.py at this commit")
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--periods", default="2,3,4,8")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"),
                        help="where to run it (cuda: CUDA's autocast)")
    parser.add_argument("--csv", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    versions = {"this checkout": ada.augment, **({args.against: augment_of(args.against)} if args.against else {})}
    header = stamp(args.device)
    print("ADA's geometric pipeline under bf16 autocast: high-pass energy kept at p 0 and 0.55 (median), "
          "mean |error| at p 0")
    print(f"{'size':>4} {'period':>6} " + " ".join(f"{name[:24]:>32}" for name in versions))
    rows = []
    for size in map(int, args.sizes.split(",")):
        for period in map(int, args.periods.split(",")):
            cells = []
            for name, augment in versions.items():
                at0, at55 = (measure(augment, period, size, p, device=args.device) for p in (0.0, 0.55))
                cells.append(f"{at0['median_kept']:>8.3f} {at55['median_kept']:>8.3f} {at0['mean_abs_error']:>12.4f}")
                rows.append({**header, "version": name, "size": size, "period": period,
                             "kept_p0": at0["median_kept"], "kept_p055": at55["median_kept"],
                             "mean_abs_error_p0": at0["mean_abs_error"]})
            print(f"{size:>4} {period:>6} " + " ".join(f"{c:>32}" for c in cells))
    for row in rows:
        append_csv(args.csv, row)
    print(f"\nappended to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
