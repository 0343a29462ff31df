#!/usr/bin/env bash
# VAE decode before/after on a CUDA machine, one run: `newbie bench --device cuda --vae` of each
# binary at 1024x1024 and 2048x2048 (bf16, random FLUX VAE weights from bench-pipeline), and
# diffusers' AutoencoderKL on the same shapes (tools/bench/torch_vae.py; the wheel from .whl/).
#   tools/bench/gpu-vae.sh BEFORE_DIR AFTER_DIR OUT
set -uo pipefail
before=$1 after=$2 out=$3
mkdir -p "$out"
for d in "$before" "$after"; do [ -f "$d/newbie.xz" ] && xz -d -f "$d/newbie.xz"; chmod +x "$d/newbie"; done
w=/tmp/newbie-random
[ -d $w ] || timeout 200 "$after/newbie" bench-pipeline --weights $w --weights-only 2>&1 | tail -1
python3 -c "import diffusers" 2>/dev/null || pip install -q --no-deps .whl/*.whl > /dev/null 2>&1
for size in 1024 2048; do
    for side in before after; do
        dir=$before; [ $side = after ] && dir=$after
        echo "-- $side $size"
        timeout 120 "$dir/newbie" bench --device cuda --vae $w/vae --size $size > "$out/vae-$side-$size.txt" 2>&1
        tail -3 "$out/vae-$side-$size.txt"
    done
    timeout 120 python3 tools/bench/torch_vae.py --size $size --dtype bf16 2>&1 | tail -1 | tee "$out/vae-torch-$size.txt"
done
