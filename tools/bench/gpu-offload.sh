#!/usr/bin/env bash
# --offload on a CUDA machine, in one run (issue 15 item 5; docs/MEMORY.md):
#   1. peak device memory of a whole 1024x1024 generation (28 guided steps, CFG on every step,
#      random full-size weights, bf16 compute) with and without --offload, for bf16 weights and
#      for int8 everywhere (--quantize dit=int8,gemma=int8,jina=int8): four runs;
#   2. the DiT step (batch 2, 1024x1024, bf16 compute) resident and offloaded, with bf16 and with
#      int8 weights, interleaved (ROUNDS times) so that all four see the same machine state.
#
#   tools/bench/gpu-offload.sh NEWBIE_BIN OUT_DIR
#
# NEWBIE_BIN is the static `newbie` (or newbie.xz) with NewBie_NewBieCUDA.resources/ beside it.
# Run from a checkout. Timeouts (seconds): WEIGHTS_SECONDS, PIPELINE_SECONDS, DIT_SECONDS; ROUNDS
# (default 2); MAKE_WEIGHTS=0 reuses /tmp/newbie-random; SKIP_PIPELINE=1 / SKIP_DIT=1 skip part 1 / 2
# (to split the work over two calls of a 600 s limit). A failed step does not stop the others.
# OUT_DIR/summary.txt collects the lines that matter. Success: every run exits 0; the offloaded
# pipelines' "peak" lines are <= 4 GiB on every stage; each "forward:" line says "output finite:
# yes" and each offloaded step is within the ratio predicted in docs/MEMORY.md of its resident twin.
set -uo pipefail
bin=$1 out=$2
mkdir -p "$out"
[ -f "$bin.xz" ] && xz -d -f "$bin.xz"
chmod +x "$bin"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,pcie.link.gen.current,pcie.link.width.current --format=csv | tee "$out/gpu.txt"

if [ "${MAKE_WEIGHTS:-1}" = 1 ]; then
    note "== random full-size weights"
    timeout "${WEIGHTS_SECONDS:-240}" "$bin" bench-pipeline --weights /tmp/newbie-random --weights-only > "$out/weights.txt" 2>&1
    note "weights exit $? ($(tail -1 "$out/weights.txt"))"
fi

note "== 1. whole 1024x1024 image, 28 steps, CFG: peak device memory per stage"
run_pipeline() {  # NAME QUANTIZE [--offload]
    local name=$1 q=$2; shift 2
    timeout "${PIPELINE_SECONDS:-240}" "$bin" bench-pipeline --weights /tmp/newbie-random --device cuda --precision bf16 \
        --quantize "$q" "$@" --size 1024 --steps 29 --json "$out/pipeline-$name.json" -o "/tmp/go-$name.png" > "$out/pipeline-$name.txt" 2>&1
    local rc=$?
    note "-- $name (--quantize '${q}' $*): exit $rc"
    grep -E "peak|stage|load|encode|denoise|decode|total" "$out/pipeline-$name.txt" | tail -14 | tee -a "$summary"
}
if [ "${SKIP_PIPELINE:-0}" != 1 ]; then
    run_pipeline bf16 ""
    run_pipeline bf16-offload "" --offload
    run_pipeline int8-all "dit=int8,gemma=int8,jina=int8"
    run_pipeline int8-all-offload "dit=int8,gemma=int8,jina=int8" --offload
fi

note "== 2. DiT step, batch 2, 1024x1024, bf16 compute: resident against --offload (bf16 and int8 weights)"
[ "${SKIP_DIT:-0}" = 1 ] && exit 0
for round in $(seq 1 "${ROUNDS:-2}"); do
    for q in none int8; do
        for mode in resident offload; do
            flag=""; [ $mode = offload ] && flag=--offload
            timeout "${DIT_SECONDS:-150}" "$bin" bench --device cuda --dit --dtype bf16 --quantize $q $flag > "$out/dit-$q-$mode-$round.txt" 2>&1
            note "-- $q $mode, round $round: exit $?"
            grep -E "forward:|guided step" "$out/dit-$q-$mode-$round.txt" | tee -a "$summary"
        done
    done
done
exit 0
