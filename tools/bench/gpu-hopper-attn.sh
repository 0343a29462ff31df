#!/usr/bin/env bash
# One GPU call for the Hopper flash kernel (flash_hopper.cu, wgmma): first the CuPy check, which
# needs no Swift build (correctness on the DiT shape and on odd shapes, and times for wgmma,
# mma.sync and torch SDPA). Then, if a release binary is given (newbie with its
# NewBie_NewBieCUDA.resources folder beside it), gpu-check and the DiT forward with --flash auto
# (wgmma) and --flash mma (the mma.sync kernel, A/B in the same call).
#   tools/bench/gpu-hopper-attn.sh OUT [path/to/newbie]
set -uo pipefail
out=${1:-out/hopper-attn} bin=${2:-}
mkdir -p "$out"
echo "== tools/bench/hopper_attn_check.py"
timeout 420 python3 tools/bench/hopper_attn_check.py > "$out/check.txt" 2>&1
echo "exit $?"; cat "$out/check.txt"
[ -n "$bin" ] || exit 0
[ -f "$bin.xz" ] && xz -d -f "$bin.xz"; chmod +x "$bin"
echo "== gpu-check"
stdbuf -oL -eL timeout 150 scripts/gpu-check "$bin" > "$out/gpu-check.txt" 2>&1
echo "exit $?"; grep -E "flash|FAIL|of [0-9]+ " "$out/gpu-check.txt" | tail -60
for f in auto mma; do
    echo "== DiT forward, bf16 1024x1024, --flash $f"
    timeout 150 "$bin" bench --device cuda --dit --repeats 10 --flash "$f" > "$out/dit-$f.txt" 2>&1
    echo "exit $?"; grep -E "NewBie DiT|forward:|nb_flash|step" "$out/dit-$f.txt" | head -8
done
exit 0
