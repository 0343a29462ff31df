# Sourced by the GPU session scripts after `set -uo pipefail` and BUDGET (the call's seconds):
#   t0 and the step budget (budget.sh: allow, run); $after ($1, the folder with newbie or newbie.xz
#   and NewBie_NewBieCUDA.resources), $out ($2, created), $b (the unpacked binary), $w (the random
#   full-size weights' folder); prints the GPU's clocks and installs diffusers from .whl/ in the
#   background (for tools/bench/torch_dit.py).
t0=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/budget.sh"
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie w=/tmp/newbie-random
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
ls .whl/*.whl > /dev/null 2>&1 && (python3 -m pip install -q --no-deps .whl/*.whl > /tmp/pip.txt 2>&1 &)
