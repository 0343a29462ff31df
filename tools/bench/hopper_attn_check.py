#!/usr/bin/env python3
"""Hopper flash attention (flash_hopper.cu, wgmma) against the mma.sync kernel (flash.cu) and
PyTorch, on the GPU machine (CuPy's NVRTC, torch 2.11, CUDA 13; no Swift toolchain needed).

    timeout 900 python3 tools/bench/hopper_attn_check.py [--runs 20] [--quick]

Both kernel sources are compiled from this checkout by NVRTC with the engine's options
(NVRTC.swift; CuPy's NVRTC binding, not RawModule, which would add an -arch of its own) and loaded
as CuPy modules: flash.cu for sm_90 as the engine does, flash_hopper.cu for sm_90a (wgmma needs
the "a"). Each case runs both kernels on random inputs and compares each with PyTorch's SDPA computed
in fp32 from the same 16-bit inputs (rows with no visible key are zeros, as in the engine). A
case passes when the relative L2 error of the wgmma kernel is <= 1e-2 (the limit `newbie
gpu-check` holds the flash kernels to in bf16/fp16) and its output is finite; the max abs error
is printed beside it. Timed cases (the DiT shape) print the median of --runs CUDA-event timings
after warm-up for the wgmma kernel, the mma.sync kernel and torch SDPA (bf16, same inputs).
Then the variants (SCHED_* bits in flash_hopper.cu; SCHEDULES below): the consumer schedules
seq (free), pp (ping-pong), ov (the next tile's Q K^T issued with the current P V), ovpp (both),
and with suffixes P (paired loads: each 32-byte sector of K/V read whole by two lanes) and S
(tiles in the 64-byte swizzled layout) are each checked on every small bf16 case and timed on the DiT shape and d128 (the engine
builds the one NB_FLASH_SCHEDULE names). Every case runs inside
try/except; a kernel that does not finish within 30 s is reported as a
hang and the script exits (a hung kernel cannot be stopped from the host). The last line is
PASS or FAIL.
"""
import argparse
import os
import pathlib
import sys
import time
import traceback

import numpy as np
import cupy as cp
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNELS = ROOT / "Sources/NewBieCUDA/Kernels"
BASE_OPTS = ("--std=c++17", "-default-device", "--fmad=true", "-lineinfo")
LIMIT = 1e-2

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("--quick", action="store_true", help="skip the timed DiT-size cases")
args = ap.parse_args()

# Scalar-argument entry points (CuPy passes scalars, not structs) around the engine's device
# functions; the engine's own extern "C" kernels are cut off so that only these compile.
COMMON = (KERNELS / "common.cuh").read_text()
PARAMS = ("i64 B, i64 Lq, i64 Lk, i64 Hq, i64 Hkv, float scale, int causal, int window, int hasMask, int hasBias, "
          "i64 biasB, i64 biasH")
FILL = ("FlashParams p; p.B = B; p.Lq = Lq; p.Lk = Lk; p.Hq = Hq; p.Hkv = Hkv; p.scale = scale; p.causal = causal; "
        "p.window = window; p.hasMask = hasMask; p.hasBias = hasBias; p.pad = 0; p.biasB = biasB; p.biasH = biasH;")
TYPES = (("bf16", "true"), ("f16", "false"))
# the variants of flash_hopper.cu (SCHED_* bits), by name: the template argument of each. seq is
# the kernel as first measured (1.208 ms at the DiT shape); P = paired loads, S = 64-byte swizzle.
SCHEDULES = (("seq", "0"), ("pp", "SCHED_PINGPONG"), ("ov", "SCHED_OVERLAP"), ("ovpp", "SCHED_OVERLAP | SCHED_PINGPONG"),
             ("seqP", "SCHED_PAIRED_LOADS"), ("ovP", "SCHED_OVERLAP | SCHED_PAIRED_LOADS"),
             ("ovppP", "SCHED_OVERLAP | SCHED_PINGPONG | SCHED_PAIRED_LOADS"),
             ("seqS", "SCHED_SWIZZLE64"), ("ovPS", "SCHED_OVERLAP | SCHED_PAIRED_LOADS | SCHED_SWIZZLE64"),
             ("ovppPS", "SCHED_OVERLAP | SCHED_PINGPONG | SCHED_PAIRED_LOADS | SCHED_SWIZZLE64"))
