// NewBie CUDA kernels for quantized linear layers (docs/QUANTIZATION.md): int8 weight-only
// dequantization into a 16/32-bit scratch weight, and fp8 e4m3 activation quantization (per-tensor
// amax, then scale and cast) for cuBLASLt's FP8 GEMM. Storage types, dtype codes, loads and stores from common.cuh.

#include "common.cuh"

// w[o, i] = q[o, i] * scale[o, i / group] in fp32, rounded once to the output type. Grid: y over
// rows (striding past 65535), x over each row's columns, 4 per thread; 32-bit column arithmetic
// (a row is far below 2^31 columns) and no division at all per channel (groups == 1).
extern "C" __global__ void nb_dequant_i8(const signed char* q, const float* scales, i64 rows, i64 cols,
                                         i64 groups, i64 group, void* out, int outType) {
    int ncols = (int)cols, g = (int)group, ng = (int)groups;
    for (i64 o = blockIdx.y; o < rows; o += gridDim.y) {
        const signed char* qr = q + o * cols;
        const float* sr = scales + o * groups;
        i64 base = o * cols;
        for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * 4; c < ncols; c += gridDim.x * blockDim.x * 4) {
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                int cc = c + j;
                if (cc < ncols) st(out, outType, base + cc, (float)qr[cc] * (ng == 1 ? sr[0] : sr[cc / g]));
            }
        }
    }
}

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

// Folds each thread's m (float bits of a magnitude) into *amax: warp maxima, then the block's,
// then one atomicMax per block. Every thread of the block must call it.
__device__ __forceinline__ void block_max_into(unsigned m, unsigned* amax) {
    __shared__ unsigned warpMax[32];
    for (int o = 16; o > 0; o >>= 1) { unsigned v = __shfl_xor_sync(0xffffffffu, m, o); m = m > v ? m : v; }
    if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned b = 0u;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) b = b > warpMax[w] ? b : warpMax[w];
        atomicMax(amax, b);
    }
}

// Zeroes the amax cell (kept on the device: no host round trip between the kernels and the GEMM).
extern "C" __global__ void nb_amax_reset(unsigned* amax) { *amax = 0u; }

// amax = max |x| over n elements, as float bits (non-negative floats order like their bits). A NaN
// in x gives NaN bits (above inf's): the scale falls back to 1, as torch.where(amax > 0, ...) does,
// the NaN element's code is NaN and the rows it reaches in the product come out NaN.
extern "C" __global__ void nb_absmax(const void* x, int dt, i64 n, unsigned* amax) {
    unsigned m = 0u;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        unsigned b = __float_as_uint(fabsf(ld(x, dt, i)));
        m = m > b ? m : b;
    }
    block_max_into(m, amax);
}

// scale = amax / 448 (1 when amax is 0); out = e4m3(x / scale); the scale is written for the GEMM.
extern "C" __global__ void nb_quant_e4m3(const void* x, int dt, i64 n, const unsigned* amax,
                                         unsigned char* out, float* scaleOut) {
    float a = __uint_as_float(*amax);
    float s = a > 0.f ? a / 448.f : 1.f;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scaleOut = s;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = q_e4m3(ld(x, dt, i) / s);
}

// ---- vectorised forms of the three kernels above, for contiguous 16-bit data whose length (and,
// for dequantization, row length) is a multiple of 8 at 16-byte-aligned addresses: 16-byte loads
// and 8- or 16-byte stores, same arithmetic per element (bit-identical results). The scalar forms
// moved 2 bytes per load and took 3-7x the memory-bound time on the H200 (fp8 DiT step: 34 ms of
// 148 in absmax + quantize).

// 8 16-bit values (bf16 when isBf16, else f16) of one 16-byte load, in fp32.
__device__ __forceinline__ void unpack8(uint4 v, bool isBf16, float* f) {
    unsigned w[4] = {v.x, v.y, v.z, v.w};
    #pragma unroll
    for (int j = 0; j < 4; j++) {
        u16 lo = (u16)(w[j] & 0xffffu), hi = (u16)(w[j] >> 16);
        f[2 * j] = isBf16 ? b2f(lo) : h2f(lo);
        f[2 * j + 1] = isBf16 ? b2f(hi) : h2f(hi);
    }
}

__device__ __forceinline__ unsigned pack2(float a, float b, bool isBf16) {
    u16 x = isBf16 ? f2b(a) : f2h(a), y = isBf16 ? f2b(b) : f2h(b);
    return (unsigned)x | ((unsigned)y << 16);
}

// nb_absmax over n8 groups of 8 16-bit values.
extern "C" __global__ void nb_absmax_v8(const uint4* x, int dt, i64 n8, unsigned* amax) {
    bool bf = dt == DT_BF16;
    unsigned m = 0u;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (i64)gridDim.x * blockDim.x) {
        float f[8];
        unpack8(x[i], bf, f);
        #pragma unroll
        for (int j = 0; j < 8; j++) { unsigned b = __float_as_uint(fabsf(f[j])); m = m > b ? m : b; }
    }
    block_max_into(m, amax);
}

// nb_quant_e4m3 over n8 groups of 8 16-bit values: 8 codes per 8-byte store.
extern "C" __global__ void nb_quant_e4m3_v8(const uint4* x, int dt, i64 n8, const unsigned* amax,
                                            uint2* out, float* scaleOut) {
    float a = __uint_as_float(*amax);
    float s = a > 0.f ? a / 448.f : 1.f;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scaleOut = s;
    bool bf = dt == DT_BF16;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (i64)gridDim.x * blockDim.x) {
        float f[8];
        unpack8(x[i], bf, f);
        unsigned c[8];
        #pragma unroll
        for (int j = 0; j < 8; j++) c[j] = q_e4m3(f[j] / s);
        out[i] = make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24), c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24));
    }
}

// nb_dequant_i8 into a 16-bit weight (outType DT_BF16 or DT_F16), 8 columns per thread.
extern "C" __global__ void nb_dequant_i8_v8(const uint2* q, const float* scales, i64 rows, i64 cols,
                                            i64 groups, i64 group, uint4* out, int outType) {
    int c8 = (int)(cols / 8), g = (int)group, ng = (int)groups;
    bool bf = outType == DT_BF16;
    for (i64 o = blockIdx.y; o < rows; o += gridDim.y) {
        const uint2* qr = q + o * c8;
        const float* sr = scales + o * groups;
        uint4* orow = out + o * c8;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < c8; c += gridDim.x * blockDim.x) {
            uint2 v = qr[c];
            unsigned w[2] = {v.x, v.y};
            float f[8];
            #pragma unroll
            for (int j = 0; j < 8; j++) {
                int col = c * 8 + j;
                float s = ng == 1 ? sr[0] : sr[col / g];
                f[j] = (float)(signed char)((w[j >> 2] >> (8 * (j & 3))) & 0xffu) * s;
            }
            orow[c] = make_uint4(pack2(f[0], f[1], bf), pack2(f[2], f[3], bf), pack2(f[4], f[5], bf), pack2(f[6], f[7], bf));
        }
    }
}
