#!/usr/bin/env bash
# GPU call A of the 2026-12-03 (second) session: correctness of every new kernel, then the DiT step.
#   1. gpu-check, all rows (wgmma flash, GGUF block widening, offload streaming, VAE fusions, 8-wide quant);
#   2. tools/bench/hopper_attn_check.py (the wgmma kernel against SDPA and mma.sync, with timings);
#   3. the DiT forward, batch 2, 1024x1024, bf16: --flash mma and auto with bf16 weights, then int8 and
#      fp8 weights with the default flash kernel (kernel profiles included).
#   tools/bench/gpu-session-d.sh AFTER_DIR OUT
set -uo pipefail
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
echo "== gpu-check"
stdbuf -oL -eL timeout "${CHECK_SECONDS:-200}" scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"; grep -E "FAIL|of [0-9]+ |did not" "$out/gpu-check.txt" | tail -30
echo "== hopper_attn_check.py"
timeout "${HOPPER_SECONDS:-150}" python3 tools/bench/hopper_attn_check.py > "$out/hopper.txt" 2>&1
echo "exit $?"; grep -vE "^ok" "$out/hopper.txt" | tail -20; grep -E "DiT|dit" "$out/hopper.txt" | head -8
for run in "none mma" "none auto" "int8 auto" "fp8 auto"; do
    set -- $run
    timeout "${DIT_SECONDS:-50}" "$b" bench --device cuda --dit --dtype bf16 --quantize $1 --flash $2 > "$out/dit-$1-$2.txt" 2>&1
    echo "== DiT $1 weights, --flash $2: exit $?"
    grep -E "NewBie DiT|forward:|guided step|nb_flash|fp8|quant|absmax|dequant|cublasLt" "$out/dit-$1-$2.txt" | head -12
done
exit 0
