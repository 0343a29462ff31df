#!/usr/bin/env bash
# The PyTorch rows beside tools/bench/gpu-session-g.sh (another call, the same machine kind):
# diffusers' Lumina2 transformer with NewBie's dimensions (tools/bench/torch_dit.py), bf16, batch 2,
# 256 caption tokens: eager at 1024x1024, 512x512 and 1024x1536, then torch.compile at the shapes in
# COMPILE_SHAPES (default 512x512,1024x1536; each compile takes about 70 s, so this sets the budget).
# diffusers installs from the wheel in .whl/ (--no-deps), as in gpu-session-e.sh.
#
#   tools/bench/gpu-session-g-torch.sh OUT
#
# OUT/torch-dit.txt keeps the lines that matter (one per shape and mode), OUT/pip.txt the install.
set -uo pipefail
out=$1
mkdir -p "$out"
ls .whl/*.whl > /dev/null 2>&1 && python3 -m pip install -q --no-deps .whl/*.whl > "$out/pip.txt" 2>&1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
timeout "${TORCH_SECONDS:-420}" python3 tools/bench/torch_dit.py --dtype bf16 --runs 5 --shapes 1024x1024,512x512,1024x1536 \
    --compile --compile-shapes "${COMPILE_SHAPES:-512x512,1024x1536}" > /tmp/gg-torch.txt 2>&1
echo "exit $?"
grep -E "^torch|Error|error" /tmp/gg-torch.txt | tail -12 | tee "$out/torch-dit.txt"
exit 0
