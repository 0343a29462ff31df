"""PyTorch baseline for the full-size DiT step: diffusers Lumina2Transformer2DModel with
NewBie's dimensions, random weights, batch 2 (cond + uncond), --cap caption tokens followed by the
image's 2x2 patches (the token layout `newbie bench --device cuda --dit` builds), bf16 (or --dtype),
eager and optionally torch.compile. Timed with CUDA events, median of --runs. Runs on the GPU
machine: diffusers installs there from a wheel (--no-deps).

    python3 tools/bench/torch_dit.py --shapes 512x512,1024x1536 --dtype bf16 [--compile]

--shapes takes WIDTHxHEIGHT in pixels (--size N is the square NxN). With --compile each shape is
compiled once (dynamic=False: a static graph per shape, about 70 s each on an H200), so the list
sets the budget; --compile-shapes restricts compiling to some of them (eager still runs for all).
"""
import argparse
import inspect
import time

import torch
from diffusers import Lumina2Transformer2DModel

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=None, help="square image side in pixels (same as --shapes NxN)")
ap.add_argument("--shapes", default=None, help="comma-separated WIDTHxHEIGHT in pixels, e.g. 512x512,1024x1536")
ap.add_argument("--compile-shapes", default=None, help="the shapes to compile (default: all of --shapes)")
ap.add_argument("--cap", type=int, default=256)
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--compile", action="store_true")
ap.add_argument("--device", default="cuda", help="cuda; cpu only to check the script itself (wall clock, with --tiny)")
ap.add_argument("--tiny", action="store_true", help="a 2-head, 1-layer model: only to check the script itself on a CPU")
args = ap.parse_args()
dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 baseline uses TF32, as PyTorch users run it
torch.backends.cudnn.allow_tf32 = True

kw = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=36, num_refiner_layers=2,
          num_attention_heads=24, num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5,
          scaling_factor=1.0, axes_dim_rope=(32, 32, 32), axes_lens=(1024, 512, 512), cap_feat_dim=2560)
if args.tiny:
    kw.update(hidden_size=192, num_layers=1, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1)
if "pooled_projection_dim" in inspect.signature(Lumina2Transformer2DModel.__init__).parameters:
    kw["pooled_projection_dim"] = 1024
with torch.device(args.device):
    model = Lumina2Transformer2DModel(**kw).to(dt).eval()
params = sum(p.numel() for p in model.parameters())


def parse_shapes(text):
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        w, _, h = item.partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) % 16 or int(h) % 16 or int(w) <= 0 or int(h) <= 0:
            ap.error(f"shape {item!r}: give WIDTHxHEIGHT in pixels, multiples of 16")
        out.append((int(w), int(h)))
    if not out:
        ap.error("no shapes given")
    return out


if args.shapes and args.size:
    ap.error("give --shapes or --size, not both")
shapes = parse_shapes(args.shapes) if args.shapes else [(args.size or 1024, args.size or 1024)]
compile_shapes = parse_shapes(args.compile_shapes) if args.compile_shapes else shapes
for s in compile_shapes:
    if s not in shapes:
        ap.error(f"--compile-shapes {s[0]}x{s[1]} is not among --shapes")

cap = torch.randn(2, args.cap, 2560, device=args.device, dtype=dt)
mask = torch.ones(2, args.cap, dtype=torch.bool, device=args.device)
t = torch.tensor([0.3, 0.3], device=args.device, dtype=dt)
extra = {}
if "pooled_projection_dim" in kw:
    extra["pooled_projections"] = torch.randn(2, 1024, device=args.device, dtype=dt)


cuda = args.device.startswith("cuda")


def bench(fn):
    fn(); fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(args.runs):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter(); fn(); times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return times[len(times) // 2]


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")


def reset_peak():
    if cuda:
        torch.cuda.reset_peak_memory_stats()


def make_step(m, x):
    def step():
        with torch.no_grad():
            return m(x, t, cap, mask, **extra, return_dict=False)[0]
    return step


inputs = {}
for (w, h) in shapes:
    # [B, C, H/8, W/8]: the model patchifies to (H/16)*(W/16) image tokens after the caption
    x = torch.randn(2, 16, h // 8, w // 8, device=args.device, dtype=dt)
    inputs[(w, h)] = x
    reset_peak()
    ms = bench(make_step(model, x))
    peak = peak_gib()
    print(f"torch eager DiT {params / 1e9:.3f}B params, batch 2, {w}x{h} ({(h // 16) * (w // 16)} image tokens), "
          f"cap {args.cap}, {args.dtype}: {ms:.1f} ms, peak {peak:.2f} GiB", flush=True)

if args.compile:
    compiled = torch.compile(model, dynamic=False)
    for (w, h) in compile_shapes:
        step = make_step(compiled, inputs[(w, h)])
        t0 = time.time()
        step()
        if cuda:
            torch.cuda.synchronize()
        ct = time.time() - t0
        reset_peak()
        ms = bench(step)
        peak = peak_gib()
        print(f"torch.compile DiT {w}x{h} {args.dtype}: {ms:.1f} ms (compile {ct:.0f} s), peak {peak:.2f} GiB", flush=True)
