#!/usr/bin/env bash
# One GPU call (at most BUDGET_SECONDS, default 480) for the measurements of issue 18 that need
# PyTorch in the same call, and the GGUF whole-image memory of issue 15, most important first:
#   1. dit.txt: ours, bf16, batch 2: forward and guided step at 1024x1024, 512x512, 1024x1536, then
#      28-step samplings at 1024x1024 (CUDA graphs, eager, and the step cache at threshold 0 and at
#      a huge threshold: the cost of the check and the speed of a hit; docs/SAMPLING.md);
#   2. torch-dit.txt: PyTorch (tools/bench/torch_dit.py, diffusers from .whl/) eager at the same
#      three shapes and torch.compile at 512x512 and 1024x1536;
#   3. pipeline.txt: whole 1024x1024 images (28 steps, CFG) with the DiT in bf16, then as GGUF Q8_0
#      and Q4_K blocks made at load: peak device memory per stage.
#   tools/bench/gpu-session-i.sh AFTER_DIR OUT
set -uo pipefail
BUDGET=${BUDGET_SECONDS:-480}
source "$(dirname "$0")/session.sh"
timeout 150 "$b" bench-pipeline --weights $w --weights-only > /tmp/weights.txt 2>&1 &
weights=$!
echo "== 1. ours: three shapes, then 28-step samplings"
run 170 "$b" bench --device cuda --dit --dtype bf16 --shapes 1024x1024,512x512,1024x1536 \
    --step-cache-runs graphs,eager,teacache:0,fbcache:0,teacache:1e9,fbcache:1e9 > "$out/dit.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "NewBie DiT|forward:|guided step|teacache|fbcache|graphs|eager|rror" "$out/dit.txt" | head -30
echo "== 2. PyTorch: eager at three shapes, torch.compile at 512x512 and 1024x1536"
run 240 python3 tools/bench/torch_dit.py --dtype bf16 --runs 5 --shapes 1024x1024,512x512,1024x1536 \
    --compile --compile-shapes 512x512,1024x1536 > /tmp/torch.txt 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "^torch|Error|error" /tmp/torch.txt | tail -12 | tee "$out/torch-dit.txt"
wait $weights
echo "== 3. whole images: bf16 DiT, GGUF Q8_0 and Q4_K made at load ($(tail -1 /tmp/weights.txt))"
: > "$out/pipeline.txt"
for q in dit=q4_k none dit=q8_0; do
    run 100 "$b" bench-pipeline --weights $w --device cuda --precision bf16 --quantize $q \
        --size 1024 --steps 29 -o /tmp/gi-image.png > /tmp/gi.txt 2>&1
    echo "-- --quantize $q: exit $?" | tee -a "$out/pipeline.txt"
    grep -vE "^  step [0-9]+/" /tmp/gi.txt | tail -16 >> "$out/pipeline.txt"
    grep -E "^load DiT|^denoise|^total|peak|rror" /tmp/gi.txt | head -6
done
echo "session i: $(( $(date +%s) - t0 )) s"
exit 0
