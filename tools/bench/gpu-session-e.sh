#!/usr/bin/env bash
# One GPU call for the 2026-12-03 (second) session's new work, most important first, with every step
# under its own timeout:
#   1. gpu-check, all rows (wgmma flash, GGUF block widening, offload streaming, VAE fusions, 8-wide quant);
#   2. the DiT forward, batch 2, 1024x1024, bf16: --flash mma and auto (bf16 weights), fp8 weights;
#   3. PyTorch eager and torch.compile on the same DiT shape (diffusers from a wheel in .whl/, --no-deps);
#   4. whole 1024x1024 images (28 steps, CFG): int8 everywhere, resident and with --offload, peak memory;
#   5. the VAE decode at 1024x1024, fused and unfused, and PyTorch's;
#   6. tools/bench/hopper_attn_check.py (the wgmma kernel alone against SDPA and mma.sync).
#   tools/bench/gpu-session-e.sh AFTER_DIR OUT
set -uo pipefail
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
(ls .whl/*.whl >/dev/null 2>&1 && pip install -q --no-deps .whl/*.whl > "$out/pip.txt" 2>&1) &
timeout 60 "$b" bench-pipeline --weights /tmp/newbie-random --weights-only > "$out/weights.txt" 2>&1 &
echo "== 1. gpu-check"
stdbuf -oL -eL timeout "${CHECK_SECONDS:-150}" scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"; grep -E "FAIL|of [0-9]+ |did not" "$out/gpu-check.txt" | tail -30
for run in "none mma" "none auto" "fp8 auto"; do
    set -- $run
    timeout "${DIT_SECONDS:-45}" "$b" bench --device cuda --dit --dtype bf16 --quantize $1 --flash $2 > "$out/dit-$1-$2.txt" 2>&1
    echo "== 2. DiT $1 weights, --flash $2: exit $?"
    grep -E "NewBie DiT|forward:|guided step|nb_flash|fp8|e4m3|absmax|cublasLt" "$out/dit-$1-$2.txt" | head -12
done
wait
echo "== 3. PyTorch, same shape"
timeout 40 python3 tools/bench/torch_dit.py --size 1024 --runs 5 2>&1 | tail -2 | tee "$out/torch-eager.txt"
timeout 130 python3 tools/bench/torch_dit.py --size 1024 --runs 5 --compile 2>&1 | tail -2 | tee "$out/torch-compile.txt"
echo "== 4. whole images (weights: $(tail -1 "$out/weights.txt"))"
for run in "int8 dit=int8,gemma=int8,jina=int8" "int8-offload dit=int8,gemma=int8,jina=int8 --offload" "bf16-offload none --offload"; do
    set -- $run; name=$1 q=$2; shift 2
    timeout 45 "$b" bench-pipeline --weights /tmp/newbie-random --device cuda --precision bf16 --quantize "$q" "$@" \
        --size 1024 --steps 29 -o "/tmp/ge-$name.png" > "$out/pipeline-$name.txt" 2>&1
    echo "-- $name: exit $?"; grep -E "stage|load|denoise|decode|total|Error|error" "$out/pipeline-$name.txt" | tail -8
done
echo "== 5. VAE decode 1024x1024"
for mode in unfused fused; do
    flag=""; [ $mode = unfused ] && flag=1
    NEWBIE_VAE_UNFUSED=$flag timeout 40 "$b" bench --device cuda --vae /tmp/newbie-random/vae --size 1024 > "$out/vae-$mode.txt" 2>&1
    echo "-- $mode: exit $?"; tail -3 "$out/vae-$mode.txt"
done
timeout 60 python3 tools/bench/torch_vae.py --size 1024 --dtype bf16 2>&1 | tail -1 | tee "$out/vae-torch.txt"
echo "== 6. hopper_attn_check.py"
timeout "${HOPPER_SECONDS:-90}" python3 tools/bench/hopper_attn_check.py > "$out/hopper.txt" 2>&1
echo "exit $?"; grep -vE "^ok" "$out/hopper.txt" | tail -12; grep -iE "dit" "$out/hopper.txt" | head -6
exit 0
