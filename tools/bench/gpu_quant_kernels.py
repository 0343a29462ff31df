#!/usr/bin/env python3
"""Standalone GPU check of the quantized-compute kernels, without the Swift binary.

Compiles Sources/NewBieCUDA/Kernels/quant.cu with CuPy (NVRTC, as the backend does) and checks
against torch on the GPU:
  - nb_dequant_i8 (per channel, per group of 128) into f32 / f16 / bf16: bit-exact;
  - nb_quant_rows_e4m3 / _v8 (one scale per row): the scales (amax/448 per row) and the e4m3
    codes equal torch's `(x.float() / scale[:, None]).to(torch.float8_e4m3fn)` bit for bit;
  - the cuBLASLt FP8 GEMM called through ctypes with exactly the descriptor the Swift backend
    builds (CUDAQuantized.swift, FP8Plans: TN layout, A/B scale modes 31/32 = outer vector (3),
    A/B scale pointers 17/18 = per-channel / per-token vectors, bias epilogue), against the fp32
    emulation; and whether this cuBLASLt offers outer-vector scaling at all (what the backend's
    first path needs; it falls back to an unscaled fp32 product and nb_fp8_rescale);
and times, for the DiT's GEMM shapes (batch 2 at 1024x1024: 8704 tokens), the bf16 GEMM against
int8 weight-only (dequantize kernel + bf16 GEMM) and fp8 W8A8 (row quantization + FP8 GEMM).

Run on the GPU machine from the repository root:  python3 tools/bench/gpu_quant_kernels.py
Needs torch and cupy (both on the H200 image). Exit status 1 when any check fails.
"""
import ctypes
import glob
import os
import sys

import cupy as cp
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
src = open(os.path.join(ROOT, "Sources/NewBieCUDA/Kernels/quant.cu")).read()
mod = cp.RawModule(code=src, options=("--std=c++17", "--fmad=true", "--include-path=" + os.path.join(ROOT, "Sources/NewBieCUDA/Kernels")))
K = {n: mod.get_function(n) for n in ["nb_dequant_i8", "nb_quant_rows_e4m3", "nb_quant_rows_e4m3_v8"]}
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
dev = torch.device("cuda")
failures = []


def p(t):  # device pointer as a kernel argument
    return np.uint64(t.data_ptr())


