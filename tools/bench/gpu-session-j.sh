#!/usr/bin/env bash
# One GPU call (at most BUDGET_SECONDS, default 540) for fp8 with the scales applied by the kernels
# that read each product (issue 15) and our step against PyTorch in the same call (issue 18), most
# important first:
#   1. gpu-check.txt: every gpu-check row (new: the readers of unscaled fp8 products, the row
#      quantizers' hardware e4m3 conversion and row-sized blocks);
#   2. dit.txt: ours at 1024x1024, batch 2, bf16 then fp8 weights: forward, guided step, kernel profile;
#   3. torch-dit.txt: PyTorch eager and torch.compile at 1024x1024 (tools/bench/torch_dit.py,
#      diffusers from .whl/);
#   4. pipeline.txt: whole 1024x1024 images (28 steps, CFG, VAE decode), DiT bf16 and fp8;
#   5. dit-shapes.txt: ours at 512x512 and 1024x1536, bf16 and fp8, if the budget allows.
#   tools/bench/gpu-session-j.sh AFTER_DIR OUT
set -uo pipefail
BUDGET=${BUDGET_SECONDS:-540}
source "$(dirname "$0")/session.sh"
echo "== 1. gpu-check"
run 170 stdbuf -oL -eL scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|of [0-9]+ |did not|note:" "$out/gpu-check.txt" | tail -30
# the random full-size weights for the whole images, made while the DiT benches run
(timeout 150 "$b" bench-pipeline --weights $w --weights-only > /tmp/weights.txt 2>&1) &
weights=$!
echo "== 2. ours at 1024x1024: bf16, then fp8 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit.txt"
for q in none fp8; do
    run 80 "$b" bench --device cuda --dit --dtype bf16 --quantize $q > /tmp/dit.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/dit.txt"; cat /tmp/dit.txt >> "$out/dit.txt"
    grep -E "forward:|guided step|note:|rror" /tmp/dit.txt | head -8
done
echo "== 3. PyTorch at 1024x1024: eager and torch.compile ($(( $(date +%s) - t0 )) s)"
run 170 python3 tools/bench/torch_dit.py --dtype bf16 --runs 5 --shapes 1024x1024 --compile > /tmp/torch.txt 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^torch|Error|error" /tmp/torch.txt | tail -8 | tee "$out/torch-dit.txt"
wait $weights
echo "== 4. whole images, 28 steps: DiT bf16 and fp8 ($(( $(date +%s) - t0 )) s; $(tail -1 /tmp/weights.txt))"
: > "$out/pipeline.txt"
for q in none dit=fp8; do
    run 90 "$b" bench-pipeline --weights $w --device cuda --precision bf16 --quantize $q \
        --size 1024 --steps 29 -o /tmp/gj-image.png > /tmp/gj.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/pipeline.txt"
    grep -vE "^  step [0-9]+/" /tmp/gj.txt | tail -16 >> "$out/pipeline.txt"
    grep -E "^load DiT|^denoise|^decode|^total|peak|rror" /tmp/gj.txt | head -8
done
echo "== 5. ours at 512x512 and 1024x1536 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit-shapes.txt"
for q in none fp8; do
    run 90 "$b" bench --device cuda --dit --dtype bf16 --quantize $q --shapes 512x512,1024x1536 > /tmp/dit.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/dit-shapes.txt"; cat /tmp/dit.txt >> "$out/dit-shapes.txt"
    grep -E "NewBie DiT|forward:|guided step|rror" /tmp/dit.txt | head -8
done
echo "session j: $(( $(date +%s) - t0 )) s"
exit 0
