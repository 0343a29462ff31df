#!/usr/bin/env bash
# One GPU call for issue 15's measurements (docs/QUANTIZATION.md, docs/PRECISION.md):
#   1. tools/bench/gpu-quant.sh without its kernel step: peak device memory of whole 1024x1024
#      images (bf16, int8 everywhere, fp8 DiT + int8 Gemma) and the DiT step with bf16, int8 and fp8
#      weights, two interleaved rounds;
#   2. the quantized configs' quality against fp32 and bf16 (precision-report at 1024x1024, 28 steps,
#      untraced) through tools/bench/gpu-precision-table.sh.
#   tools/bench/gpu-session-c.sh AFTER_DIR OUT
set -uo pipefail
after=$1 out=$2
mkdir -p "$out/quant" "$out/precision"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
SKIP_KERNELS=1 ROUNDS=${ROUNDS:-2} PIPELINE_SECONDS=${PIPELINE_SECONDS:-60} DIT_SECONDS=${DIT_SECONDS:-45} \
    timeout "${QUANT_SECONDS:-330}" tools/bench/gpu-quant.sh "$after/newbie" "$out/quant"
echo "== quality of the quantized configs (precision-report, 1024x1024)"
CONFIGS="${QUALITY_CONFIGS:-fp32;bf16;bf16+dit=int8,gemma=int8,jina=int8;bf16+dit=fp8,gemma=int8;bf16+dit=int8-g128,gemma=int8-g128,jina=int8-g128}" \
    TRACED=0 REPORT_SECONDS=${REPORT_SECONDS:-170} timeout 190 tools/bench/gpu-precision-table.sh "$after/newbie" "$out/precision" 2>&1 | tail -20
exit 0
