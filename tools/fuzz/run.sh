#!/usr/bin/env bash
# Fuzzes NewBie's parsers with libFuzzer: builds the library targets with coverage and
# AddressSanitizer (swiftc -sanitize=fuzzer,address) in .build-fuzz/, links tools/fuzz/FuzzMain.swift
# against them, and runs each target for a fixed number of executions from seed corpora made from
# the committed fixtures.
#
#   tools/fuzz/run.sh [RUNS] [TARGET...]      RUNS default 20000; targets default: all
#
# Environment: FUZZ_SECONDS (a time limit per target as well), FUZZ_CONFIG (release, the default,
# or debug), FUZZ_SKIP_BUILD=1 (reuse the last build, e.g. for a second run in parallel).
# Each target's count of executions is printed and kept in .build-fuzz/findings/TARGET/log.txt.
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
CONFIG=${FUZZ_CONFIG:-release}
FLAGS=(-Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)
D="$B/$CONFIG"
OPT=(); [ "$CONFIG" = release ] && OPT=(-O)

# a toolchain without libFuzzer support: say so and stop (not a failure of the code)
probe=$(mktemp -d)
echo '@_cdecl("LLVMFuzzerTestOneInput") public func f(_ p: UnsafeRawPointer?, _ n: Int) -> CInt { 0 }' > "$probe/p.swift"
if ! swiftc -sanitize=fuzzer -parse-as-library "$probe/p.swift" -o "$probe/p" >/dev/null 2>&1; then
    rm -rf "$probe"; echo "tools/fuzz/run.sh: this swiftc has no -sanitize=fuzzer; fuzzing skipped"; exit 0
fi
rm -rf "$probe"

if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
echo "== building the libraries ($CONFIG) with fuzzer and address sanitizer instrumentation"
swift build -c "$CONFIG" --build-path "$B" --target NewBiePipeline "${FLAGS[@]}" 2>&1 | grep -E "error|Build" || true
OBJS=$(find "$D/" -name '*.o' \( -path '*/NewBieTensor.build/*' -o -path '*/CNewBieCPU.build/*' -o -path '*/NewBieWeights.build/*' \
    -o -path '*/NewBieText.build/*' -o -path '*/NewBieDiffusion.build/*' -o -path '*/NewBieImage.build/*' -o -path '*/NewBieCUDA.build/*' \
    -o -path '*/NewBiePipeline.build/*' -o -path '*/Yams.build/*' -o -path '*/CYaml.build/*' \))
