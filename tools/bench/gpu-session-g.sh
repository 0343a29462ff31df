#!/usr/bin/env bash
# One GPU call (about 8 minutes) for issues 18 and 15, most important first, each step under its
# own timeout; everything it keeps is a small text file in OUT (6 files):
#   1. dit-bf16.txt: the DiT forward and guided step at 1024x1024, 512x512 and 1024x1536 (one
#      model, bf16, random weights), then whole 28-step samplings at 1024x1024 in the same process:
#      uncached (CUDA graphs, then eager), the step cache with threshold 0 (checks, never skips: its
#      latent must be "identical yes" to the first run's), a huge threshold (every call after the
#      first skipped: the speed of a hit) and the default thresholds (docs/SAMPLING.md);
#   2. dit-fp8.txt: the same three shapes with --quantize fp8;
#   3. pipeline.txt: whole 1024x1024 images (28 steps, CFG on every step) with the DiT in bf16, and
#      GGUF Q8_0 and Q4_K blocks made at load (--quantize dit=q8_0|q4_k): peak device memory;
#   4. precision.md + precision.txt: precision-report at 1024x1024, 28 steps, the uncached bf16
#      run against the step caches (image PSNR/SSIM and denoise time in one process);
#   weights.txt: the random model's write.
#
#   tools/bench/gpu-session-g.sh AFTER_DIR OUT
#
# AFTER_DIR holds the static `newbie` (or newbie.xz) with NewBie_NewBieCUDA.resources/ beside it.
# Run from a checkout. Timeouts overridable: DIT_SECONDS, FP8_SECONDS, IMAGE_SECONDS, REPORT_SECONDS;
# BUDGET_SECONDS (default 540) caps the whole script: a step gets at most what is left, and is
# skipped (with a line saying so) when less than 20 s is.
set -uo pipefail
t0=$(date +%s)
# seconds step may run: its own limit, or what is left of the budget if that is less ("" = skip)
BUDGET=${BUDGET_SECONDS:-540}
source "$(dirname "$0")/budget.sh"
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
w=/tmp/newbie-random
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
# the random full model for steps 3 and 4, written on the host's cores while step 1 runs
timeout 150 "$b" bench-pipeline --weights $w --weights-only > "$out/weights.txt" 2>&1 &
weights=$!

echo "== 1. DiT bf16: three shapes, then 28-step samplings with the step cache (1024x1024)"
run "${DIT_SECONDS:-170}" "$b" bench --device cuda --dit --dtype bf16 --shapes 1024x1024,512x512,1024x1536 \
    --step-cache-runs graphs,eager,teacache:0,fbcache:0,teacache:1e9,fbcache:1e9,teacache:0.3,fbcache:0.1 \
    > "$out/dit-bf16.txt" 2>&1
echo "exit $?"; grep -E "NewBie DiT|forward:|guided step|CUDA graph /|uncached|teacache|fbcache|step cache runs|rror" "$out/dit-bf16.txt"

echo "== 2. DiT fp8 weights: the same shapes"
run "${FP8_SECONDS:-90}" "$b" bench --device cuda --dit --dtype bf16 --quantize fp8 --shapes 1024x1024,512x512,1024x1536 \
    > "$out/dit-fp8.txt" 2>&1
echo "exit $?"; grep -E "NewBie DiT|forward:|guided step|rror" "$out/dit-fp8.txt"

wait $weights
echo "== 3. whole 1024x1024 images: bf16 DiT against GGUF blocks made at load (weights: $(tail -1 "$out/weights.txt"))"
: > "$out/pipeline.txt"
for q in none dit=q8_0 dit=q4_k; do
    start=$(date +%s)
    run "${IMAGE_SECONDS:-100}" "$b" bench-pipeline --weights $w --device cuda --precision bf16 --quantize $q \
        --size 1024 --steps 29 -o /tmp/gg-image.png > /tmp/gg-pipeline.txt 2>&1
    rc=$?
    echo "-- --quantize $q: exit $rc, $(( $(date +%s) - start )) s wall" | tee -a "$out/pipeline.txt"
    grep -vE "^  step [0-9]+/" /tmp/gg-pipeline.txt | tail -16 >> "$out/pipeline.txt"
    grep -E "^load DiT|^denoise|^total|rror" /tmp/gg-pipeline.txt | head -5
done

echo "== 4. precision-report: uncached bf16 against the step caches (1024x1024, 28 steps)"
rm -rf /tmp/gg-report
configs="bf16;bf16@teacache:0.3;bf16@fbcache:0.1;bf16@teacache:0.6"
run "${REPORT_SECONDS:-170}" "$b" precision-report --model $w --prompt "1girl, red eyes, school uniform, cherry blossoms" \
    --width 1024 --height 1024 --sampler euler --steps 29 --cfg-trunc 100 --device cuda --no-trace \
    --configs "$configs" -o /tmp/gg-report --force > "$out/precision.txt" 2>&1
echo "exit $?"; tail -14 "$out/precision.txt"
cp /tmp/gg-report/report.md "$out/precision.md" 2>/dev/null
ls "$out"; echo "session g: $(( $(date +%s) - t0 )) s"
exit 0
