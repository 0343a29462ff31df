#!/usr/bin/env bash
# Before/after check of a change on a CUDA machine, in one run (so both sides share the machine's
# state): gpu-check of the new binary, the full-size DiT step of both (interleaved, twice each),
# and bit-identity of the tiny model's conditioning, latent and pixels at the default precision.
#
#   tools/bench/gpu-before-after.sh BEFORE_DIR AFTER_DIR OUT_DIR
#
# Each *_DIR holds `newbie` (or `newbie.xz`) with NewBie_NewBieCUDA.resources/ beside it, both
# from `swift build -c release --static-swift-stdlib`. Run from a checkout (gpu-check reads the
# tokenizers in Tests/Fixtures).
set -uo pipefail
before=$1 after=$2 out=$3
mkdir -p "$out"
for d in "$before" "$after"; do
    [ -f "$d/newbie.xz" ] && xz -d -f "$d/newbie.xz"
    chmod +x "$d/newbie"
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$out/gpu.txt"

echo "== gpu-check (after)"
scripts/gpu-check "$after/newbie" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?" | tee -a "$out/gpu-check.txt"
grep -E "FAIL|passed|of [0-9]+ " "$out/gpu-check.txt" | tail -20

echo "== DiT step, bf16, batch 2, 1024x1024 (before, after, before, after)"
for round in 1 2; do
    for side in before after; do
        dir=$before; [ $side = after ] && dir=$after
        echo "-- $side, round $round" | tee -a "$out/bench.txt"
        "$dir/newbie" bench --device cuda --dit >> "$out/bench.txt" 2>&1
        tail -4 "$out/bench.txt"
    done
done

echo "== tiny model, default precision on the GPU: before vs after"
"$after/newbie" make-tiny-model /tmp/ba-tiny > /dev/null
for side in before after; do
    dir=$before; [ $side = after ] && dir=$after
    b="$dir/newbie"
    $b encode --model /tmp/ba-tiny "1girl, red eyes, <character_1>silver hair</character_1>" --device cuda -o /tmp/$side-cond.safetensors 2>&1 | tail -1
    $b denoise --cond /tmp/$side-cond.safetensors --model /tmp/ba-tiny --device cuda --width 256 --height 256 --steps 6 --seed 7 -o /tmp/$side-lat.safetensors 2>&1 | tail -1
    $b generate --model /tmp/ba-tiny "1girl, red eyes" --device cuda --width 256 --height 256 --steps 6 --seed 7 --output /tmp/$side-gen.png 2>&1 | tail -1
done
for f in -cond.safetensors -lat.safetensors -gen.png; do
    python3 tools/bench/same_outputs.py /tmp/before$f /tmp/after$f | tee -a "$out/identity.txt"
done
