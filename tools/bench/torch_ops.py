"""PyTorch baseline for the op-level CUDA benchmark (`newbie bench --device cuda`): the DiT's
linear shapes and its attention at 1024x1024, batch 2 (8704 tokens), timed with CUDA events.
Runs on the GPU machine with its PyTorch (2.11 there): python3 tools/bench/torch_ops.py"""
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False


def bench(fn, runs=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}")
tokens = 2 * 4352
for dt in (torch.bfloat16, torch.float16, torch.float32):
    for k, n, label in [(2304, 3840, "qkv"), (2304, 2304, "out"), (2304, 9216, "w1/w3"), (9216, 2304, "w2")]:
        x = torch.randn(tokens, k, device="cuda", dtype=dt)
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        ms = bench(lambda: F.linear(x, w))
        print(f"torch linear {label} {tokens}x{k} -> {n} {str(dt)[6:]}: {ms:.3f} ms, {2 * tokens * n * k / ms / 1e9:.1f} TFLOP/s")
    if dt == torch.float32:
        continue
    q = torch.randn(2, 24, 4352, 96, device="cuda", dtype=dt)
    kk = torch.randn(2, 8, 4352, 96, device="cuda", dtype=dt)
    v = torch.randn(2, 8, 4352, 96, device="cuda", dtype=dt)
    ms = bench(lambda: F.scaled_dot_product_attention(q, kk, v, enable_gqa=True))
    flops = 2 * 4.0 * 4352 * 4352 * 96 * 24
    print(f"torch sdpa (gqa) 2x4352x24h(8kv)x96 {str(dt)[6:]}: {ms:.3f} ms, {flops / ms / 1e9:.1f} TFLOP/s")
    ke, ve = kk.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
    ms = bench(lambda: F.scaled_dot_product_attention(q, ke, ve))
    print(f"torch sdpa (kv expanded) {str(dt)[6:]}: {ms:.3f} ms, {flops / ms / 1e9:.1f} TFLOP/s")
