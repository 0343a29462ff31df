#!/usr/bin/env bash
# One GPU call for correctness, loading and the VAE: gpu-check of AFTER, then gpu-load.sh and
# gpu-vae.sh (BEFORE against AFTER). Output in OUT (gpu-check.txt, load-*.txt, vae-*.txt).
#   tools/bench/gpu-session-a.sh BEFORE_DIR AFTER_DIR OUT
set -uo pipefail
before=$1 after=$2 out=$3
mkdir -p "$out"
for d in "$before" "$after"; do [ -f "$d/newbie.xz" ] && xz -d -f "$d/newbie.xz"; chmod +x "$d/newbie"; done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader
timeout 200 "$after/newbie" bench-pipeline --weights /tmp/newbie-random --weights-only 2>&1 | tail -1
echo "== gpu-check (after)"
timeout 180 scripts/gpu-check "$after/newbie" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"; grep -E "FAIL|of [0-9]+ " "$out/gpu-check.txt" | tail -15
echo "== VAE"; timeout 200 tools/bench/gpu-vae.sh "$before" "$after" "$out"
echo "== loading"; timeout 260 tools/bench/gpu-load.sh "$before" "$after" "$out"
exit 0
