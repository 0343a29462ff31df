#!/usr/bin/env bash
# Quantized compute on a CUDA machine, in one run (issue 15; docs/QUANTIZATION.md):
#   1. the standalone kernel check (tools/bench/gpu_quant_kernels.py: quant.cu and the FP8 cuBLASLt
#      descriptor against torch, per-GEMM times), when python3 has torch and cupy;
#   2. peak device memory of a whole 1024x1024 generation (28 guided Euler steps, CFG on every step,
#      random full-size weights) for bf16, int8 everywhere, and fp8 DiT + int8 Gemma;
#   3. the DiT step (batch 2, 1024x1024, bf16 compute) with bf16, int8 and fp8 weights, interleaved
#      twice so that all three see the same machine state.
#
#   tools/bench/gpu-quant.sh NEWBIE_BIN OUT_DIR
#
# NEWBIE_BIN is the static `newbie` (or newbie.xz) with NewBie_NewBieCUDA.resources/ beside it.
# Run from a checkout. Every step has a timeout (seconds, overridable: WEIGHTS_SECONDS,
# PIPELINE_SECONDS, DIT_SECONDS, KERNEL_SECONDS; SKIP_KERNELS=1 skips step 1, ROUNDS sets the DiT
# rounds) and a failed step does not stop the others;
# OUT_DIR/summary.txt collects the lines that matter.
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
[ -f "$bin.xz" ] && xz -d -f "$bin.xz"
chmod +x "$bin"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$out/gpu.txt"

note "== 1. kernels (quant.cu, FP8 GEMM descriptor) against torch"
if [ "${SKIP_KERNELS:-0}" = 1 ]; then
    note "SKIP: SKIP_KERNELS=1"
elif python3 -c "import torch, cupy" 2>/dev/null; then
    timeout "${KERNEL_SECONDS:-200}" python3 tools/bench/gpu_quant_kernels.py > "$out/kernels.txt" 2>&1
    note "kernel check exit $?"
    grep -E "FAIL|checks|one block|x;" "$out/kernels.txt" | tee -a "$summary"
else
    note "SKIP: python3 lacks torch or cupy"
fi

note "== 2. random full-size weights"
timeout "${WEIGHTS_SECONDS:-240}" "$bin" bench-pipeline --weights /tmp/newbie-random --weights-only > "$out/weights.txt" 2>&1
note "weights exit $? ($(tail -1 "$out/weights.txt"))"

note "== 2. whole 1024x1024 image, 28 steps, CFG: peak device memory per stage"
run_pipeline() {  # NAME QUANTIZE
    local name=$1 q=$2
    timeout "${PIPELINE_SECONDS:-240}" "$bin" bench-pipeline --weights /tmp/newbie-random --device cuda --precision bf16 \
        --quantize "$q" --size 1024 --steps 29 --json "$out/pipeline-$name.json" -o "/tmp/gq-$name.png" > "$out/pipeline-$name.txt" 2>&1
    local rc=$?
    note "-- $name (--quantize '${q}'): exit $rc"
    grep -E "peak|stage|load|encode|denoise|decode|total" "$out/pipeline-$name.txt" | tail -14 | tee -a "$summary"
}
run_pipeline bf16 ""
run_pipeline int8-all "dit=int8,gemma=int8,jina=int8"
run_pipeline fp8dit-int8gemma "dit=fp8,gemma=int8"

note "== 3. DiT step, batch 2, 1024x1024, bf16 compute (bf16, int8, fp8 weights; two rounds)"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for q in none int8 fp8; do
        timeout "${DIT_SECONDS:-150}" "$bin" bench --device cuda --dit --dtype bf16 --quantize $q > "$out/dit-$q-$round.txt" 2>&1
        note "-- $q, round $round: exit $?"
        grep -E "forward:|guided step|identical" "$out/dit-$q-$round.txt" | tee -a "$summary"
    done
done
exit 0
