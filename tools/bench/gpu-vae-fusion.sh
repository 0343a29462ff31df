#!/usr/bin/env bash
# VAE decode with and without the fused GroupNorm+SiLU and folded convolution bias, one binary,
# PyTorch in the same call. `newbie bench --device cuda --vae` at 1024x1024 and 2048x2048 (bf16,
# the random FLUX VAE that bench-pipeline writes to /tmp/newbie-random), the environment switch
# NEWBIE_VAE_UNFUSED=1 giving the code path before the fusion, alternating, two rounds each; then
# tools/bench/torch_vae.py (diffusers AutoencoderKL, same sizes). Run from the repository root:
#   tools/bench/gpu-vae-fusion.sh BIN OUT
# Success: every run prints its time and peak; "fused" is at or below torch's time.
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
w=/tmp/newbie-random
[ -d "$w/vae" ] || timeout 200 "$bin" bench-pipeline --weights "$w" --weights-only 2>&1 | tail -1
for size in 1024 2048; do
    for round in 1 2; do
        for mode in unfused fused; do
            flag=""; [ $mode = unfused ] && flag=1
            echo "-- $mode $size (round $round)"
            NEWBIE_VAE_UNFUSED=$flag timeout 120 "$bin" bench --device cuda --vae $w/vae --size $size > "$out/vae-$mode-$size-$round.txt" 2>&1
            tail -3 "$out/vae-$mode-$size-$round.txt"
        done
    done
    timeout 120 python3 tools/bench/torch_vae.py --size $size --dtype bf16 2>&1 | tail -1 | tee "$out/vae-torch-$size.txt"
done
