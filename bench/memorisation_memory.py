"""Peak memory and time of the pixel memorisation search, as it is and as it was (float32 copies).

    python -m bench.memorisation_memory                           # 2,000 x 2,000 RGB images of 256 px
    python -m bench.memorisation_memory --num 1000 --size 128 --device cuda

The evaluation looks for each generated sample's nearest training image in pixels. It used to turn both
sides into float32 vectors (10,000 images of 256 px: 7.9 GB a side) and search them on the CPU; it now keeps
them uint8 and searches a bounded float32 block at a time on the evaluation device
(``ganlib.evaluation.memorisation.nearest_training``). Each variant runs in a fresh process on random uint8
images (the cost does not depend on the pixels) and reports its peak resident memory (the CPU's; on CUDA
also the device's peak) and wall time; both must find the same pairs. Prints a table and appends the rows
to ``bench/results/memorisation_memory.csv`` with the date, device and commit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.common import append_csv, in_fresh_process, peak_memory_mb, stamp, variant_parser

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "memorisation_memory.csv"
VARIANTS = ("float32 copies (before)", "uint8 blocks (now)")


def measure(variant: str, num: int, size: int, device: str) -> dict:
    """Search ``num`` random query images against ``num`` training images in this process."""
    from ganlib.evaluation.memorisation import nearest_training, pixel_vectors

    generator = torch.Generator().manual_seed(0)
    training = torch.randint(0, 256, (num, 3, size, size), generator=generator, dtype=torch.uint8)
    query = torch.randint(0, 256, (num, 3, size, size), generator=generator, dtype=torch.uint8)
    t0 = time.perf_counter()
    if variant == VARIANTS[0]:  # as before: float32 vectors of both sides, searched where they are
        q, t = pixel_vectors(query).to(device, torch.float32), pixel_vectors(training).to(device, torch.float32)
        distances, index = nearest_training(q, t)
    else:
        distances, index = nearest_training(pixel_vectors(query), pixel_vectors(training), device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": round(time.perf_counter() - t0, 2), "host_peak_mb": round(peak_memory_mb(torch.device("cpu"))),
            "device_peak_mb": round(peak_memory_mb(torch.device(device))) if device.startswith("cuda") else None,
            "pairs": int(index.sum()), "distance_sum": float(distances.sum())}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = variant_parser(__doc__, VARIANTS, "query and training images")
    args = parser.parse_args(argv)
    args.csv = args.csv or RESULTS
    if args.child:
        print(json.dumps(measure(args.child, args.num, args.size, args.device)))
        return []
    rows = []
    print(f"pixel memorisation search, {args.num} x {args.num} RGB images of {args.size} px on {args.device}")
    print(f"{'variant':<26} {'seconds':>8} {'host peak MB':>13} {'device peak MB':>15}")
    for variant in VARIANTS:
        measured = in_fresh_process("bench.memorisation_memory", variant,
                                    ["--num", str(args.num), "--size", str(args.size), "--device", args.device])
        row = {**stamp(torch.device(args.device)), "variant": variant, "num": args.num, "size": args.size, **measured}
        print(f"{variant:<26} {row['seconds']:>8} {row['host_peak_mb']:>13,} {row['device_peak_mb'] or '-':>15}")
        rows.append(row)
        append_csv(args.csv, row)
    if len({(r["pairs"], r["distance_sum"]) for r in rows}) != 1:
        raise SystemExit("the two variants found different pairs")
    return rows


if __name__ == "__main__":
    main()