MAPS=()
for m in "$D"/*.build/module.modulemap; do MAPS+=(-Xcc "-fmodule-map-file=$m"); done
echo "== linking the fuzz driver"
swiftc "${OPT[@]}" -sanitize=fuzzer,address -parse-as-library -module-name NewBieFuzz -I "$D/Modules" "${MAPS[@]}" \
    -Xcc -I -Xcc Sources/CNewBieCPU/include -I Sources/CPNG -Xcc -fmodule-map-file=Sources/CPNG/module.modulemap \
    tools/fuzz/FuzzMain.swift $OBJS -lpng16 -lz -ldl -o "$B/newbie-fuzz" 2>&1 | grep -v "Cannot export local symbol" || true
test -x "$B/newbie-fuzz"
fi

echo "== seed corpora"
S="$B/seeds"
rm -rf "$S"; mkdir -p "$S"/{safetensors,gguf,bpe,unigram,xml,promptfile,build,png}
cp Tests/Fixtures/jina/tower_cases.safetensors "$S/safetensors/"
cp Tests/Fixtures/gguf/quants.gguf "$S/gguf/"
python3 - "$S" <<'PY'
import json, sys, os, struct, zlib
s = sys.argv[1]
# small safetensors files: several dtypes, metadata, an empty tensor
def st(name, tensors, meta=None):
    header, data, off = {}, b"", 0
    if meta: header["__metadata__"] = meta
    for n, (dt, shape, raw) in tensors.items():
        header[n] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw; off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(os.path.join(s, "safetensors", name), "wb").write(struct.pack("<Q", len(h)) + h + data)
st("a.safetensors", {"w": ("F32", [2, 3], struct.pack("<6f", *range(6))), "b": ("BF16", [4], bytes(8)),
                     "h": ("F16", [2, 2], bytes(8)), "i": ("I64", [1], bytes(8)), "e": ("F32", [0, 4], b"")}, {"format": "pt"})
st("b.safetensors", {"x": ("U8", [3], b"abc"), "y": ("I32", [1, 1], bytes(4)), "z": ("BOOL", [2], b"\x00\x01")})
# a small Gemma BPE tokenizer.json and a small XLM-R Unigram one (cut from the committed ones)
g = json.load(open("Tests/Fixtures/gemma/small_tokenizer.json"))
v = g["model"]["vocab"]
if isinstance(v, dict):
    keep = dict(sorted(v.items(), key=lambda kv: kv[1])[:120]); g["model"]["vocab"] = keep
    g["model"]["merges"] = [m for m in g["model"].get("merges", []) if all(p in keep for p in (m.split(" ") if isinstance(m, str) else m)) ][:60]
g["added_tokens"] = [t for t in g.get("added_tokens", []) if t["id"] < 120]
json.dump(g, open(os.path.join(s, "bpe", "small.json"), "w"))
j = json.load(open("Tests/Fixtures/jina/tokenizer.json"))
j["model"]["vocab"] = j["model"]["vocab"][:120]
j["added_tokens"] = [t for t in j.get("added_tokens", []) if t["id"] < 120]
j["normalizer"] = None
json.dump(j, open(os.path.join(s, "unigram", "small.json"), "w"))
# PNG: RGB 8-bit and grey 16-bit, with a text chunk
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
def png(w, h, ct, depth, row):
    raw = b"".join(b"\0" + row for _ in range(h))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ct, 0, 0, 0)) + chunk(b"tEXt", b"newbie:prompt\x001girl") + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(os.path.join(s, "png", "rgb.png"), "wb").write(png(4, 3, 2, 8, bytes(range(12))))
open(os.path.join(s, "png", "grey16.png"), "wb").write(png(3, 2, 0, 16, bytes(6)))
PY
printf '<character_1>\n<n>miku</n>\n<gender>1girl</gender>\n<appearance>long hair</appearance>\n</character_1>\n<general_tags>\n<style>anime</style>\n</general_tags>\n' > "$S/xml/a.xml"
printf '<image><character_1><n>$character_1$</n></character_1><caption>hi</caption></image>' > "$S/xml/b.xml"
printf '{"prompt": "1girl", "seed": 3}\n{"prompt": "<character_1></character_1>", "negative_prompt": "bad"}\n' > "$S/promptfile/a.jsonl"
printf '1girl, red eyes\n\n1boy\n' > "$S/promptfile/b.txt"
printf '{"characters": [{"name": "miku", "gender": "1girl", "appearance": ["long hair", "twintails"]}], "general_tags": {"style": "anime"}}' > "$S/build/a.json"
printf 'characters:\n  - name: miku\n    gender: 1girl\ngeneral_tags:\n  style: anime\n' > "$S/build/b.yaml"

export NEWBIE_FUZZ_DIR=${NEWBIE_FUZZ_DIR:-$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )}
TIME=(); [ -n "${FUZZ_SECONDS:-}" ] && TIME=(-max_total_time="$FUZZ_SECONDS")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$B/corpus/$t" "$B/findings/$t"
    echo "== $t: $RUNS executions"
    log="$B/findings/$t/log.txt"
    case $t in safetensors|gguf|bpe|unigram|png) len=16384 ;; *) len=4096 ;; esac
    if NEWBIE_FUZZ_TARGET=$t "$B/newbie-fuzz" -runs="$RUNS" "${TIME[@]}" -max_len=$len -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix="$B/findings/$t/" "$B/corpus/$t" "$S/$t" >"$log" 2>&1; then
        grep -E "^Done" "$log" | tail -1
    else
        echo "FINDING in $t (see $log and $B/findings/$t/)"; tail -30 "$log"; status=1
    fi
done
exit $status
