#!/usr/bin/env bash
# One GPU call for fp8 W8A8 with per-token activation scales (docs/QUANTIZATION.md, "fp8 with
# per-token scales"), most important first, every step under its own timeout:
#   1. tools/bench/gpu_quant_kernels.py: nb_quant_rows_e4m3 against torch's float8 cast, and whether
#      this cuBLASLt offers outer-vector scaling (the FP8 GEMM's first path) and gets it right;
#   2. gpu-check, all rows (the e4m3 row codes, fused producers, fp8 linear and fp8 DiT rows are new);
#   3. the DiT forward, batch 2, 1024x1024, bf16 compute: bf16 weights, then fp8, then both again
#      (ratio fp8 / bf16 within this call; the "note: fp8 linear:" line says which product ran).
#   tools/bench/gpu-fp8tok.sh AFTER_DIR OUT     (AFTER_DIR holds the newbie binary, or newbie.xz)
set -uo pipefail
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
echo "== 1. gpu_quant_kernels.py"
timeout "${KERNEL_SECONDS:-120}" python3 tools/bench/gpu_quant_kernels.py > "$out/kernels.txt" 2>&1
echo "exit $?"; grep -E "FAIL|NOTE|cuBLASLt version|outer-vector|one block|all checks" "$out/kernels.txt" | head -20
echo "== 2. gpu-check"
stdbuf -oL -eL timeout "${CHECK_SECONDS:-180}" scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"
grep -E "FAIL|of [0-9]+ |did not|e4m3|fp8|note:" "$out/gpu-check.txt" | tail -40
echo "== 3. DiT forward, bf16 and fp8 weights, alternating"
for q in none fp8 none fp8; do
    timeout "${DIT_SECONDS:-45}" "$b" bench --device cuda --dit --dtype bf16 --quantize $q > "$out/dit-$q.txt" 2>&1
    echo "-- $q weights: exit $?"
    grep -E "NewBie DiT|forward:|guided step|note:|fp8|e4m3|cublasLt" "$out/dit-$q.txt" | head -14
done
exit 0
