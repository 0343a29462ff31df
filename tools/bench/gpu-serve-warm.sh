#!/usr/bin/env bash
# Warm server request against the CLI's cold run, at 1024x1024 on CUDA (issue 17: "no load time in
# it"). On random full-size weights (`bench-pipeline --weights /tmp/newbie-random --weights-only`):
#
#   1. cold: `newbie generate` (a new process: loads every model, then generates), timed whole;
#   2. warm: `newbie serve` started once; a first request warms it (CUDA kernels compiled, memory
#      pools grown), then a second request is timed from POST /v1/jobs to the PNG downloaded.
# Both are printed, with the server's own load and run times from its log. Run it twice to see the
# spread; the order is cold then warm, so the file cache holds the weights for both.
#
#   tools/bench/gpu-serve-warm.sh BIN OUT_DIR
#
# BIN is a release `newbie` (NewBie_NewBieCUDA.resources/ beside it). Needs curl. Environment:
# DEVICE (cuda), STEPS (official default when unset), WEIGHTS (/tmp/newbie-random), PORT (8391),
# SIZE (1024), MAKE_WEIGHTS (1; 0 uses WEIGHTS as it is: a dry run on the tiny model is
# `MAKE_WEIGHTS=0 WEIGHTS=<newbie make-tiny-model dir> DEVICE=cpu SIZE=64 STEPS=4`).
set -euo pipefail
bin=$1 out=$2
device=${DEVICE:-cuda}
weights=${WEIGHTS:-/tmp/newbie-random}
port=${PORT:-8391}
size=${SIZE:-1024}
prompt="1girl, red eyes, school uniform, cherry blossoms"
steps_json="" steps_cli=()
if [ -n "${STEPS:-}" ]; then steps_json=", \"steps\": $STEPS"; steps_cli=(--steps "$STEPS"); fi
mkdir -p "$out"
now() { date +%s.%N; }
secs() { echo "$1 $2" | awk '{printf "%.2f", $2 - $1}'; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv | tee "$out/gpu.txt"
if [ "${MAKE_WEIGHTS:-1}" = 1 ]; then
    echo "== random full-size weights in $weights"
    timeout "${WEIGHTS_SECONDS:-300}" "$bin" bench-pipeline --weights "$weights" --weights-only 2>&1 | tail -2
fi

echo "== cold: newbie generate ${size}x${size} (new process, loads included)"
t0=$(now)
"$bin" generate --model "$weights" --device "$device" "$prompt" --width "$size" --height "$size" ${steps_cli[@]+"${steps_cli[@]}"} --seed 7 \
    -o "$out/cold.png" > "$out/cold.log" 2>&1
t1=$(now)
cold=$(secs "$t0" "$t1")
echo "cold generate: $cold s"

echo "== warm: newbie serve, second request"
rm -rf "$out/serve"
"$bin" serve --model "$weights" --device "$device" --outputs "$out/serve" --port "$port" --max-width "$size" --max-height "$size" \
    > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    grep -q "listening on" "$out/serve.log" && break
    kill -0 $server 2>/dev/null || { cat "$out/serve.log"; echo "serve stopped"; exit 1; }
    sleep 0.5
done
grep "models loaded" "$out/serve.log" || true
base="http://127.0.0.1:$port"

# POST a job, follow its events until the stream closes (done/error), fetch the PNG; prints seconds
request() {
    local name=$1 seed=$2 t0 id t1
    t0=$(now)
    id=$(curl -sf -XPOST "$base/v1/jobs" -H 'Content-Type: application/json' \
        -d "{\"prompt\": \"$prompt\", \"width\": $size, \"height\": $size, \"seed\": $seed$steps_json}" |
        sed -n 's/.*"id" *: *"\([0-9a-f]\{32\}\)".*/\1/p')
    [ -n "$id" ] || { echo "submit failed" >&2; return 1; }
    curl -sfN "$base/v1/jobs/$id/events" > "$out/$name-events.txt"
    grep -q "^event: done" "$out/$name-events.txt" || { echo "job $id did not finish:" >&2; tail -3 "$out/$name-events.txt" >&2; return 1; }
    curl -sf "$base/v1/jobs/$id/images/0.png" -o "$out/$name.png"
    t1=$(now)
    secs "$t0" "$t1"
}
first=$(request warmup 7)
echo "first request (warms the server): $first s"
second=$(request warm 8)
echo "second request, request to PNG: $second s"

echo "== result"
printf "cold CLI generate %sx%s: %s s\nwarm server request %sx%s: %s s\nratio cold/warm: %s\n" "$size" "$size" "$cold" "$size" "$size" "$second" \
    "$(echo "$cold $second" | awk '{printf "%.2f", $1 / $2}')" | tee "$out/result.txt"
