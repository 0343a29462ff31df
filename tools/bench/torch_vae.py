"""PyTorch baseline for the FLUX VAE decode: diffusers AutoencoderKL with the FLUX.1-dev
configuration, random weights, one 1024x1024 image (latent [1, 16, 128, 128]), bf16 (or --dtype),
timed with CUDA events, median of --runs. Runs on the GPU machine (diffusers from a wheel).

    python3 tools/bench/torch_vae.py --size 1024 --dtype bf16
"""
import argparse

import torch
from diffusers import AutoencoderKL

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--runs", type=int, default=5)
args = ap.parse_args()
dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
with torch.device("cuda"):
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False).to(dt).eval()
z = torch.randn(1, 16, args.size // 8, args.size // 8, device="cuda", dtype=dt)


def step():
    with torch.no_grad():
        return vae.decode(z / 0.3611 + 0.1159).sample


step(); step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(args.runs):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); step(); b.record(); b.synchronize()
    times.append(a.elapsed_time(b))
times.sort()
print(f"torch VAE decode {args.size}x{args.size} {args.dtype}: {times[len(times) // 2]:.1f} ms (median of {args.runs}), "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
