#!/usr/bin/env bash
# Kernel-family profile (`generate --cuda-profile`) of a short 1024x1024 generation with bf16, int8
# and fp8 DiT weights, on random full-size weights, to see where a quantized step spends its time.
#   tools/bench/gpu-profile-quant.sh NEWBIE_BIN OUT
set -uo pipefail
b=$1 out=$2
mkdir -p "$out"
[ -f "$b.xz" ] && xz -d -f "$b.xz"; chmod +x "$b"
timeout 60 "$b" bench-pipeline --weights /tmp/newbie-random --weights-only 2>&1 | tail -1
for q in none int8 fp8; do
  a=""; [ $q != none ] && a="--quantize dit=$q"
  timeout 60 "$b" generate "1girl, cherry blossoms" --model /tmp/newbie-random --width 1024 --height 1024 --sampler euler \
      --steps 6 --cfg-trunc 100 --device cuda --precision bf16 $a --cuda-profile -o "/tmp/prof-$q.png" > "$out/prof-$q.txt" 2>&1
  echo "== $q exit $?"; grep -E " ms" "$out/prof-$q.txt" | head -24
done
exit 0
