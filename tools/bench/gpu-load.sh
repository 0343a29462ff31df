#!/usr/bin/env bash
# Weight loading before/after on a CUDA machine, one run: the whole 1024x1024 generation of
# `bench-pipeline` (random full-size weights, 28 guided Euler steps) with each binary, alternating
# twice from the page cache, then once each after dropping the page cache (cold; skipped where
# /proc/sys/vm/drop_caches is not writable). Prints each stage's time.
#   tools/bench/gpu-load.sh BEFORE_DIR AFTER_DIR OUT     (each DIR: newbie[.xz] + resources)
set -uo pipefail
before=$1 after=$2 out=$3
mkdir -p "$out"
for d in "$before" "$after"; do [ -f "$d/newbie.xz" ] && xz -d -f "$d/newbie.xz"; chmod +x "$d/newbie"; done
w=/tmp/newbie-random
[ -d $w ] || timeout 200 "$after/newbie" bench-pipeline --weights $w --weights-only 2>&1 | tail -1
run() {  # side label
    local dir=$before; [ "$1" = after ] && dir=$after
    timeout 120 "$dir/newbie" bench-pipeline --weights $w --device cuda --quiet --json "$out/load-$1-$2.json" -o /tmp/load.png > "$out/load-$1-$2.txt" 2>&1
    echo "-- $1 ($2)"; grep -E "^load|^total|denoise|peak" "$out/load-$1-$2.txt"
}
for r in warm1 warm2; do run before $r; run after $r; done
if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    run before cold
    sync; echo 3 > /proc/sys/vm/drop_caches
    run after cold
else
    echo "cold cache: /proc/sys/vm/drop_caches is not writable here; not measured"
fi
