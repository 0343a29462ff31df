#!/usr/bin/env bash
# Fuzzes NewBie's parsers with libFuzzer: builds the library targets with coverage and
# AddressSanitizer (swiftc -sanitize=fuzzer,address) in .build-fuzz/, links tools/fuzz/FuzzMain.swift
# against them, and runs each target for a fixed number of executions from seed corpora made from
# the committed fixtures.
#
#   tools/fuzz/run.sh [RUNS] [TARGET...]      RUNS default 20000; targets default: all
#
# Targets: safetensors gguf bpe unigram xml promptfile build png. Findings (crash-*, timeout-*,
# oom-* inputs) are kept in .build-fuzz/findings/TARGET/; the script exits 1 when any target found one.
# Needs: a Swift toolchain whose swiftc supports -sanitize=fuzzer (swift.org Linux toolchains),
# libpng-dev, python3 (to cut the seed tokenizers down).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-20000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors gguf bpe unigram xml promptfile build png)
B=.build-fuzz
FLAGS=(-Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)

echo "== building the libraries with fuzzer and address sanitizer instrumentation"
swift build --build-path "$B" --target NewBiePipeline "${FLAGS[@]}" 2>&1 | grep -E "error|warning: unre|Compiling|Build" | grep -v "^\[" || true
D="$B/debug"
OBJS=$(find "$D/" -name '*.o' \( -path '*/NewBieTensor.build/*' -o -path '*/CNewBieCPU.build/*' -o -path '*/NewBieWeights.build/*' \
    -o -path '*/NewBieText.build/*' -o -path '*/NewBieDiffusion.build/*' -o -path '*/NewBieImage.build/*' -o -path '*/NewBieCUDA.build/*' \
    -o -path '*/NewBiePipeline.build/*' -o -path '*/Yams.build/*' -o -path '*/CYaml.build/*' \))
MAPS=()
for m in "$D"/*.build/module.modulemap; do MAPS+=(-Xcc "-fmodule-map-file=$m"); done
echo "== linking the fuzz driver"
swiftc -sanitize=fuzzer,address -parse-as-library -module-name NewBieFuzz -I "$D/Modules" "${MAPS[@]}" \
    -Xcc -I -Xcc Sources/CNewBieCPU/include -I Sources/CPNG -Xcc -fmodule-map-file=Sources/CPNG/module.modulemap \
    tools/fuzz/FuzzMain.swift $OBJS -lpng16 -lz -ldl -o "$B/newbie-fuzz" 2>&1 | grep -v "Cannot export local symbol" || true
test -x "$B/newbie-fuzz"

echo "== seed corpora"
S="$B/seeds"
rm -rf "$S"; mkdir -p "$S"/{safetensors,gguf,bpe,unigram,xml,promptfile,build,png}
for f in Tests/Fixtures/safetensors/example.safetensors Tests/Fixtures/jina/tower_cases.safetensors Tests/Fixtures/gguf/quants_expected.safetensors; do
    [ -f "$f" ] && cp "$f" "$S/safetensors/"
done
cp Tests/Fixtures/gguf/quants.gguf "$S/gguf/"
python3 - "$S" <<'PY'
import json, sys, os
s = sys.argv[1]
# a small Gemma tokenizer.json and a small XLM-R one (the first pieces of the committed ones)
g = json.load(open("Tests/Fixtures/gemma/small_tokenizer.json"))
json.dump(g, open(os.path.join(s, "bpe", "small.json"), "w"))
j = json.load(open("Tests/Fixtures/jina/tokenizer.json"))
j["model"]["vocab"] = j["model"]["vocab"][:300]
j["added_tokens"] = [t for t in j.get("added_tokens", []) if t["id"] < 300]
json.dump(j, open(os.path.join(s, "unigram", "small.json"), "w"))
PY
printf '<character_1>\n<n>miku</n>\n<gender>1girl</gender>\n<appearance>long hair</appearance>\n</character_1>\n<general_tags>\n<style>anime</style>\n</general_tags>\n' > "$S/xml/a.xml"
printf '<image><character_1><n>$character_1$</n></character_1><caption>hi</caption></image>' > "$S/xml/b.xml"
printf '{"prompt": "1girl", "seed": 3}\n{"prompt": "<character_1></character_1>", "negative_prompt": "bad"}\n' > "$S/promptfile/a.jsonl"
printf '1girl, red eyes\n\n1boy\n' > "$S/promptfile/b.txt"
printf '{"characters": [{"name": "miku", "gender": "1girl", "appearance": ["long hair", "twintails"]}], "general_tags": {"style": "anime"}}' > "$S/build/a.json"
printf 'characters:\n  - name: miku\n    gender: 1girl\ngeneral_tags:\n  style: anime\n' > "$S/build/b.yaml"
python3 - "$S/png" <<'PY'
import sys, zlib, struct
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
def png(w, h, ct, depth, row):
    raw = b"".join(b"\0" + row for _ in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ct, 0, 0, 0)) + chunk(b"tEXt", b"newbie:prompt\x001girl") + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1] + "/rgb.png", "wb").write(png(4, 3, 2, 8, bytes(range(12))))
open(sys.argv[1] + "/grey16.png", "wb").write(png(3, 2, 0, 16, bytes(6)))
PY

export NEWBIE_FUZZ_DIR=${NEWBIE_FUZZ_DIR:-/tmp}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$B/corpus/$t" "$B/findings/$t"
    echo "== $t: $RUNS executions"
    log="$B/findings/$t/log.txt"
    if NEWBIE_FUZZ_TARGET=$t "$B/newbie-fuzz" -runs="$RUNS" -max_len=65536 -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix="$B/findings/$t/" "$B/corpus/$t" "$S/$t" >"$log" 2>&1; then
        grep -E "^Done|stat::number_of_executed_units" "$log" | tail -1
    else
        echo "FINDING in $t (see $log and $B/findings/$t/)"; tail -30 "$log"; status=1
    fi
done
exit $status
