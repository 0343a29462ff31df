#!/usr/bin/env bash
# The real-part tests of `newbie serve` that need more than `swift test`: a browser (headless
# Chromium through selenium) and schemathesis against the OpenAPI document, both on a server
# running NewBie-mini on the CPU. Proposed for .ci/run (docs/SERVER.md).
#
#   tools/server/ci-serve.sh [NEWBIE_BINARY]      (default .build/debug/newbie, built if missing)
#
# Needs: Debian chromium chromium-driver; PyPI selenium schemathesis (installed into a venv here).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-.build/debug/newbie}
[ -x "$bin" ] || swift build --product newbie
work=$(mktemp -d /tmp/newbie-serve-ci.XXXXXX)
venv=${NEWBIE_SERVE_VENV:-$work/venv}
if [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q selenium==4.* schemathesis==4.32.5
fi
# NewBie-mini (models/newbie-mini): small enough for a CPU, and its pictures mean something
model=models/newbie-mini
NEWBIE="$bin" IMAGES=3 SIZE=128 STEPS=6 tools/preview/fit-preview.sh "$model" "$work/preview-map.json"

start_server() {  # outputs-dir log [serve options] -> sets port, pid
    local out=$1 log=$2; shift 2
    "$bin" serve --model "$model" --outputs "$out" --port 0 --max-queued 8 "$@" 2>"$log" &
    pid=$!
    for _ in $(seq 1 300); do
        port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$log")
        [ -n "$port" ] && return 0
        sleep 0.1
    done
    echo "newbie serve did not start:"; cat "$log"; return 1
}

status=0
start_server "$work/browser-out" "$work/browser.log" --preview-map "$work/preview-map.json" --preview-every 2
echo "== browser test (screenshots in ${NEWBIE_SCREENSHOTS:-$work/screenshots})"
"$venv/bin/python" tools/server/browser_test.py "http://127.0.0.1:$port" "${NEWBIE_SCREENSHOTS:-$work/screenshots}" || status=1
kill "$pid"; wait "$pid" || true

# small limits: the fuzzer's schema-valid 2048x2048 jobs are refused (400, documented) instead of
# keeping the CPU busy for minutes while event streams wait for them
start_server "$work/st-out" "$work/st.log" --max-width 64 --max-height 64 --max-steps 4 --max-count 1
echo "== schemathesis: no 5xx, responses and headers match the schema"
"$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" --max-examples 25 --request-timeout 60 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    || status=1
kill "$pid"; wait "$pid" || true
exit $status
