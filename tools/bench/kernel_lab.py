"""Kernel lab for the GPU machine: compiles NewBie's CUDA sources with CuPy's NVRTC (the same
compiler and options as the engine), runs single kernels on DiT-sized inputs against PyTorch in
the same process, and prints accuracy and CUDA-event times. Used to iterate on kernels without a
Swift toolchain on the GPU machine.

    python3 tools/bench/kernel_lab.py [--old-flash FILE] [--old-ops FILE] [--only flash|fused]
"""
import argparse
import numpy as np
import cupy as cp
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--flash", default="Sources/NewBieCUDA/Kernels/flash.cu")
ap.add_argument("--old-flash")
ap.add_argument("--old-ops")
ap.add_argument("--only")
ap.add_argument("--variants", nargs="*", default=[], help="more flash sources to time (bf16, D 96)")
ap.add_argument("--sass", help="write the SASS of each flash source's bf16 d96 w4 kernel and an opcode histogram to this folder")
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("--min-blocks", type=int, default=0, help="__launch_bounds__ minimum blocks per SM for the 4-warp kernels")
ap.add_argument("--ncu-once", action="store_true", help="one launch of the new flash kernel (for ncu)")
args = ap.parse_args()
# the kernel sources include the shared "common.cuh" from their own folder
OPTS = ("--gpu-architecture=sm_90", "--std=c++17", "-default-device", "--fmad=true", "-lineinfo",
        "--include-path=Sources/NewBieCUDA/Kernels")

FLASH_WRAP = """
#define LAB(name, D, W, BF) extern "C" __global__ void LAB_LB(W) name(const u16* q, const u16* k, const u16* v, \
    const float* mask, const float* bias, u16* out, i64 B, i64 Lq, i64 Lk, i64 Hq, i64 Hkv, float scale, int causal, int window, \
    int hasMask, int hasBias, i64 biasB, i64 biasH) { FlashParams p; p.B = B; p.Lq = Lq; p.Lk = Lk; p.Hq = Hq; p.Hkv = Hkv; \
    p.scale = scale; p.causal = causal; p.window = window; p.hasMask = hasMask; p.hasBias = hasBias; p.pad = 0; \
    p.biasB = biasB; p.biasH = biasH; flash_forward<D, W, BF>(q, k, v, mask, bias, out, p); }
""" + "".join(f"LAB(lab_{t}_d{d}_w{w}, {d}, {w}, {'true' if t == 'bf16' else 'false'})\n"
              for t in ("bf16", "f16") for d in (64, 96, 128) for w in (4, 8))


def lb_define(minb):
    if minb > 0:
        return f"#define LAB_LB(W) __launch_bounds__(32 * W, W == 4 ? {minb} : 1)\n"
    return "#define LAB_LB(W) __launch_bounds__(32 * W)\n"


def module(path, wrap="", minb=None):
    src = lb_define(args.min_blocks if minb is None else minb) + open(path).read()
    src = src.replace('extern "C" __global__ void __launch_bounds__(32 * W) name(', 'static __device__ void name##_unused(') if wrap else src
    return cp.RawModule(code=src + wrap, options=OPTS)


def timeit(fn, runs=args.runs):
    fn(); fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(runs):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b))
    ts.sort()
    return ts[len(ts) // 2]


def rel(a, b):
    a = a.float(); b = b.float()
    d = torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)
    return float(d) if torch.isfinite(d) else float("nan")


def ptr(t):
    return t.data_ptr()


