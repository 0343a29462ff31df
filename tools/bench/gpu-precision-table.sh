#!/usr/bin/env bash
# The precision table of docs/PRECISION.md on a CUDA machine, in one run: random full-size weights
# (bench-pipeline's), then `precision-report` at 1024x1024, 28 Euler steps with guidance on every
# step, untraced (times and memory), and a short traced run at 512x512 for the overflow column and
# the per-layer errors.   tools/bench/gpu-precision-table.sh NEWBIE_BIN OUT
# CONFIGS (";"-separated precision-report configs) replaces the default set; TRACED=0 skips the 512x512 run.
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
[ -f "$bin.xz" ] && xz -d -f "$bin.xz"
chmod +x "$bin"
configs="${CONFIGS:-fp32;bf16;fp16;bf16,vae=fp32;fp16,dit.layers.*.attention=fp32}"
prompt="1girl, red eyes, school uniform, cherry blossoms"
timeout ${WEIGHTS_SECONDS:-200} "$bin" bench-pipeline --weights /tmp/newbie-random --weights-only 2>&1 | tail -2
timeout ${REPORT_SECONDS:-300} "$bin" precision-report --model /tmp/newbie-random --prompt "$prompt" --width 1024 --height 1024 \
    --sampler euler --steps 29 --cfg-trunc 100 --device cuda --no-trace --configs "$configs" -o /tmp/pr1024 2>&1 | tail -25
cp /tmp/pr1024/report.md "$out/report1024.md"; cp /tmp/pr1024/report.json "$out/report1024.json"
cp /tmp/pr1024/grid.png "$out/grid1024.png" 2>/dev/null
[ "${TRACED:-1}" = 1 ] && timeout 150 "$bin" precision-report --model /tmp/newbie-random --prompt "$prompt" --width 512 --height 512 \
    --sampler euler --steps 11 --cfg-trunc 100 --device cuda --configs "$configs" -o /tmp/pr512 2>&1 | tail -12
cp /tmp/pr512/report.md "$out/report512.md" 2>/dev/null; cp /tmp/pr512/report.json "$out/report512.json" 2>/dev/null
exit 0
