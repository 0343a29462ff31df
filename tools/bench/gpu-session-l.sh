#!/usr/bin/env bash
# One GPU call (at most BUDGET_SECONDS, default 330) closing the session's measurements with the
# final binary, most important first:
#   1. gpu-check.txt: every gpu-check row;
#   2. pipeline.txt: whole 1024x1024 images (28 steps, CFG, VAE decode), DiT bf16 and fp8;
#   3. dit.txt + torch-dit.txt: ours (bf16) and PyTorch torch.compile at 1024x1024 in the same call.
#   tools/bench/gpu-session-l.sh AFTER_DIR OUT
set -uo pipefail
BUDGET=${BUDGET_SECONDS:-330}
source "$(dirname "$0")/session.sh"
(timeout 100 "$b" bench-pipeline --weights $w --weights-only > /tmp/weights.txt 2>&1) &
weights=$!
echo "== 1. gpu-check"
run 90 stdbuf -oL -eL scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|passed|did not" "$out/gpu-check.txt" | tail -12
wait $weights
echo "== 2. whole images, 28 steps: DiT bf16 and fp8 ($(( $(date +%s) - t0 )) s; $(tail -1 /tmp/weights.txt))"
: > "$out/pipeline.txt"
for q in none dit=fp8; do
    run 50 "$b" bench-pipeline --weights $w --device cuda --precision bf16 --quantize $q \
        --size 1024 --steps 29 -o /tmp/gl-image.png > /tmp/gl.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/pipeline.txt"
    grep -vE "^  step [0-9]+/" /tmp/gl.txt | tail -16 >> "$out/pipeline.txt"
    grep -E "^denoise|^  steps 2-28 median|^VAE|^total|rror" /tmp/gl.txt | head -6
done
echo "== 3. ours bf16 and torch.compile at 1024x1024 ($(( $(date +%s) - t0 )) s)"
run 60 "$b" bench --device cuda --dit --dtype bf16 > "$out/dit.txt" 2>&1
echo "exit $?"; grep -E "forward:|guided step" "$out/dit.txt" | head -3
run 130 python3 tools/bench/torch_dit.py --dtype bf16 --runs 5 --shapes 1024x1024 --compile > /tmp/torch.txt 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^torch|Error|error" /tmp/torch.txt | tail -6 | tee "$out/torch-dit.txt"
echo "session l: $(( $(date +%s) - t0 )) s"
exit 0
