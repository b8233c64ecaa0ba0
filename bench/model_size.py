"""Each conv preset's size at the widths a run resolves to: parameters and forward GFLOP per image.

    python -m bench.model_size                                   # dcgan, resnet, r3gan at 32..256 px
    python -m bench.model_size --models r3gan --sizes 32,256

For every preset and image size, the config a run would resolve with the model named and nothing else
given (``ganlib.config.preset_defaults``: r3gan is 16 channels and one block per stage on a CPU, 64 and
two on a GPU), on a CPU and on a GPU (the GPU column is the config's answer for ``--device cuda``; no
GPU is needed). FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products, one forward pass of a batch of 2, RGB): a training step costs about three times G's
and D's forward (backward twice the forward), plus the penalties' double backward on their lazy steps.
Rows go to ``bench/results/model_size.csv``. Seconds on a CPU (the 256-px models are counted at batch 2).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import append_csv, commit
from ganlib.config import build_config
from ganlib.models import build_models, count_parameters


def forward_gflop(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOP of one forward pass per image (the first input's rows)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / len(inputs[0]) / 1e9


def measure(model: str, device_kind: str, size: int) -> dict:
    cfg = build_config({"device": "cuda" if device_kind == "gpu" else "cpu", "model": {"name": model},
                        "data": {"image_size": size}}).resolved(channels=3)
    torch.manual_seed(0)
    g, d = build_models(cfg.model, 3, size)
    z = torch.randn(2, cfg.model.noise_dim)
    x = torch.rand(2, 3, size, size) * 2 - 1
    m = cfg.model
    return {"date": dt.date.today().isoformat(), "commit": commit(), "model": model, "device_kind": device_kind,
            "image_size": size, "ngf": m.ngf, "ndf": m.ndf, "blocks": m.blocks,
            "g_params_m": round(count_parameters(g) / 1e6, 3), "d_params_m": round(count_parameters(d) / 1e6, 3),
            "g_gflop": round(forward_gflop(g.eval(), z), 3), "d_gflop": round(forward_gflop(d.eval(), x), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dcgan,resnet,r3gan", help="comma-separated presets")
    parser.add_argument("--sizes", default="32,64,128,256", help="comma-separated image sizes")
    parser.add_argument("--csv", default="bench/results/model_size.csv")
    args = parser.parse_args(argv)
    rows = [measure(model, kind, int(size)) for model in args.models.split(",") for kind in ("cpu", "gpu")
            for size in args.sizes.split(",")]
    print(f"{'model':7} {'on':4} {'px':>4} {'ngf':>4} {'ndf':>4} {'blocks':>6} {'G Mparams':>10} {'D Mparams':>10} "
          f"{'G GFLOP':>8} {'D GFLOP':>8}")
    for r in rows:
        print(f"{r['model']:7} {r['device_kind']:4} {r['image_size']:>4} {r['ngf']:>4} {r['ndf']:>4} {r['blocks']:>6} "
              f"{r['g_params_m']:>10.3f} {r['d_params_m']:>10.3f} {r['g_gflop']:>8.3f} {r['d_gflop']:>8.3f}")
    for row in rows:
        append_csv(Path(args.csv), row)
    print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
