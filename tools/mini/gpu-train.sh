#!/usr/bin/env bash
# NewBie-mini's training in one call on the GPU machine (no network there): the carried diffusers
# wheel (.whl/), the engine's static binary (.gpu/head/newbie[.xz], for the text features), the
# frozen text encoders (.mini/text). Writes OUT/mini (see tools/mini/train.py). With --gpu-check,
# `newbie gpu-check` runs beside the training (own kernel cache) into OUT/gpu-check.txt.
#   tools/mini/gpu-train.sh OUT [--gpu-check] [extra train.py flags]
set -uo pipefail
out=${1:?usage: tools/mini/gpu-train.sh OUT [--gpu-check] [train.py flags]}; shift
check=0; [ "${1:-}" = "--gpu-check" ] && { check=1; shift; }
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
bin=.gpu/head/newbie
[ -f $bin.xz ] && xz -d -f $bin.xz
chmod +x $bin
if [ $check = 1 ]; then
    (HOME=/tmp/gpu-check-home scripts/gpu-check $bin > "$out/gpu-check.txt" 2>&1; echo "gpu-check exit $?" >> "$out/gpu-check.txt") &
fi
PYTHONUNBUFFERED=1 python3 tools/mini/train.py --text .mini/text --newbie $bin --out "$out/mini" --work /tmp/mini-work \
    --text-device cuda "$@" 2>&1 | grep -v -i -E "warn|detach|^ +log\("
wait
[ $check = 1 ] && tail -5 "$out/gpu-check.txt"
exit 0
