#!/usr/bin/env bash
# GGUF blocks held resident on the GPU (docs/QUANTIZATION.md, "GGUF blocks held resident"), in one run:
#   1. gpu-check, and its rows for Kernels/gguf.cu: "dequant Q8_0 (bit for bit)" ... "dequant Q4_K
#      (bit for bit)" in f32/bf16/f16 must show error 0 (limit 0), "Q8_0 linear + bias" ... within 1e-2;
#   2. random full-size weights (as tools/bench/gpu-quant.sh), the DiT written as Q8_0 and Q4_K GGUFs
#      by `newbie quantize` (times printed: the K-quant writer on the host's cores);
#   3. peak device memory and time of a whole 1024x1024 image (28 guided Euler steps, CFG on every
#      step) with the bf16 DiT, then the Q8_0 and Q4_K GGUF DiTs (`generate --dit FILE --stats`).
#
#   tools/bench/gpu-gguf.sh NEWBIE_BIN OUT_DIR
#
# NEWBIE_BIN: the static `newbie` (or newbie.xz) with NewBie_NewBieCUDA.resources/ beside it. Run
# from a checkout. Timeouts overridable: CHECK_SECONDS, WEIGHTS_SECONDS, QUANTIZE_SECONDS,
# IMAGE_SECONDS. OUT_DIR/summary.txt collects the lines that matter.
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
[ -f "$bin.xz" ] && xz -d -f "$bin.xz"
chmod +x "$bin"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

note "== 1. gpu-check (the GGUF rows: bit for bit = error 0)"
timeout "${CHECK_SECONDS:-150}" scripts/gpu-check "$bin" > "$out/gpu-check.txt" 2>&1
note "gpu-check exit $?"
grep -E "Q8_0|Q6_K|Q5_K|Q5_0|Q4_K|Q4_0" "$out/gpu-check.txt" | tee -a "$summary"
grep -E "FAIL|of [0-9]+ " "$out/gpu-check.txt" | tail -12 | tee -a "$summary"

note "== 2. random full-size weights, DiT as GGUF"
w=/tmp/newbie-random
timeout "${WEIGHTS_SECONDS:-240}" "$bin" bench-pipeline --weights $w --weights-only > "$out/weights.txt" 2>&1
note "weights exit $? ($(tail -1 "$out/weights.txt"))"
g=/tmp/newbie-gguf
mkdir -p $g
cp $w/transformer/config.json $g/ 2>/dev/null
for t in q8_0 q4_k; do
    start=$(date +%s.%N)
    timeout "${QUANTIZE_SECONDS:-300}" "$bin" quantize $w/transformer --to $t -o $g/dit-$t.gguf --force > "$out/quantize-$t.txt" 2>&1
    rc=$?
    note "-- quantize --to $t: exit $rc, $(echo "$(date +%s.%N) - $start" | bc) s: $(tail -1 "$out/quantize-$t.txt")"
done

note "== 3. whole 1024x1024 image, 28 steps, CFG every step: peak device memory per stage"
image() {  # NAME [--dit FILE]
    local name=$1; shift
    timeout "${IMAGE_SECONDS:-150}" "$bin" generate "1girl, solo" --model $w "$@" --device cuda --precision bf16 \
        --width 1024 --height 1024 --steps 29 --sampler euler --cfg 5 --cfg-trunc 100 --seed 1 --stats \
        -o "$out/image-$name.png" > "$out/image-$name.txt" 2>&1
    note "-- $name: exit $?"
    grep -iE "peak|load|encode|denoise|decode|total" "$out/image-$name.txt" | tail -14 | tee -a "$summary"
}
image bf16
image q8_0 --dit $g/dit-q8_0.gguf
image q4_k --dit $g/dit-q4_k.gguf
exit 0
