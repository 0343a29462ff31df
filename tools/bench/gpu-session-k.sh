#!/usr/bin/env bash
# One GPU call (at most BUDGET_SECONDS, default 540): ours and PyTorch at three shapes in the same
# call (issue 18), after the fp8 producers' cheaper arithmetic (issue 15), most important first:
#   1. gpu-check.txt: every gpu-check row (the e4m3 codes must now equal the CPU's exactly);
#   2. dit.txt: ours, batch 2, bf16 then fp8 weights, at 1024x1024, 512x512 and 1024x1536 (forward,
#      guided step, kernel profile);
#   3. torch-dit.txt: PyTorch eager at the same three shapes, torch.compile at 512x512 and 1024x1536
#      (tools/bench/torch_dit.py, diffusers from .whl/; call j compiled 1024x1024 beside our step);
#   4. dit-tuned.txt: GEMM autotuning (NEWBIE_GEMM_AUTOTUNE=1: the heuristic's 8 candidates timed on
#      each shape's first call) at 1024x1024, bf16 and fp8. It gained nothing (121.8 against 121.2 ms,
#      96.3 against 95.9) and was removed after this call (commit 13c0b09 has it); the step now times
#      the default twice;
#   5. dit-warp.txt: the norm kernels' other row layout (NEWBIE_NORM_ROWS=warp, a warp per row) at
#      1024x1024, bf16: the A/B for the block-per-row default;
#   6. pipeline.txt: a whole 1024x1024 image (28 steps, CFG, VAE decode) with the DiT in fp8.
#   tools/bench/gpu-session-k.sh AFTER_DIR OUT
set -uo pipefail
BUDGET=${BUDGET_SECONDS:-560}
source "$(dirname "$0")/session.sh"
echo "== 1. gpu-check"
run 120 stdbuf -oL -eL scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|of [0-9]+ |passed|did not" "$out/gpu-check.txt" | tail -20
echo "== 2. ours at three shapes: bf16, then fp8 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit.txt"
for q in none fp8; do
    run 110 "$b" bench --device cuda --dit --dtype bf16 --quantize $q --shapes 1024x1024,512x512,1024x1536 > /tmp/dit.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/dit.txt"; cat /tmp/dit.txt >> "$out/dit.txt"
    grep -E "NewBie DiT|forward:|guided step|rror" /tmp/dit.txt | head -12
done
echo "== 3. PyTorch: eager at three shapes, torch.compile at 512x512 and 1024x1536 ($(( $(date +%s) - t0 )) s)"
run 200 python3 tools/bench/torch_dit.py --dtype bf16 --runs 5 --shapes 1024x1024,512x512,1024x1536 \
    --compile --compile-shapes 512x512,1024x1536 > /tmp/torch.txt 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^torch|Error|error" /tmp/torch.txt | tail -12 | tee "$out/torch-dit.txt"
echo "== 4. GEMM autotuning at 1024x1024 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit-tuned.txt"
export NEWBIE_GEMM_AUTOTUNE=1
for q in none fp8; do
    run 75 "$b" bench --device cuda --dit --dtype bf16 --quantize $q > /tmp/dit.txt 2>&1
    echo "-- --quantize $q, NEWBIE_GEMM_AUTOTUNE=1: exit $?" | tee -a "$out/dit-tuned.txt"; cat /tmp/dit.txt >> "$out/dit-tuned.txt"
    grep -E "forward:|guided step|identical|rror" /tmp/dit.txt | head -5
done
unset NEWBIE_GEMM_AUTOTUNE
echo "== 5. the warp-per-row norm kernels at 1024x1024 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit-warp.txt"
export NEWBIE_NORM_ROWS=warp
for q in none; do
    run 75 "$b" bench --device cuda --dit --dtype bf16 --quantize $q > /tmp/dit.txt 2>&1
    echo "-- --quantize $q, NEWBIE_NORM_ROWS=warp: exit $?" | tee -a "$out/dit-warp.txt"; cat /tmp/dit.txt >> "$out/dit-warp.txt"
    grep -E "forward:|guided step|rror" /tmp/dit.txt | head -4
done
unset NEWBIE_NORM_ROWS
echo "== 6. whole image, 28 steps, DiT fp8 ($(( $(date +%s) - t0 )) s)"
: > "$out/pipeline.txt"
run 40 "$b" bench-pipeline --weights $w --weights-only > /tmp/weights.txt 2>&1
run 60 "$b" bench-pipeline --weights $w --device cuda --precision bf16 --quantize dit=fp8 \
    --size 1024 --steps 29 -o /tmp/gk-image.png > /tmp/gk.txt 2>&1
echo "-- --quantize dit=fp8: exit $?" | tee -a "$out/pipeline.txt"
grep -vE "^  step [0-9]+/" /tmp/gk.txt | tail -16 >> "$out/pipeline.txt"
grep -E "^denoise|^VAE|^total|rror" /tmp/gk.txt | head -6
echo "session k: $(( $(date +%s) - t0 )) s"
exit 0
