#!/usr/bin/env bash
# VAE decode on a CUDA machine, one run: `newbie bench --device cuda --vae` at 1024x1024 and
# 2048x2048 (bf16, the random FLUX VAE of bench-pipeline), with im2col in bands (the default) and
# as one whole column matrix (NEWBIE_IM2COL_BAND_BYTES huge: the code path before banding),
# alternating.   tools/bench/gpu-vae.sh BIN OUT
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
w=/tmp/newbie-random
for size in 1024 2048; do
    for round in 1 2; do
        for mode in whole banded; do
            bytes=""; [ $mode = whole ] && bytes=1000000000000
            echo "-- $mode $size (round $round)"
            NEWBIE_IM2COL_BAND_BYTES=$bytes timeout 120 "$bin" bench --device cuda --vae $w/vae --size $size > "$out/vae-$mode-$size-$round.txt" 2>&1
            tail -3 "$out/vae-$mode-$size-$round.txt"
        done
    done
done
