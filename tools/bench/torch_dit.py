"""PyTorch baseline for the full-size DiT step: diffusers Lumina2Transformer2DModel with
NewBie's dimensions, random weights, batch 2 (cond + uncond), a 1024x1024 (or --size) image and
--cap caption tokens, bf16 (or --dtype), eager and optionally torch.compile. Timed with CUDA events,
median of --runs. Runs on the GPU machine: diffusers installs there from a wheel (--no-deps).

    python3 tools/bench/torch_dit.py --size 1024 --dtype bf16 [--compile]
"""
import argparse
import inspect
import time

import torch
from diffusers import Lumina2Transformer2DModel

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--cap", type=int, default=256)
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--compile", action="store_true")
args = ap.parse_args()
dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 baseline uses TF32, as PyTorch users run it
torch.backends.cudnn.allow_tf32 = True

kw = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=36, num_refiner_layers=2,
          num_attention_heads=24, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5,
          scaling_factor=1.0, axes_dim_rope=(32, 32, 32), axes_lens=(1024, 512, 512), cap_feat_dim=2560)
if "pooled_projection_dim" in inspect.signature(Lumina2Transformer2DModel.__init__).parameters:
    kw["pooled_projection_dim"] = 1024
with torch.device("cuda"):
    model = Lumina2Transformer2DModel(**kw).to(dt).eval()
params = sum(p.numel() for p in model.parameters())
lat = args.size // 8
x = torch.randn(2, 16, lat, lat, device="cuda", dtype=dt)
t = torch.tensor([0.3, 0.3], device="cuda", dtype=dt)
cap = torch.randn(2, args.cap, 2560, device="cuda", dtype=dt)
mask = torch.ones(2, args.cap, dtype=torch.bool, device="cuda")
extra = {}
if "pooled_projection_dim" in kw:
    extra["pooled_projections"] = torch.randn(2, 1024, device="cuda", dtype=dt)


def step():
    with torch.no_grad():
        return model(x, t, cap, mask, **extra, return_dict=False)[0]


def bench(fn):
    fn(); fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


torch.cuda.reset_peak_memory_stats()
ms = bench(step)
peak = torch.cuda.max_memory_allocated() / 2**30
print(f"torch eager DiT {params / 1e9:.3f}B params, batch 2, {args.size}x{args.size}, cap {args.cap}, {args.dtype}: "
      f"{ms:.1f} ms, peak {peak:.2f} GiB", flush=True)
if args.compile:
    t0 = time.time()
    model = torch.compile(model)
    step(); torch.cuda.synchronize()
    ct = time.time() - t0
    ms = bench(step)
    print(f"torch.compile DiT {args.size}x{args.size} {args.dtype}: {ms:.1f} ms (compile {ct:.0f} s)", flush=True)
