#!/usr/bin/env python3
"""One launch of each flash kernel at the DiT shape (2 x 4352 tokens, 24 query / 8 KV heads of 96,
bf16), for a profiler to look at. Builds the kernels as hopper_attn_check.py does (this checkout's
sources, NVRTC, no Swift). On the GPU machine:

    ncu --clock-control none --set full -k regex:chk_ python3 tools/bench/hopper_attn_profile.py

The kernels launched, in order: the wgmma kernel as the engine builds it (chk_wgmma_bf16_d96),
each variant of it (chk_wgmma<variant>_bf16_d96 for every variant in SCHEDULES of
hopper_attn_check.py), the mma.sync kernel (chk_mma_bf16_d96), then PyTorch's SDPA on the same
inputs (profile it with -k regex:flash|fmha).
"""
import sys
import pathlib

sys.argv = [sys.argv[0], "--quick"]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch                      # noqa: E402
import torch.nn.functional as F   # noqa: E402
import hopper_attn_check as chk   # noqa: E402

m_mma, m_wg = chk.build_modules()
torch.manual_seed(0)
B, L, Hq, Hkv, D = 2, 4352, 24, 8, 96
q = torch.randn(B, L, Hq, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(B, L, Hkv, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(B, L, Hkv, D, device="cuda", dtype=torch.bfloat16)
out = torch.empty_like(q)
chk.wgmma_launcher(m_wg, "bf16", D)(q, k, v, out)
chk.finish_or_exit("wgmma")
for name, _ in chk.SCHEDULES:
    chk.wgmma_launcher(m_wg, "bf16", D, f"wgmma{name}")(q, k, v, out)
    chk.finish_or_exit(f"wgmma{name}")
chk.mma_launcher(m_mma, "bf16", D)(q, k, v, out)
chk.finish_or_exit("mma")
F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)
torch.cuda.synchronize()
print("done")