def flash_launcher(mod, name, w, d):
    fn = mod.get_function(name)
    fn.max_dynamic_shared_size_bytes = 160 * 1024
    attrs = fn.attributes

    def run(q, k, v, out, mask=None, bias=None, causal=0, window=0):
        B, Lq, Hq, D = q.shape
        Lk, Hkv = k.shape[1], k.shape[2]
        br = 16 * w
        grid = B * Hq * ((Lq + br - 1) // br)
        smem = (br + 4 * 64) * (d + 8) * 2
        fn((grid,), (32 * w,), (ptr(q), ptr(k), ptr(v), 0 if mask is None else ptr(mask), 0 if bias is None else ptr(bias), ptr(out),
                                np.int64(B), np.int64(Lq), np.int64(Lk), np.int64(Hq), np.int64(Hkv), np.float32(D ** -0.5),
                                np.int32(causal), np.int32(window), np.int32(mask is not None), np.int32(bias is not None),
                                np.int64(1 if bias is None else bias.shape[0]), np.int64(1 if bias is None else bias.shape[1])),
           shared_mem=smem)
    return run, attrs


def torch_attn(q, k, v, mask=None, bias=None, causal=False, window=0, fp32=True):
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    dt = torch.float32 if fp32 else q.dtype
    qq, kk, vv = (x.to(dt).transpose(1, 2) for x in (q, k, v))
    kk = kk.repeat_interleave(Hq // Hkv, dim=1); vv = vv.repeat_interleave(Hq // Hkv, dim=1)
    am = torch.zeros(B, 1, Lq, Lk, device=q.device, dtype=dt)
    if mask is not None:
        am = am.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    if causal:
        i = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq); j = torch.arange(Lk, device=q.device)[None, :]
        vis = j <= i
        if window > 0: vis &= (i - j) < window
        am = am.masked_fill(~vis, float("-inf"))
    if bias is not None:
        am = am + bias.to(dt)
    o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=am)
    return torch.nan_to_num(o, nan=0.0).transpose(1, 2)


