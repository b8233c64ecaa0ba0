"""Peak memory and time of scoring one checkpoint's samples: all at once as float (before) or a batch at a time.

    python -m bench.eval_memory                        # 2,000 RGB samples of 256 px, batch 500
    python -m bench.eval_memory --num 10000 --size 256 --device cuda

The evaluation used to generate every sample as float32 on the host (10,000 RGB images of 256 px: 7.9 GB) and
then pass them through each feature space; it now generates a batch, passes it through every space and keeps
only the uint8 samples (``ganlib.evaluation.evaluate.embed_samples``; the uint8 feed the pixel memorisation
search and its picture). Each variant runs in a fresh process with the same 32-channel DCGAN generator and
self-supervised encoder (random weights: the cost does not depend on them) and reports its peak resident
memory (on CUDA also the device's peak) and wall time; both must give the same features and samples. Prints a
table and appends the rows to ``bench/results/eval_memory.csv`` with the date, device and commit.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from bench.common import append_csv, in_fresh_process, peak_memory_mb, stamp, variant_parser

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "eval_memory.csv"
VARIANTS = ("all samples as float (before)", "a batch at a time (now)")


def measure(variant: str, num: int, size: int, batch_size: int, device: str) -> dict:
    """Generate ``num`` samples and embed them in the self-supervised space, in this process."""
    from ganlib.evaluation.contrastive import ContrastiveEncoder
    from ganlib.evaluation.evaluate import embed_samples, ssl_space
    from ganlib.models.dcgan import DCGANGenerator
    from ganlib.sampling import fixed_noise, generate, to_uint8

    torch.manual_seed(0)
    generator = DCGANGenerator(100, 32, 3, size).to(device).eval()
    space = ssl_space(ContrastiveEncoder(3, size).to(device).eval(), batch_size, "bench")
    z = fixed_noise(num, 100, 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        if variant == VARIANTS[0]:  # as before: every sample as float on the host, then each space
            images = generate(generator, z, batch_size=batch_size)
            features, samples = space.embed(images)[0], to_uint8(images)
        else:
            embedded, samples = embed_samples([space], generator, z, None, batch_size, "bench samples")
            features = embedded["ssl"][0]
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(features.numpy().tobytes() + samples.numpy().tobytes()).hexdigest()[:16]
    return {"seconds": round(seconds, 2), "host_peak_mb": round(peak_memory_mb(torch.device("cpu"))),
            "device_peak_mb": round(peak_memory_mb(torch.device(device))) if device.startswith("cuda") else None,
            "digest": digest}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = variant_parser(__doc__, VARIANTS, "samples")
    parser.add_argument("--batch-size", type=int, default=500, help="eval.batch_size (default 500)")
    args = parser.parse_args(argv)
    args.csv = args.csv or RESULTS
    if args.child:
        print(json.dumps(measure(args.child, args.num, args.size, args.batch_size, args.device)))
        return []
    rows = []
    print(f"scoring {args.num} RGB samples of {args.size} px (DCGAN 32, self-supervised space, batch "
          f"{args.batch_size}) on {args.device}")
    print(f"{'variant':<32} {'seconds':>8} {'host peak MB':>13} {'device peak MB':>15}")
    for variant in VARIANTS:
        measured = in_fresh_process("bench.eval_memory", variant, ["--num", str(args.num), "--size", str(args.size),
                                                                   "--batch-size", str(args.batch_size),
                                                                   "--device", args.device])
        row = {**stamp(torch.device(args.device)), "variant": variant, "num": args.num, "size": args.size,
               "batch_size": args.batch_size, **measured}
        print(f"{variant:<32} {row['seconds']:>8} {row['host_peak_mb']:>13,} {row['device_peak_mb'] or '-':>15}")
        rows.append(row)
        append_csv(args.csv, row)
    if len({r["digest"] for r in rows}) != 1:
        raise SystemExit("the two variants gave different features or samples")
    return rows


if __name__ == "__main__":
    main()
