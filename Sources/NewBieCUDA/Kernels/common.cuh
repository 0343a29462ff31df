// Shared by every NewBie kernel module (NVRTC gets it as a named header, see NVRTC.swift):
// storage types, dtype codes, loads and stores in any dtype, strided views, block reductions,
// the unary op codes and rounding. Self-contained (no CUDA headers).
#pragma once

#define NB_INF __int_as_float(0x7f800000)
typedef unsigned short u16;
typedef long long i64;
// 16 bytes moved as one load or store (8 bf16/fp16 or 4 fp32 values)
struct alignas(16) nb_v16 { unsigned w[4]; };

// dtype codes (must match CUDABackend.dtypeCode)
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_I32 3
#define DT_I64 4
#define DT_U8 5
#define DT_F64 6
#define DT_I8 7
#define DT_I16 8

__device__ __forceinline__ float h2f(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((unsigned)b) << 16); }
__device__ __forceinline__ u16 f2b(float f) { u16 b; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f)); return b; }

__device__ __forceinline__ float ld(const void* p, int dt, i64 i) {
    switch (dt) {
    case DT_F32: return ((const float*)p)[i];
    case DT_F16: return h2f(((const u16*)p)[i]);
    case DT_BF16: return b2f(((const u16*)p)[i]);
    case DT_I32: return (float)((const int*)p)[i];
    case DT_I64: return (float)((const i64*)p)[i];
    case DT_U8: return (float)((const unsigned char*)p)[i];
    case DT_F64: return (float)((const double*)p)[i];
    case DT_I8: return (float)((const signed char*)p)[i];
    case DT_I16: return (float)((const short*)p)[i];
    }
    return 0.f;
}

__device__ __forceinline__ void st(void* p, int dt, i64 i, float v) {
    switch (dt) {
    case DT_F32: ((float*)p)[i] = v; break;
    case DT_F16: ((u16*)p)[i] = f2h(v); break;
    case DT_BF16: ((u16*)p)[i] = f2b(v); break;
    case DT_I32: ((int*)p)[i] = (int)v; break;
    case DT_I64: ((i64*)p)[i] = (i64)v; break;
    case DT_U8: ((unsigned char*)p)[i] = (unsigned char)v; break;
    case DT_F64: ((double*)p)[i] = (double)v; break;
    case DT_I8: ((signed char*)p)[i] = (signed char)v; break;
    case DT_I16: ((short*)p)[i] = (short)v; break;
    }
}

// A strided view: element i of the logical (row-major) shape lives at offset + sum(idx_d * stride_d).
struct Strided { int rank; int small; i64 shape[8]; i64 stride[8]; i64 offset; };  // small: every axis < 2^31

// The host merges contiguous axes first, so a contiguous operand arrives with rank 1 and costs one
// multiply-add; 64-bit division is slow on the GPU, so indices that fit use 32-bit arithmetic.
__device__ __forceinline__ i64 where(const Strided& s, i64 i) {
    if (s.rank == 1) return s.offset + i * s.stride[0];
    i64 off = s.offset;
    if (s.small && i < 0x7fffffffLL) {
        unsigned u = (unsigned)i;
        for (int d = s.rank - 1; d >= 0; --d) {
            unsigned n = (unsigned)s.shape[d];
            off += (i64)(u % n) * s.stride[d];
            u /= n;
        }
        return off;
    }
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 n = s.shape[d];
        off += (i % n) * s.stride[d];
        i /= n;
    }
    return off;
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// unary op codes (must match CUDABackend.unaryCode)
__device__ __forceinline__ float unary(int op, float x, float a, float b) {
    switch (op) {
    case 0: return x;
    case 1: return -x;
    case 2: return fabsf(x);
    case 3: return x * x;
    case 4: return sqrtf(x);
    case 5: return 1.f / sqrtf(x);
    case 6: return expf(x);
    case 7: return logf(x);
    case 8: return tanhf(x);
    case 9: return 1.f / (1.f + expf(-x));
    case 10: return x > 0.f ? x : (x != x ? x : 0.f);
    case 11: return x / (1.f + expf(-x));
    case 12: { float c = 0.7978845608028654f; return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x))); }
    case 13: return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
    case 14: return x * a + b;
    case 15: return x != x ? x : fminf(fmaxf(x, a), b);
    case 16: return sinf(x);
    case 17: return cosf(x);
    }
    return x;
}

