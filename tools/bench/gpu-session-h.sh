#!/usr/bin/env bash
# One GPU call for this session's kernels, most important first, each step under its own timeout:
#   1. attn.txt: hopper_attn_check.py (every flash_hopper.cu variant on every case, timed at the DiT
#      shape); the fastest variant that passed everything becomes the engine's NB_FLASH_SCHEDULE in
#      the carried kernel resources (pick_flash_variant.py; the free schedule if none did);
#   2. gpu-check.txt: every gpu-check row with that kernel (fp8 rows, step-cache rows, GGUF-at-load,
#      the 16-bit attention products are new);
#   3. kernels.txt: gpu_quant_kernels.py (row e4m3 kernels and cuBLASLt outer-vector scaling vs torch);
#   4. dit.txt: the DiT, batch 2, bf16 compute: forward and guided step at 1024x1024, 512x512 and
#      1024x1536, 28-step samplings at 1024x1024 uncached and with the step cache at threshold 0 (the
#      check's cost) and a huge threshold (the speed of a hit); then fp8 weights at 1024x1024;
#   5. vae.txt: the VAE decode at 1024x1024 and 2048x2048 (bf16) with its kernel profile.
#   tools/bench/gpu-session-h.sh AFTER_DIR OUT     (AFTER_DIR: newbie or newbie.xz + NewBie_NewBieCUDA.resources)
set -uo pipefail
after=$1 out=$2
mkdir -p "$out"
[ -f "$after/newbie.xz" ] && xz -d -f "$after/newbie.xz"; chmod +x "$after/newbie"
b=$after/newbie
res=$after/NewBie_NewBieCUDA.resources/Kernels/flash_hopper.cu
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
echo "== 1. attention variants"
timeout "${ATTN_SECONDS:-200}" python3 tools/bench/hopper_attn_check.py > "$out/attn.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|^DiT|^d128|PASS|HANG" "$out/attn.txt" | cut -c1-900
choice=$(python3 tools/bench/pick_flash_variant.py "$out/attn.txt")
sed -i "s/^#define NB_FLASH_SCHEDULE .*/#define NB_FLASH_SCHEDULE ($choice)/" "$res"
echo "engine variant: $(grep '^#define NB_FLASH_SCHEDULE' "$res")"
echo "== 2. gpu-check"
stdbuf -oL -eL timeout "${CHECK_SECONDS:-170}" scripts/gpu-check "$b" > "$out/gpu-check.txt" 2>&1
echo "exit $? ($(( $(date +%s) - t0 )) s)"
grep -E "FAIL|of [0-9]+ |did not|note:" "$out/gpu-check.txt" | tail -30
echo "== 3. gpu_quant_kernels.py"
timeout 60 python3 tools/bench/gpu_quant_kernels.py > "$out/kernels.txt" 2>&1
echo "exit $?"; grep -E "FAIL|NOTE|outer-vector|all checks" "$out/kernels.txt" | head -12
echo "== 4. DiT: bf16 at three shapes and 28-step samplings with the step cache, then fp8 ($(( $(date +%s) - t0 )) s)"
: > "$out/dit.txt"
timeout "${DIT_SECONDS:-150}" "$b" bench --device cuda --dit --dtype bf16 --shapes 1024x1024,512x512,1024x1536 \
    --step-cache-runs graphs,eager,teacache:0,fbcache:0,teacache:1e9,fbcache:1e9 > /tmp/dit.txt 2>&1
echo "-- bf16: exit $?" | tee -a "$out/dit.txt"; cat /tmp/dit.txt >> "$out/dit.txt"
grep -E "NewBie DiT|forward:|guided step|teacache|fbcache|graphs|eager|flash|rror" /tmp/dit.txt | head -24
timeout 50 "$b" bench --device cuda --dit --dtype bf16 --quantize fp8 > /tmp/dit.txt 2>&1
echo "-- fp8: exit $?" | tee -a "$out/dit.txt"; cat /tmp/dit.txt >> "$out/dit.txt"
grep -E "forward:|guided step|note:|rror" /tmp/dit.txt | head -8
echo "== 5. VAE ($(( $(date +%s) - t0 )) s)"
[ -d /tmp/newbie-vae ] || timeout 60 "$b" bench-pipeline --weights /tmp/newbie-random --weights-only > /dev/null 2>&1
: > "$out/vae.txt"
for s in 1024 2048; do
    timeout 60 "$b" bench --device cuda --vae /tmp/newbie-random/vae --size $s >> "$out/vae.txt" 2>&1
    echo "-- $s exit $?"; tail -1 "$out/vae.txt"
done
grep -E "ms .*launches" "$out/vae.txt" | head -30
echo "session h: $(( $(date +%s) - t0 )) s"
exit 0