DIMS = (64, 96, 128)


def source(file, cut):
    src = (KERNELS / file).read_text()
    assert cut in src, f"{file}: marker {cut!r} not found (the kernel instantiations moved?)"
    return src[:src.index(cut)].replace('#include "common.cuh"', COMMON)


def build_modules():
    mma = source("flash.cu", "#define FLASH(") + "".join(
        f'extern "C" __global__ void __launch_bounds__(128, 3) chk_mma_{t}_d{d}(const u16* q, const u16* k, const u16* v, '
        f"const float* mask, const float* bias, u16* out, {PARAMS}) {{ {FILL} flash_forward<{d}, 4, {bf}>(q, k, v, mask, bias, out, p); }}\n"
        for t, bf in TYPES for d in DIMS)
    wg = source("flash_hopper.cu", "#define FLASH_WGMMA") + "".join(
        f'extern "C" __global__ void __launch_bounds__(HTHREADS, 1) chk_{kind}_{t}_d{d}(const u16* q, const u16* k, const u16* v, '
        f"const float* mask, u16* out, {PARAMS}) {{ {FILL} flash_wgmma<{d}, {bf}, {pp}>(q, k, v, mask, out, p); }}\n"
        for kind, pp in (("wgmma", "NB_FLASH_SCHEDULE"), *((f"wgmma{v}", sched) for v, sched in SCHEDULES))
        for t, bf in TYPES for d in DIMS if kind == "wgmma" or t == "bf16")
    if os.environ.get("HOPPER_CHECK_DUMP"):   # write the two sources (for a compile check without a GPU)
        pathlib.Path(os.environ["HOPPER_CHECK_DUMP"] + "_mma.cu").write_text(mma)
        pathlib.Path(os.environ["HOPPER_CHECK_DUMP"] + "_wgmma.cu").write_text(wg)
    t0 = time.time()
    m_mma = load_cubin(nvrtc_cubin(mma, "chk_flash.cu", "90"))
    m_wg = load_cubin(nvrtc_cubin(wg, "chk_flash_hopper.cu", "90a"))
    for t, _ in TYPES:
        for d in DIMS:
            m_mma.get_function(f"chk_mma_{t}_d{d}")
            m_wg.get_function(f"chk_wgmma_{t}_d{d}")
    for d in DIMS:
        for v, _ in SCHEDULES:
            m_wg.get_function(f"chk_wgmma{v}_bf16_d{d}")
    print(f"compiled flash.cu (sm_90) and flash_hopper.cu (sm_90a) in {time.time() - t0:.1f} s", flush=True)
    return m_mma, m_wg


def nvrtc_cubin(src, name, arch):
    """Compiles with NVRTC exactly as the engine does (NVRTC.swift's options). CuPy's RawModule would
    add its own -arch=sm_90 (and -ftz=true) beside ours, so the program goes to NVRTC directly:
    through CuPy's own NVRTC binding, or through libnvrtc.so.13 found on the library path."""
    opts = [f"--gpu-architecture=sm_{arch}", *BASE_OPTS]
    try:
        from cupy_backends.cuda.libs import nvrtc as cnv
        prog = cnv.createProgram(src, name, (), ())
        try:
            cnv.compileProgram(prog, opts)
        except Exception as e:
            raise RuntimeError(f"NVRTC could not compile {name} for sm_{arch}:\n{cnv.getProgramLog(prog)}") from e
        cubin = cnv.getCUBIN(prog)
        cnv.destroyProgram(prog)
        return bytes(cubin)
    except (ImportError, AttributeError):
        pass
    import ctypes, glob, site
    lib = None
    for cand in ["libnvrtc.so.13", *glob.glob("/usr/local/cuda*/lib64/libnvrtc.so.13"),
                 *[g for d in site.getsitepackages() for g in glob.glob(f"{d}/nvidia/*/lib/libnvrtc.so.13")]]:
        try:
            lib = ctypes.CDLL(cand)
            break
        except OSError:
            continue
    if lib is None:
        raise RuntimeError("no NVRTC: neither CuPy's binding nor libnvrtc.so.13 could be loaded")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None) == 0
    copts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = lib.nvrtcCompileProgram(prog, len(opts), copts)
    n = ctypes.c_size_t()
    if status != 0:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        raise RuntimeError(f"NVRTC could not compile {name} for sm_{arch}:\n{log.value.decode(errors='replace')}")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.raw


