#!/usr/bin/env bash
# A short GPU call to fill in three measurements: the DiT step resident against --offload with bf16
# and int8 weights (the 8-wide widening kernel included), and the VAE decode at 2048x2048 fused,
# unfused and PyTorch's (diffusers from .whl/).   tools/bench/gpu-session-f.sh AFTER_DIR OUT
set -uo pipefail
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
python3 -m pip install -q --no-deps .whl/*.whl > "$out/pip.txt" 2>&1 &
timeout 60 "$b" bench-pipeline --weights /tmp/newbie-random --weights-only > "$out/weights.txt" 2>&1 &
for run in "none" "none --offload" "int8" "int8 --offload"; do
    set -- $run; q=$1; shift
    timeout 50 "$b" bench --device cuda --dit --dtype bf16 --quantize $q "$@" > "$out/dit.txt" 2>&1
    echo "== DiT $q $*: exit $?"; grep -E "forward:|guided step|dequant" "$out/dit.txt" | head -4
done
wait
for mode in unfused fused; do
    flag=""; [ $mode = unfused ] && flag=1
    NEWBIE_VAE_UNFUSED=$flag timeout 40 "$b" bench --device cuda --vae /tmp/newbie-random/vae --size 2048 > "$out/vae.txt" 2>&1
    echo "== VAE 2048 $mode: exit $?"; tail -1 "$out/vae.txt"
done
timeout 60 python3 tools/bench/torch_vae.py --size 2048 --dtype bf16 2>&1 | tail -1
exit 0
