#!/usr/bin/env bash
# One GPU call for correctness, the VAE and loading: gpu-check, tools/bench/gpu-vae.sh,
# tools/bench/gpu-load.sh, all on one binary. Output in OUT.
#   tools/bench/gpu-session-a.sh BIN_DIR OUT
set -uo pipefail
dir=$1 out=$2
mkdir -p "$out"
[ -f "$dir/newbie.xz" ] && xz -d -f "$dir/newbie.xz"; chmod +x "$dir/newbie"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader
timeout 200 "$dir/newbie" bench-pipeline --weights /tmp/newbie-random --weights-only 2>&1 | tail -1
echo "== gpu-check"
timeout 180 scripts/gpu-check "$dir/newbie" > "$out/gpu-check.txt" 2>&1
echo "gpu-check exit $?"; grep -E "FAIL|of [0-9]+ " "$out/gpu-check.txt" | tail -15
echo "== VAE"; timeout 150 tools/bench/gpu-vae.sh "$dir/newbie" "$out"
echo "== loading"; timeout 200 tools/bench/gpu-load.sh "$dir/newbie" "$out"
exit 0