torch.manual_seed(0)
dev = "cuda"
if args.only in (None, "flash") or args.ncu_once:
    new = module(args.flash, FLASH_WRAP)
    old = module(args.old_flash, FLASH_WRAP) if args.old_flash else None
    B, L, Hq, Hkv, D = 2, 4352, 24, 8, 96
    q = torch.randn(B, L, Hq, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, L, Hkv, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, L, Hkv, D, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    if args.ncu_once:
        run, _ = flash_launcher(new, "lab_bf16_d96_w4", 4, 96)
        run(q, k, v, out); torch.cuda.synchronize()
        raise SystemExit(0)
    flops = 4 * B * Hq * L * L * D
    ref = torch_attn(q, k, v)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    t_sdpa = timeit(lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True))
    print(f"torch SDPA bf16 {B}x{L}x{Hq}({Hkv})x{D}: {t_sdpa:.3f} ms, {flops / t_sdpa / 1e9:.0f} TFLOP/s")
    mask = torch.ones(B, L, device=dev); mask[1, 4000:] = 0
    bm = mask.bool()
    t_sdpa_m = timeit(lambda: F.scaled_dot_product_attention(qt, kt.repeat_interleave(3, 1), vt.repeat_interleave(3, 1),
                                                             attn_mask=bm[:, None, None, :]))
    print(f"torch SDPA bf16 with key padding mask (kv expanded): {t_sdpa_m:.3f} ms")
    ref_m = torch_attn(q, k, v, mask=mask)
    for label, m in (("new", new), ("old", old)):
        if m is None: continue
        for w in (4, 8):
            run, at = flash_launcher(m, f"lab_bf16_d96_w{w}", w, 96)
            out.fill_(float("nan"))
            run(q, k, v, out)
            err = rel(out, ref)
            t = timeit(lambda: run(q, k, v, out))
            out.fill_(float("nan")); run(q, k, v, out, mask=mask); err_m = rel(out, ref_m)
            tm = timeit(lambda: run(q, k, v, out, mask=mask))
            print(f"{label} w{w}: regs {at['num_regs']} spill {at['local_size_bytes']} B: {t:.3f} ms, {flops / t / 1e9:.0f} TFLOP/s,"
                  f" err {err:.2e}; masked {tm:.3f} ms err {err_m:.2e}")
    for spec in args.variants:  # FILE or FILE:MINBLOCKS
        path, minb = (spec.split(":") + [None])[:2]
        m = module(path, FLASH_WRAP, None if minb is None else int(minb))
        for w in (4, 8):
            run, at = flash_launcher(m, f"lab_bf16_d96_w{w}", w, 96)
            out.fill_(float("nan")); run(q, k, v, out); err = rel(out, ref)
            t = timeit(lambda: run(q, k, v, out))
            tm = timeit(lambda: run(q, k, v, out, mask=mask))
            print(f"{spec} w{w}: regs {at['num_regs']} spill {at['local_size_bytes']} B: {t:.3f} ms, {flops / t / 1e9:.0f} TFLOP/s,"
                  f" err {err:.2e}; masked {tm:.3f} ms")
    if args.sass:
        import collections, os, re, subprocess
        os.makedirs(args.sass, exist_ok=True)
        for path in [args.flash] + ([args.old_flash] if args.old_flash else []) + args.variants:
            tag = os.path.basename(path).replace(".cu", "")
            path = path.split(":")[0]
            src = lb_define(args.min_blocks) + open(path).read().replace('extern "C" __global__ void __launch_bounds__(32 * W) name(', 'static __device__ void name##_unused(')
            open(f"/tmp/{tag}.cu", "w").write(src + FLASH_WRAP)
            subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-lineinfo", "-o", f"/tmp/{tag}.cubin", f"/tmp/{tag}.cu"], check=True)
            sass = subprocess.run(["cuobjdump", "--dump-sass", "--function", "lab_bf16_d96_w4", f"/tmp/{tag}.cubin"],
                                  capture_output=True, text=True).stdout
            open(f"{args.sass}/{tag}.sass", "w").write(sass)
            ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass))
            print(f"SASS {tag}: {sum(ops.values())} instructions;", ", ".join(f"{k} {v}" for k, v in ops.most_common(18)))
    # every head dim, dtype and mask kind on small shapes against fp32 PyTorch
    worst = 0.0
    for t, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        for d in (64, 96, 128):
            for w in (4, 8):
                run, at = flash_launcher(new, f"lab_{t}_d{d}_w{w}", w, d)
                for (b_, lq, lk, hq, hkv) in ((2, 77, 200, 4, 2), (1, 130, 130, 3, 3), (2, 64, 64, 2, 1)):
                    qs = torch.randn(b_, lq, hq, d, device=dev, dtype=dt)
                    ks = torch.randn(b_, lk, hkv, d, device=dev, dtype=dt)
                    vs = torch.randn(b_, lk, hkv, d, device=dev, dtype=dt)
                    o = torch.empty_like(qs)
                    msk = torch.ones(b_, lk, device=dev); msk[0, lk // 2:] = 0; msk[-1, 5:9] = 0
                    bias = torch.randn(b_, hq, lq, lk, device=dev)
                    cases = [dict(), dict(mask=msk), dict(causal=1), dict(causal=1, window=17), dict(bias=bias), dict(mask=msk, bias=bias)]
                    for c in cases:
                        o.fill_(float("nan"))
                        run(qs, ks, vs, o, **c)
                        e = rel(o, torch_attn(qs, ks, vs, mask=c.get("mask"), bias=c.get("bias"), causal=bool(c.get("causal")), window=c.get("window", 0)))
                        if not e <= 1e-2:
                            print(f"FAIL {t} d{d} w{w} {(b_, lq, lk, hq, hkv)} {list(c)}: {e}")
                        worst = max(worst, e) if e == e else float("nan")
    print(f"flash correctness sweep (2 dtypes x 3 head dims x 2 shapes x 3 sizes x 6 mask kinds): worst rel L2 {worst:.2e}")

if args.only in (None, "fused"):
    ops = cp.RawModule(code=open("Sources/NewBieCUDA/Kernels/fused.cu").read(), options=OPTS)
    DT_BF16 = 2
    T, Dm, F_ = 8704, 2304, 9216
    x = torch.randn(2, T // 2, Dm, device=dev, dtype=torch.bfloat16)
    y = torch.randn_like(x)
    w = (1 + 0.1 * torch.randn(Dm, device=dev)).to(torch.bfloat16)
    sc = (0.3 * torch.randn(2, Dm, device=dev)).to(torch.bfloat16)
    o1 = torch.empty_like(x); o2 = torch.empty_like(x)
    g = lambda n: ops.get_function(n)

    def cmp(name, t_old, t_new, a, b, nbytes):
        diff = (a.view(torch.int16) != b.view(torch.int16)).float().mean().item()
        print(f"{name}: old {t_old:.3f} ms, new {t_new:.3f} ms ({nbytes / t_new / 1e9:.0f} GB/s), rel {rel(b, a):.2e}, "
              f"elements differing {diff * 100:.3f}%, finite {bool(torch.isfinite(b.float()).all())}")

    rows = T
    old = lambda: g("nb_rmsnorm_mod")((rows,), (256,), (ptr(x), np.int32(DT_BF16), ptr(w), np.int32(DT_BF16), ptr(sc), np.int32(DT_BF16),
                                                         ptr(o1), np.int64(Dm), np.int64(T // 2), np.float32(1e-5)))
    new = lambda: g("nb_rmsnorm_mod_bf16")(((rows + 7) // 8,), (256,), (ptr(x), ptr(w), ptr(sc), ptr(o2), np.int32(rows), np.int32(Dm),
                                                                         np.int32(T // 2), np.float32(1e-5)))
    o1.fill_(float("nan")); o2.fill_(float("nan")); old(); new()
    cmp("rmsnorm+modulate", timeit(old), timeit(new), o1, o2, 2 * x.numel() * 2)
    old = lambda: g("nb_rmsnorm_gate_res")((rows,), (256,), (ptr(x), ptr(y), np.int32(DT_BF16), ptr(w), np.int32(DT_BF16), ptr(sc), np.int32(DT_BF16),
                                                              ptr(o1), np.int64(Dm), np.int64(T // 2), np.float32(1e-5)))
    new = lambda: g("nb_rmsnorm_gate_res_bf16")(((rows + 7) // 8,), (256,), (ptr(x), ptr(y), ptr(w), ptr(sc), ptr(o2), np.int32(rows),
                                                                              np.int32(Dm), np.int32(T // 2), np.float32(1e-5)))
    o1.fill_(float("nan")); o2.fill_(float("nan")); old(); new()
    cmp("rmsnorm+gate+residual", timeit(old), timeit(new), o1, o2, 3 * x.numel() * 2)
    a = torch.randn(T, F_, device=dev, dtype=torch.bfloat16); bb = torch.randn_like(a)
    s1 = torch.empty_like(a); s2 = torch.empty_like(a)
    n = a.numel()
    old = lambda: g("nb_swiglu")((min((n + 255) // 256, 65536),), (256,), (ptr(a), ptr(bb), np.int32(DT_BF16), ptr(s1), np.int64(n)))
    nv = n // 8
    new = lambda: g("nb_swiglu_bf16")((min((nv + 255) // 256, 65536 * 4),), (256,), (ptr(a), ptr(bb), ptr(s2), np.int64(nv)))
    s1.fill_(float("nan")); s2.fill_(float("nan")); old(); new()
    cmp("swiglu", timeit(old), timeit(new), s1, s2, 3 * n * 2)
    tt = timeit(lambda: F.silu(a) * bb)
    print(f"  torch eager silu(a)*b: {tt:.3f} ms")
    Hq, Hkv, Dh = 24, 8, 96
    qkv = torch.randn(2, T // 2, (Hq + 2 * Hkv) * Dh, device=dev, dtype=torch.bfloat16)
    qw = (1 + 0.1 * torch.randn(Dh, device=dev)).to(torch.bfloat16); kw = (1 + 0.1 * torch.randn(Dh, device=dev)).to(torch.bfloat16)
    ang = torch.rand(1, T // 2, Dh // 2, device=dev) * 6.28
    cs, sn = ang.cos().contiguous(), ang.sin().contiguous()
    outs = [[torch.empty(2, T // 2, h, Dh, device=dev, dtype=torch.bfloat16) for h in (Hq, Hkv, Hkv)] for _ in range(2)]
    warps = T * (Hq + 2 * Hkv)
    old = lambda: g("nb_qkv_norm_rope")(((warps + 7) // 8,), (256,), (ptr(qkv), np.int32(DT_BF16), ptr(qw), ptr(kw), np.int32(DT_BF16), ptr(cs), ptr(sn),
                                                                     ptr(outs[0][0]), ptr(outs[0][1]), ptr(outs[0][2]), np.int64(2), np.int64(T // 2),
                                                                     np.int64(Hq), np.int64(Hkv), np.int64(Dh), np.int32(0), np.int32(0), np.float32(1e-5)))
    new = lambda: g("nb_qkv_norm_rope_bf16")(((warps + 7) // 8,), (256,), (ptr(qkv), ptr(qw), ptr(kw), ptr(cs), ptr(sn), ptr(outs[1][0]),
                                                                          ptr(outs[1][1]), ptr(outs[1][2]), np.int32(T // 2), np.int32(Hq), np.int32(Hkv),
                                                                          np.int32(Dh), np.int32(0), np.int32(T), np.float32(1e-5)))
    for o_ in outs[0] + outs[1]: o_.fill_(float("nan"))
    old(); new()
    cmp("qkv norm+rope", timeit(old), timeit(new), torch.cat([o_.flatten() for o_ in outs[0]]), torch.cat([o_.flatten() for o_ in outs[1]]),
        2 * qkv.numel() * 2)