def allow_shared(fn, nbytes):
    """More than 48 KiB of dynamic shared memory must be allowed per function (attribute 8)."""
    attr = getattr(cp.cuda.driver, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8)
    cp.cuda.driver.funcSetAttribute(fn.ptr, attr, nbytes)


def load_cubin(cubin):
    mod = cp.cuda.function.Module()
    mod.load(cubin)
    return mod


def scalars(q, k, mask, causal, window):
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    return (np.int64(B), np.int64(Lq), np.int64(Lk), np.int64(Hq), np.int64(Hkv), np.float32(D ** -0.5),
            np.int32(causal), np.int32(window), np.int32(mask is not None), np.int32(0), np.int64(1), np.int64(1))


def mma_launcher(mod, t, d):
    fn = mod.get_function(f"chk_mma_{t}_d{d}")
    smem = (64 + 4 * 64) * (d + 8) * 2          # CUDAAttention.swift: (rows + 4 x 64) x (d + 8) x 2 bytes
    allow_shared(fn, smem)

    def run(q, k, v, out, mask=None, causal=0, window=0):
        B, Lq, Hq, _ = q.shape
        grid = B * Hq * ((Lq + 63) // 64)
        fn((grid,), (128,), (q.data_ptr(), k.data_ptr(), v.data_ptr(), 0 if mask is None else mask.data_ptr(), 0,
                             out.data_ptr()) + scalars(q, k, mask, causal, window), shared_mem=smem)
    return run


def wgmma_smem(d):
    return 128 * d * 2 + 3 * 2 * 128 * d * 2 + 6 * 8   # Q, 3 stages of K and V, 6 mbarriers


def wgmma_launcher(mod, t, d, kind="wgmma"):
    fn = mod.get_function(f"chk_{kind}_{t}_d{d}")
    smem = wgmma_smem(d)
    allow_shared(fn, smem)

    def run(q, k, v, out, mask=None, causal=0, window=0):
        B, Lq, Hq, _ = q.shape
        grid = B * Hq * ((Lq + 127) // 128)
        fn((grid,), (384,), (q.data_ptr(), k.data_ptr(), v.data_ptr(), 0 if mask is None else mask.data_ptr(),
                             out.data_ptr()) + scalars(q, k, mask, causal, window), shared_mem=smem)
    return run


def finish_or_exit(what, seconds=30.0):
    """Waits for the queued work; a kernel still running after `seconds` is a hang: report and exit."""
    ev = cp.cuda.Event()
    ev.record()
    t0 = time.time()
    while not ev.done:
        if time.time() - t0 > seconds:
            print(f"{what}: HANG (no completion in {seconds:.0f} s)\nFAIL", flush=True)
            os._exit(2)
        time.sleep(0.001)
    torch.cuda.synchronize()


def reference(q, k, v, mask, causal, window):
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    qq, kk, vv = (x.float().transpose(1, 2) for x in (q, k, v))
    kk = kk.repeat_interleave(Hq // Hkv, dim=1)
    vv = vv.repeat_interleave(Hq // Hkv, dim=1)
    vis = torch.ones(B, 1, Lq, Lk, dtype=torch.bool, device=q.device)
    if mask is not None:
        vis &= (mask != 0)[:, None, None, :]
    if causal:
        i = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)
        j = torch.arange(Lk, device=q.device)[None, :]
        c = j <= i
        if window > 0:
            c &= (i - j) < window
        vis &= c
    am = torch.zeros(vis.shape, device=q.device).masked_fill(~vis, float("-inf"))
    o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=am)
    return torch.nan_to_num(o, nan=0.0).transpose(1, 2)


def errors(out, ref):
    o = out.float()
    if not torch.isfinite(o).all():
        return float("nan"), float("nan")
    rel = float(torch.linalg.vector_norm(o - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    return rel, float((o - ref).abs().max())


def timeit(fn, runs):
    for _ in range(3):
        fn()
    finish_or_exit("warm-up")
    ts = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


# name, B, Lq, Lk, Hq, Hkv, D, dtype, mask kind, causal, window, timed
CASES = [
    ("DiT 2x4352 24(8)x96 bf16", 2, 4352, 4352, 24, 8, 96, torch.bfloat16, None, 0, 0, True),
    ("DiT 2x4352 24(8)x96 bf16 caption padding", 2, 4352, 4352, 24, 8, 96, torch.bfloat16, "caption", 0, 0, True),
    ("DiT 2x4352 24(8)x96 fp16", 2, 4352, 4352, 24, 8, 96, torch.float16, None, 0, 0, True),
    ("d128 2x4096 16(16) bf16", 2, 4096, 4096, 16, 16, 128, torch.bfloat16, None, 0, 0, True),
    ("odd 2x150/200 6(2)x96 bf16 mask", 2, 150, 200, 6, 2, 96, torch.bfloat16, "tail", 0, 0, False),
    ("odd 2x150/200 6(2)x96 fp16 mask", 2, 150, 200, 6, 2, 96, torch.float16, "tail", 0, 0, False),
    ("odd 2x300/333 6(2)x96 bf16 holes (empty tile)", 2, 300, 333, 6, 2, 96, torch.bfloat16, "holes", 0, 0, False),
    ("odd 1x130/97 4(4)x128 bf16", 1, 130, 97, 4, 4, 128, torch.bfloat16, None, 0, 0, False),
    ("odd 1x130/97 4(4)x128 fp16", 1, 130, 97, 4, 4, 128, torch.float16, None, 0, 0, False),
    ("odd 1x300/333 8(2)x64 bf16 mask", 1, 300, 333, 8, 2, 64, torch.bfloat16, "tail", 0, 0, False),
    ("odd 1x1/300 8(8)x96 bf16 (Lq=1)", 1, 1, 300, 8, 8, 96, torch.bfloat16, None, 0, 0, False),
    ("causal 1x257/257 4(4)x128 bf16", 1, 257, 257, 4, 4, 128, torch.bfloat16, None, 1, 0, False),
    ("causal window 2x150/200 6(2)x96 bf16", 2, 150, 200, 6, 2, 96, torch.bfloat16, None, 1, 70, False),
    ("causal window 1x600/600 4(2)x64 fp16", 1, 600, 600, 4, 2, 64, torch.float16, None, 1, 200, False),
    ("all keys masked in one sample 2x70/90 4(4)x96 bf16", 2, 70, 90, 4, 4, 96, torch.bfloat16, "one-empty", 0, 0, False),
]


# every schedule on every small bf16 case of CASES (fp16 only changes the conversions), then timed
PP_CASES = [c for c in CASES if not c[-1] and c[7] == torch.bfloat16] + [
    ("DiT 2x4352 24(8)x96", 2, 4352, 4352, 24, 8, 96, torch.bfloat16, None, 0, 0, True),
    ("d128 2x4096 16(16)", 2, 4096, 4096, 16, 16, 128, torch.bfloat16, None, 0, 0, True),
]


def make_mask(kind, B, Lk, dev):
    if kind is None:
        return None
    m = torch.ones(B, Lk, device=dev)
    if kind == "caption":          # Lumina-style: caption tokens first, the second prompt 100 tokens short
        m[1, 156:256] = 0
    elif kind == "tail":
        m[-1, (Lk * 2) // 5:] = 0
    elif kind == "holes":          # a whole 128-key tile masked (the skip path), and a ragged hole
        m[0, 128:256] = 0
        m[1, 5:40] = 0
        m[1, 300:] = 0
    elif kind == "one-empty":
        m[1, :] = 0
    return m


def main():
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()} (cc {torch.cuda.get_device_capability()}), torch {torch.__version__}, "
          f"cupy {cp.__version__}", flush=True)
    if torch.cuda.get_device_capability() != (9, 0):
        print("not a compute capability 9.0 GPU: the wgmma kernel cannot run here\nFAIL")
        return 1
    m_mma, m_wg = build_modules()
    torch.manual_seed(0)
    ok = True
    for (name, B, Lq, Lk, Hq, Hkv, D, dt, mkind, causal, window, timed) in CASES:
        if timed and args.quick:
            continue
        try:
            t = "bf16" if dt == torch.bfloat16 else "f16"
            q = torch.randn(B, Lq, Hq, D, device=dev, dtype=dt)
            k = torch.randn(B, Lk, Hkv, D, device=dev, dtype=dt)
            v = torch.randn(B, Lk, Hkv, D, device=dev, dtype=dt)
            mask = make_mask(mkind, B, Lk, dev)
            ref = reference(q, k, v, mask, causal, window)
            run_wg, run_mma = wgmma_launcher(m_wg, t, D), mma_launcher(m_mma, t, D)
            out_wg = torch.full_like(q, float("nan"))     # poisoned: an unwritten element shows as NaN
            out_mma = torch.full_like(q, float("nan"))
            run_wg(q, k, v, out_wg, mask, causal, window)
            finish_or_exit(f"{name}: wgmma kernel")
            run_mma(q, k, v, out_mma, mask, causal, window)
            finish_or_exit(f"{name}: mma kernel")
            rel_wg, abs_wg = errors(out_wg, ref)
            rel_mma, abs_mma = errors(out_mma, ref)
            passed = rel_wg <= LIMIT              # NaN compares false: never passes
            line = (f"{'ok  ' if passed else 'FAIL'} {name}: wgmma rel {rel_wg:.2e} max|d| {abs_wg:.2e}; "
                    f"mma rel {rel_mma:.2e} max|d| {abs_mma:.2e}")
            if timed and passed:
                flops = 4 * B * Hq * Lq * Lk * D
                qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
                am = None if mask is None else (mask != 0)[:, None, None, :]
                t_wg = timeit(lambda: run_wg(q, k, v, out_wg, mask, causal, window), args.runs)
                t_mma = timeit(lambda: run_mma(q, k, v, out_mma, mask, causal, window), args.runs)
                try:
                    t_sdpa = timeit(lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=am, enable_gqa=True), args.runs)
                except Exception:   # a backend without GQA for this call: K/V expanded to every head
                    ke, ve = (x.repeat_interleave(Hq // Hkv, dim=1) for x in (kt, vt))
                    t_sdpa = timeit(lambda: F.scaled_dot_product_attention(qt, ke, ve, attn_mask=am), args.runs)
                line += (f" | wgmma {t_wg:.3f} ms ({flops / t_wg / 1e9:.0f} TFLOP/s), mma {t_mma:.3f} ms, "
                         f"torch SDPA {t_sdpa:.3f} ms; wgmma/SDPA {t_wg / t_sdpa:.2f}, mma/wgmma {t_mma / t_wg:.2f}")
            print(line, flush=True)
            ok &= passed
        except Exception:
            ok = False
            print(f"FAIL {name}: exception\n{traceback.format_exc()}", flush=True)
    # The variants (SCHED_* in flash_hopper.cu), last: a hang
    # here cannot cost the results above.
    print("variants (bf16): seq = warpgroups issue freely, pp = they take turns, ov = S of the next tile "
          "issued with P V of this one, ovpp = both; P = paired loads, S = 64-byte swizzle", flush=True)
    for (name, B, Lq, Lk, Hq, Hkv, D, dt, mkind, causal, window, timed) in PP_CASES:
        if timed and args.quick:
            continue
        try:
            q = torch.randn(B, Lq, Hq, D, device=dev, dtype=dt)
            k = torch.randn(B, Lk, Hkv, D, device=dev, dtype=dt)
            v = torch.randn(B, Lk, Hkv, D, device=dev, dtype=dt)
            mask = make_mask(mkind, B, Lk, dev)
            ref = reference(q, k, v, mask, causal, window)
            parts = []
            for kind in [f"wgmma{v}" for v, _ in SCHEDULES]:
                run = wgmma_launcher(m_wg, "bf16", D, kind)
                out = torch.full_like(q, float("nan"))
                run(q, k, v, out, mask, causal, window)
                finish_or_exit(f"{name}: {kind}")
                rel, mx = errors(out, ref)
                passed = rel <= LIMIT
                ok &= passed
                part = f"{kind[5:]} {'ok' if passed else 'FAIL'} rel {rel:.2e} max|d| {mx:.2e}"
                if timed and passed:
                    part += f" {timeit(lambda: run(q, k, v, out, mask, causal, window), args.runs):.3f} ms"
                parts.append(part)
            print(f"{name}: " + "; ".join(parts), flush=True)
        except Exception:
            ok = False
            print(f"FAIL {name} (schedules): exception\n{traceback.format_exc()}", flush=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
