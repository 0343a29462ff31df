# Sourced by the GPU session scripts: a whole-call time budget shared by their steps.
# Set t0=$(date +%s) and BUDGET (seconds) before use.
#   allow SECONDS   -> the seconds a step may run: its own limit or what is left ("" = skip)
#   run SECONDS CMD -> CMD under `timeout`, or a note when the budget is spent (exit 124)
allow() {
    local left=$(( BUDGET - ($(date +%s) - t0) ))
    if [ $left -lt 20 ]; then echo ""; elif [ $left -lt $1 ]; then echo $left; else echo $1; fi
}
run() {
    local s; s=$(allow "$1"); shift
    if [ -z "$s" ]; then echo "skipped (budget spent): $*" | head -c 200; echo; return 124; fi
    timeout "$s" "$@"
}
