#!/usr/bin/env bash
# One GPU call for gpu-check, quantized compute and the warm server: tools/bench/gpu-quant.sh (kernel check,
# peak memory of whole images, DiT step with bf16/int8/fp8 weights), then
# tools/bench/gpu-serve-warm.sh (cold CLI run against a warm server request). Output in OUT.
#   tools/bench/gpu-session-b.sh AFTER_DIR OUT
set -uo pipefail
after=$1 out=$2
mkdir -p "$out/quant" "$out/serve"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
echo "== gpu-check"
stdbuf -oL -eL timeout 100 scripts/gpu-check "$after/newbie" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"; grep -E "FAIL|of [0-9]+ " "$out/gpu-check.txt" | tail -12; tail -3 "$out/gpu-check.txt"
SKIP_KERNELS=1 ROUNDS=1 PIPELINE_SECONDS=70 DIT_SECONDS=60 timeout 220 tools/bench/gpu-quant.sh "$after/newbie" "$out/quant"
echo "== serve, warm against cold"
MAKE_WEIGHTS=0 timeout 100 tools/bench/gpu-serve-warm.sh "$after/newbie" "$out/serve" 2>&1 | tail -15
exit 0
