#!/usr/bin/env bash
# Weight loading on a CUDA machine, one run: the whole 1024x1024 generation of `bench-pipeline`
# (random full-size weights, 28 guided Euler steps) twice from the page cache, against PyTorch
# loading the same files onto the GPU (tools/bench/torch_load.py), then both once more after
# dropping the page cache (cold; skipped where /proc/sys/vm/drop_caches is not writable).
#   tools/bench/gpu-load.sh BIN OUT
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
w=/tmp/newbie-random
ours() { timeout 120 "$bin" bench-pipeline --weights $w --device cuda --quiet --json "$out/load-$1.json" -o /tmp/load.png > "$out/load-$1.txt" 2>&1
         echo "-- newbie ($1)"; grep -E "^load|^total|^denoise|peak" "$out/load-$1.txt"; }
theirs() { echo "-- torch ($1)"; timeout 120 python3 tools/bench/torch_load.py $w 2>&1 | tail -5 | tee "$out/torch-load-$1.txt"; }
for r in warm1 warm2; do ours $r; theirs $r; done
if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    ours cold
    sync; echo 3 > /proc/sys/vm/drop_caches
    theirs cold
else
    echo "cold cache: /proc/sys/vm/drop_caches is not writable here; not measured"
fi