// ---- block reductions (blockDim.x == 256) ----
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? part[threadIdx.x] : 0.f;
    if (w == 0) v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
    __syncthreads();
    return part[0];
}
__device__ float block_max(float v) {
    __shared__ float part[32];
    v = warp_max(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? part[threadIdx.x] : -NB_INF;
    if (w == 0) v = warp_max(v);
    if (threadIdx.x == 0) part[0] = v;
    __syncthreads();
    return part[0];
}

// round v to dtype dt's precision (bf16 / fp16), as a store and a load would

__device__ __forceinline__ float round_to(float v, int dt) {
    if (dt == DT_BF16) return b2f(f2b(v));
    if (dt == DT_F16) return h2f(f2h(v));
    return v;
}

// ---- fp8 e4m3fn (NewBieTensor/QuantizedOps.swift: FloatE4M3, the definitions these follow) ----

// float -> float8_e4m3fn bits exactly as torch 2.15's cast (FloatE4M3.encode): round to nearest
// even, saturating at +-448 (infinities included); NaN stays NaN (0x7f). The format has no inf.
__device__ __forceinline__ unsigned char q_e4m3(float f) {
    unsigned bits = __float_as_uint(f);
    unsigned sign = bits & 0x80000000u;
    bits ^= sign;
    unsigned r;
    if (bits > 0x7f800000u) {
        r = 0x7f;
    } else if (bits >= (1087u << 20)) {
        r = 0x7e;
    } else if (bits < (121u << 23)) {
        // subnormal range: in x + 2^14 the last mantissa bit weighs 2^-9, e4m3's subnormal step,
        // so the fp32 add rounds x to that step (nearest even) and the low bits are the code
        float d = __uint_as_float(bits) + __uint_as_float(141u << 23);
        r = __float_as_uint(d) - (141u << 23);
    } else {
        unsigned odd = (bits >> 20) & 1u;
        bits += ((unsigned)(7 - 127) << 23) + 0x7ffffu;
        bits += odd;
        r = bits >> 20;
        if (r > 0x7eu) r = 0x7eu;  // (464, 480) rounds to the NaN code: saturate to 448
    }
    return (unsigned char)(r | (sign >> 24));
}

// The larger of two magnitudes' float bits (non-negative floats order like their bits; a NaN's
// bits are above infinity's, so a NaN wins, as in FloatE4M3.quantizeRow).
__device__ __forceinline__ unsigned umax_bits(unsigned a, unsigned b) { return a > b ? a : b; }

// A row's scale from its maximum magnitude's bits: amax / 448, 1 for 0 or NaN (FloatE4M3.scale).
__device__ __forceinline__ float e4m3_row_scale(unsigned amaxBits) {
    const float a = __uint_as_float(amaxBits);
    return a > 0.f ? a / 448.f : 1.f;
}

// The maximum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every
// thread. Once per kernel (one row per block): its shared cells are not reused.
__device__ unsigned block_umax(unsigned v) {
    __shared__ unsigned part[32];
    __shared__ unsigned total;
    for (int o = 16; o > 0; o >>= 1) v = umax_bits(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned b = 0u;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) b = umax_bits(b, part[w]);
        total = b;
    }
    __syncthreads();
    return total;
}

// The maximum of v over the warp, returned to every lane.
__device__ __forceinline__ unsigned warp_umax(unsigned v) {
    for (int o = 16; o > 0; o >>= 1) v = umax_bits(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
// Two e4m3 codes (lo in the low byte) by the hardware conversion of sm_89+: round to nearest even,
// saturating at +-448, what q_e4m3 computes for every value but a NaN (the instruction drops its sign).
__device__ __forceinline__ unsigned e4m3x2(float lo, float hi) {
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

// What quantizing one row needs: its scale s (FloatE4M3.scale) and, for the fast path, r = RN(1/s).
// With r, x / s is y = RN(x r) corrected by one FMA: RN(y + r (x - s y)) is the correctly rounded
// quotient when r is the correctly rounded reciprocal (Markstein's theorem), so the codes equal
// those of the division; a zero y is kept as is (the correction would lose -0's sign). Rows with a
// NaN, or whose reciprocal overflows, take the division and the software conversion.
struct E4M3Row { float s, r; bool fast; };
__device__ __forceinline__ E4M3Row e4m3_row(unsigned amaxBits) {
    E4M3Row q;
    q.s = e4m3_row_scale(amaxBits);
    q.r = __frcp_rn(q.s);
    q.fast = amaxBits <= 0x7f800000u && isfinite(q.r);
    return q;
}

// The codes of 8 values divided by the row scale, packed little-endian into 8 bytes.
__device__ __forceinline__ uint2 e4m3_pack8(const float* f, const E4M3Row& row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if (row.fast) {
        float q[8];
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            const float y = f[j] * row.r;
            const float c = fmaf(fmaf(-y, row.s, f[j]), row.r, y);
            q[j] = y == 0.f ? y : c;
        }
        return make_uint2(e4m3x2(q[0], q[1]) | (e4m3x2(q[2], q[3]) << 16), e4m3x2(q[4], q[5]) | (e4m3x2(q[6], q[7]) << 16));
    }
#endif
    unsigned c[8];
    #pragma unroll
    for (int j = 0; j < 8; j++) c[j] = q_e4m3(f[j] / row.s);
    return make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24), c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24));
}

// SiLU for the 16-bit SwiGLU kernels, whose result is rounded to 16 bits at once: the fast
// exponential and reciprocal (a few fp32 ulps, far below a 16-bit step; the generic kernel and the
// CPU keep the exact forms, the checks compare at 16-bit tolerances).
__device__ __forceinline__ float silu16(float x) { return __fdividef(x, 1.f + __expf(-x)); }

// 16-byte vectors per thread a one-block-per-row kernel holds in registers. The launcher sizes the
// block to the row (CUDABackend.rowBlock: whole warps, up to 1024 threads), so rows up to
// 1024 x 4 x 8 = 32768 16-bit values; few held vectors keep registers low and occupancy high.
#define RQ_VMAX 4
