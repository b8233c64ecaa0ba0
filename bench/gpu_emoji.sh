#!/usr/bin/env bash
# Issue #17's GPU target, prepared for a session that is lent a GPU: the r3gan preset on the Twitter emoji
# at 64 and 128 px, images/s and self-supervised FD against training time.
#
#   bash bench/gpu_emoji.sh prepare      # here, once: pydantic's wheels and the emoji into .gpu/ (git-ignored)
#   device run: command "bash bench/gpu_emoji.sh run", carry [".gpu"], timeout_s 600
#   bash bench/gpu_emoji.sh check        # here: the same steps on the CPU, 20 training steps at 32 px
#
# Settings (environment): MINUTES per size (run), STEPS (check), EVERY (steps between checkpoints, each
# scored), WIDTH,
# BLOCKS, DATA (the image folder, default .gpu/emoji), OUT (default /tmp/gpu_emoji; the device tool sets it).
#
# The GPU machine has torch, pandas, pyarrow, pillow and matplotlib but not pydantic, and no network, so the
# wheels and the images travel in .gpu/ (about 20 MB). `run` installs the wheels, trains each size for
# MINUTES (default 3: both sizes, their evaluation and the start fit one 10-minute call), scores every
# checkpoint in the self-supervised space (the emoji are unlabelled; Inception and DINOv2 need weights files
# the machine cannot download, so they are off), and writes to $OUT (at most 8 files):
# quality.csv (one row per size), ada_bf16.csv (ADA under CUDA's bf16 autocast: at p 0 it must change
# nothing), curves.png and curves.txt (ssl FD against training seconds), the two 10x10 grids, and log.txt.
# Widths: WIDTH (default 64) for ngf and ndf, BLOCKS (default 2) residual blocks per stage: r3gan's GPU
# defaults (ganlib.config.GPU_PRESET_DEFAULTS), given here so that `check` trains the same network on the CPU;
# precision auto takes bf16 on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
py=${PYTHON:-python3}

case "$mode" in
prepare)
    mkdir -p .gpu/whl
    for pkg in pydantic pydantic-core annotated-types typing-inspection; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$pkg'))")
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .gpu/whl "$pkg==$version"
    done
    [ -d .gpu/emoji ] || .venv/bin/python -m bench.rgb_data emoji --dest .gpu
    du -sh .gpu
    ;;
run | check)
    if [ "$mode" = run ]; then
        $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD
        device=cuda budget=(--minutes "${MINUTES:-3}") sizes="64 128" every=${EVERY:-500} quick=()
    else  # the same steps, short: 20 training steps of batch 32 at 32 px, a small evaluation
        py=.venv/bin/python device=cpu budget=(--steps "${STEPS:-20}") sizes="32" every=${EVERY:-10}
        quick=(--set train.batch_size=32 --set eval.num_samples=200 --set eval.ssl_steps=20 --set eval.batch_size=100)
    fi
    data=${DATA:-.gpu/emoji}
    out=${OUT:-/tmp/gpu_emoji}
    runs=$(mktemp -d)
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    {
        $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
        $py -m bench.ada_bf16 --device "$device" --sizes 64,256 --periods 2,4 --csv "$out/ada_bf16.csv"  # ADA under autocast
        for size in $sizes; do
            $py -m bench.quality --device "$device" "${budget[@]}" --only r3gan --dataset folder \
                --data-root "$data" --image-size "$size" --checkpoint-every "$every" --out "$runs" \
                --set "model.ngf=${WIDTH:-64}" --set "model.ndf=${WIDTH:-64}" --set "model.blocks=${BLOCKS:-2}" \
                --set eval.num_samples=5000 --set eval.inception=off --set eval.dinov2=off "${quick[@]}" \
                --label "w${WIDTH:-64}-${size}px" --csv "$out/quality.csv"
        done
        $py -m bench.curves "$runs"/r3gan-*/ --x seconds --metrics ssl_fd,memorisation_fraction --out "$out/curves.png" \
            | tee "$out/curves.txt"
    } 2>&1 | tee "$out/log.txt"
    for grid in "$runs"/*/bench-grid/grid_10x10.png; do
        cp "$grid" "$out/grid-$(basename "$(dirname "$(dirname "$grid")")").png"
    done
    ls -la "$out"
    ;;
*)
    echo "usage: bash bench/gpu_emoji.sh prepare|run|check" >&2
    exit 2
    ;;
esac