def blocks(n, t=256):
    return max(1, min((n + t - 1) // t, 65536))


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + (" " + detail if detail else ""))
    if not ok:
        failures.append(name)


def dequant(q, scales, dtype):
    rows, cols = q.shape
    groups = scales.shape[1]
    out = torch.empty(rows, cols, dtype=dtype, device=dev)
    K["nb_dequant_i8"]((min((cols + 1023) // 1024, 65536), min(rows, 65535)), (256,), (p(q), p(scales), np.int64(rows), np.int64(cols), np.int64(groups),
                       np.int64((cols + groups - 1) // groups), p(out), np.int32(DT[dtype])))
    return out


def quant_e4m3(x):
    """Per-row codes [rows, k] and scales [rows] of a 2-D x, as CUDABackend.quantizeRowsE4M3 launches them."""
    rows, k = x.shape
    codes = torch.empty(rows, k, dtype=torch.uint8, device=dev)
    scales = torch.empty(rows, dtype=torch.float32, device=dev)
    if x.dtype != torch.float32 and k % 8 == 0 and k // 8 <= 2048:
        K["nb_quant_rows_e4m3_v8"]((rows,), (256,), (p(x), np.int32(DT[x.dtype]), np.int32(k // 8), p(codes), p(scales)))
    else:
        K["nb_quant_rows_e4m3"]((rows,), (256,), (p(x), np.int32(DT[x.dtype]), np.int64(k), p(codes), p(scales)))
    return codes, scales


# ---- int8 dequantization
g = torch.Generator(device="cpu").manual_seed(1)
q = torch.randint(-127, 128, (96, 384), generator=g, dtype=torch.int8).to(dev)
for groups in [1, 3]:
    s = (torch.rand(96, groups, generator=g) * 0.01).to(dev)
    ref32 = q.float() * s.repeat_interleave(384 // groups, dim=1)
    for dtype in [torch.float32, torch.float16, torch.bfloat16]:
        out = dequant(q, s, dtype)
        torch.cuda.synchronize()
        check(f"dequant int8 groups={groups} {dtype}", torch.equal(out, ref32.to(dtype)))

# ---- activation quantization, one scale per row
for dtype in [torch.float32, torch.bfloat16, torch.float16]:
    for k in [2304, 9216, 16392, 105]:
        x = (torch.randn(1000, k, generator=g) * 3).to(dtype).to(dev)
        x[5, 7] = 40.0  # one outlier sets its row's scale
        x[9] = 0        # an all-zero row: scale 1
        codes, scales = quant_e4m3(x)
        torch.cuda.synchronize()
        # a tensor divisor: on CUDA, torch divides by a Python scalar as a multiplication by its
        # reciprocal (1 ulp off amax / 448 for some amax), on the CPU it divides
        amax = x.float().abs().amax(dim=1)
        s_ref = torch.where(amax > 0, amax / torch.full_like(amax, 448.0), torch.ones_like(amax))
        ref_codes = (x.float() / s_ref[:, None]).to(torch.float8_e4m3fn).view(torch.uint8)
        check(f"e4m3 row scales {dtype} k={k}", torch.equal(scales, s_ref), f"max diff {(scales - s_ref).abs().max().item()}")
        check(f"e4m3 row codes {dtype} k={k}", torch.equal(codes, ref_codes), f"mismatches {(codes != ref_codes).sum().item()}")

# ---- cuBLASLt FP8 GEMM through the Swift backend's descriptor
def load_lt():
    import torch.cuda  # noqa: F401  (loads the CUDA libraries)
    names = ["libcublasLt.so.13", "libcublasLt.so.12"]
    paths = names + sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib", "libcublasLt.so*")))
    paths += glob.glob("/usr/local/cuda*/lib64/libcublasLt.so*")
    for n in paths:
        try:
            return ctypes.CDLL(n)
        except OSError:
            pass
    raise SystemExit("no libcublasLt found")


lt = load_lt()
V = ctypes.c_void_p
handle = V()
assert lt.cublasLtCreate(ctypes.byref(handle)) == 0
ws_bytes = 32 << 20
workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
BF16, F16, F32, E4M3 = 14, 2, 0, 28
OUT_TYPE = {torch.bfloat16: BF16, torch.float16: F16, torch.float32: F32}


def setattr_(desc, attr, value, ctype):
    v = ctype(value)
    rc = lt.cublasLtMatmulDescSetAttribute(desc, ctypes.c_int(attr), ctypes.byref(v), ctypes.c_size_t(ctypes.sizeof(v)))
    assert rc == 0, (attr, rc)


plans = {}


def fp8_plan(m, n, k, out_type, has_bias, outer=True):
    key = (m, n, k, out_type, has_bias, outer)
    if key in plans:
        return plans[key]
    desc = V()
    assert lt.cublasLtMatmulDescCreate(ctypes.byref(desc), ctypes.c_int(68), ctypes.c_int(0)) == 0
    setattr_(desc, 3, 1, ctypes.c_int32)   # TRANSA = T
    setattr_(desc, 4, 0, ctypes.c_int32)   # TRANSB = N
    if outer:
        setattr_(desc, 31, 3, ctypes.c_int32)   # A_SCALE_MODE = OUTER_VEC_32F (n floats: the weight's channels)
        setattr_(desc, 32, 3, ctypes.c_int32)   # B_SCALE_MODE = OUTER_VEC_32F (m floats: the tokens)
    if has_bias:
        setattr_(desc, 7, 4, ctypes.c_uint32)          # EPILOGUE_BIAS
        setattr_(desc, 26, out_type, ctypes.c_int32)   # BIAS_DATA_TYPE
    a, b, c = V(), V(), V()
    u, i = ctypes.c_uint64, ctypes.c_int64
    assert lt.cublasLtMatrixLayoutCreate(ctypes.byref(a), ctypes.c_int(E4M3), u(k), u(n), i(k)) == 0
    assert lt.cublasLtMatrixLayoutCreate(ctypes.byref(b), ctypes.c_int(E4M3), u(k), u(m), i(k)) == 0
    assert lt.cublasLtMatrixLayoutCreate(ctypes.byref(c), ctypes.c_int(out_type), u(n), u(m), i(n)) == 0
    pref = V()
    assert lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)) == 0
    w = ctypes.c_uint64(ws_bytes)
    assert lt.cublasLtMatmulPreferenceSetAttribute(pref, ctypes.c_int(1), ctypes.byref(w), ctypes.c_size_t(8)) == 0
    result = (ctypes.c_uint8 * 96)()
    found = ctypes.c_int(0)
    rc = lt.cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, c, c, pref, ctypes.c_int(1), ctypes.byref(result), ctypes.byref(found))
    assert rc == 0 and found.value > 0, f"no FP8 algorithm (status {rc}, found {found.value})"
    plans[key] = (desc, a, b, c, result)
    return plans[key]


def fp8_gemm(x_codes, x_scales, w_codes, w_scales, bias, out_dtype):
    m, k = x_codes.shape
    n = w_codes.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=dev)
    desc, a, b, c, algo = fp8_plan(m, n, k, OUT_TYPE[out_dtype], bias is not None)
    setattr_(desc, 17, w_scales.data_ptr(), ctypes.c_uint64)  # A scales: the weight's, one per output channel
    setattr_(desc, 18, x_scales.data_ptr(), ctypes.c_uint64)  # B scales: the activation's, one per token
    if bias is not None:
        setattr_(desc, 8, bias.data_ptr(), ctypes.c_uint64)
    alpha, beta = ctypes.c_float(1), ctypes.c_float(0)
    rc = lt.cublasLtMatmul(handle, desc, ctypes.byref(alpha), V(w_codes.data_ptr()), a, V(x_codes.data_ptr()), b, ctypes.byref(beta),
                           V(out.data_ptr()), c, V(out.data_ptr()), c, ctypes.byref(algo), V(workspace.data_ptr()),
                           ctypes.c_size_t(ws_bytes), V(torch.cuda.current_stream().cuda_stream))
    assert rc == 0, f"cublasLtMatmul status {rc}"
    return out


def weight_e4m3(w):
    """Per-channel codes and scales [n] of a float weight (QuantizedWeight.quantize(.fp8))."""
    amax = w.float().abs().amax(dim=1)
    s = torch.where(amax > 0, amax / torch.full_like(amax, 448.0), torch.ones_like(amax))
    return (w.float() / s[:, None]).to(torch.float8_e4m3fn).view(torch.uint8), s


def fp8_checks():
  print(f"cuBLASLt version {lt.cublasLtGetVersion()}")
  for out_dtype in [torch.bfloat16, torch.float16]:
    x = torch.randn(333, 384, generator=g).to(out_dtype).to(dev)
    x[3] *= 50  # tokens of different magnitudes
    w = (torch.randn(96, 384, generator=g) * 0.1).to(dev)
    w[5] *= 30
    bias = torch.randn(96, generator=g).to(out_dtype).to(dev)
    w_codes, w_scales = weight_e4m3(w)
    xc, xs = quant_e4m3(x)
    ref = (xc.view(torch.float8_e4m3fn).float() @ w_codes.view(torch.float8_e4m3fn).float().T) * (xs[:, None] * w_scales[None, :]) + bias.float()
    for with_bias in [True, False]:
        try:
            y = fp8_gemm(xc, xs, w_codes, w_scales, bias if with_bias else None, out_dtype)
            if not with_bias:
                y = y + bias
            torch.cuda.synchronize()
            err = ((y.float() - ref).norm() / ref.norm()).item()
            check(f"fp8 GEMM, outer-vector scales, bias {'epilogue' if with_bias else 'after'} vs emulation ({out_dtype})",
                  err < 1e-2 and torch.isfinite(y).all().item(), f"rel L2 {err:.2e}")
        except AssertionError as e:
            print(f"NOTE outer-vector scaling, bias {'epilogue' if with_bias else 'after'} ({out_dtype}): not available here: {e}")


try:
    fp8_checks()
except Exception as e:  # noqa: BLE001 - report and go on to the timings
    check("fp8 GEMM through the backend's descriptor", False, repr(e))

# ---- timings: the DiT's linear layers at batch 2, 1024x1024 (8704 tokens)
def timed(fn, runs=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / runs


m = 8704
shapes = [("qkv", 3840, 2304), ("out", 2304, 2304), ("w1/w3", 9216, 2304), ("w2", 2304, 9216)]
counts = {"qkv": 1, "out": 1, "w1/w3": 2, "w2": 1}
tot = {"bf16": 0.0, "int8": 0.0, "fp8": 0.0}
print(f"\nDiT block GEMMs, {m} tokens (ms per call; bf16 = torch.matmul on cuBLAS):")
for name, n, k in shapes:
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    qi = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
    si = torch.rand(n, 1, device=dev) * 1e-3
    w_codes, w_scales = weight_e4m3(w)
    t_bf16 = timed(lambda: x @ w.T)
    t_deq = timed(lambda: dequant(qi, si, torch.bfloat16))
    t_int8 = timed(lambda: x @ dequant(qi, si, torch.bfloat16).T)
    t_q = timed(lambda: quant_e4m3(x))
    try:
        t_fp8 = timed(lambda: fp8_gemm(*quant_e4m3(x), w_codes, w_scales, None, torch.bfloat16))
    except Exception as e:  # noqa: BLE001
        check(f"fp8 GEMM timing {name}", False, repr(e))
        t_fp8 = float("nan")
    for key, t in [("bf16", t_bf16), ("int8", t_int8), ("fp8", t_fp8)]:
        tot[key] += t * counts[name]
    print(f"  {name:6s} [{n}x{k}]: bf16 {t_bf16:.3f}; int8 {t_int8:.3f} (dequant {t_deq:.3f}) = {t_int8 / t_bf16:.2f}x; "
          f"fp8 {t_fp8:.3f} (quantize x {t_q:.3f}) = {t_fp8 / t_bf16:.2f}x")
print(f"  one block's linear layers: bf16 {tot['bf16']:.2f} ms, int8 {tot['int8']:.2f} ms ({tot['int8'] / tot['bf16']:.2f}x), "
      f"fp8 {tot['fp8']:.2f} ms ({tot['fp8'] / tot['bf16']:.2f}x)")

print("\nall checks passed" if not failures else f"\n{len(failures)} checks FAILED: {failures}")
sys.exit(1 if failures else 0)
