// NewBie CUDA kernels for quantized linear layers (docs/QUANTIZATION.md): int8 weight-only
// dequantization into a 16/32-bit scratch weight, and the per-row fp8 e4m3 quantization of
// activations for cuBLASLt's FP8 GEMM (the fused producers are in fused.cu). Storage types, dtype
// codes, loads and stores, and the e4m3 cast from common.cuh.

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

// ---- vectorised forms for contiguous 16-bit data whose row length is a multiple of 8 at 16-byte-
// aligned addresses: 16-byte loads and 8- or 16-byte stores, same arithmetic per element
// (bit-identical results). Scalar forms moved 2 bytes per load and took 3-7x the memory-bound time
// on the H200.

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

// ---- per-row e4m3 codes of activations (FloatE4M3.quantizeRow): one block per row (grid = rows),
// scale = max|row| / 448 (1 for a zero or NaN maximum), codes = e4m3(x / scale). The row is read
// once: the 8-wide form keeps it in registers between the maximum and the codes.

// Any dtype, any row length: a maximum pass, then a quantize pass over the same row (cached).
extern "C" __global__ void nb_quant_rows_e4m3(const void* x, int dt, i64 k, unsigned char* codes, float* scales) {
    const i64 base = (i64)blockIdx.x * k;
    unsigned m = 0u;
    for (i64 j = threadIdx.x; j < k; j += blockDim.x) m = umax_bits(m, __float_as_uint(fabsf(ld(x, dt, base + j))));
    const float s = e4m3_row_scale(block_umax(m));
    if (threadIdx.x == 0) scales[blockIdx.x] = s;
    for (i64 j = threadIdx.x; j < k; j += blockDim.x) codes[base + j] = q_e4m3(ld(x, dt, base + j) / s);
}

// 16-bit rows (bf16 when dt is DT_BF16, else f16) of k8 groups of 8, at most blockDim.x * RQ_VMAX groups.
extern "C" __global__ void nb_quant_rows_e4m3_v8(const uint4* x, int dt, int k8, uint2* codes, float* scales) {
    const bool bf = dt == DT_BF16;
    const uint4* xr = x + (size_t)blockIdx.x * k8;
    uint4 held[RQ_VMAX];
    unsigned m = 0u;
    #pragma unroll
    for (int i = 0; i < RQ_VMAX; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < k8) {
            held[i] = xr[c];
            float f[8];
            unpack8(held[i], bf, f);
            #pragma unroll
            for (int j = 0; j < 8; j++) m = umax_bits(m, __float_as_uint(fabsf(f[j])));
        }
    }
    const E4M3Row q = e4m3_row(block_umax(m));
    if (threadIdx.x == 0) scales[blockIdx.x] = q.s;
    uint2* cr = codes + (size_t)blockIdx.x * k8;
    #pragma unroll
    for (int i = 0; i < RQ_VMAX; i++) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < k8) { float f[8]; unpack8(held[i], bf, f); cr[c] = e4m3_pack8(f, q); }
    }
}

// out[r, o] = acc[r, o] * (xs[r] * ws[o]) + bias[o], rounded once to outType: the scales of an fp8
// product that cuBLASLt ran unscaled (no outer-vector scaling in older versions), the bias (nullable)
// in the output's dtype.
extern "C" __global__ void nb_fp8_rescale(const float* acc, const float* xs, const float* ws, const void* bias,
                                          void* out, int outType, i64 m, i64 n) {
    GRID_STRIDE(i, m * n) {
        const i64 r = i / n, o = i - r * n;
        float v = acc[i] * (xs[r] * ws[o]);
        if (bias) v = v + ld(bias, outType, o);
        st(out, outType, i, v);
    }
}

// nb_fp8_rescale for bf16 outputs, in place: out [m, n] holds the unscaled product rounded to bf16;
// out[r, o] = bf16(out[r, o] * (xs[r] * ws[o]) (+ bias[o])), 8 columns per thread (n % 8 == 0,
// rows and ws 16-byte aligned), rows over grid.y.
extern "C" __global__ void nb_fp8_rescale_bf16_v8(u16* out, const float* xs, const float* ws, const u16* bias, i64 m, i64 n) {
    const i64 c8 = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c8 * 8 >= n) return;
    const float4 wa = ((const float4*)ws)[2 * c8], wb = ((const float4*)ws)[2 * c8 + 1];
    const float w[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
    for (i64 r = blockIdx.y; r < m; r += gridDim.y) {
        uint4* p = (uint4*)(out + r * n) + c8;
        uint4 v = *p;
        u16* h = (u16*)&v;
        const float s = xs[r];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float x = b2f(h[j]) * (s * w[j]);
            if (bias) x = x + b2f(bias[c8 * 8 + j]);
            h[j] = f2b(x);
        }
        *p = v;
    }
}

// out[i] = e4m3 value of codes[i] times its row's scale (scales[i / k]; scales[0] for all when not
// perRow), in fp32, rounded once to outType (FloatE4M3.decodeRows): fp8 operands widened for a
// 16-bit GEMM where the FP8 one does not apply, without a trip to the host.
extern "C" __global__ void nb_decode_e4m3_rows(const unsigned char* codes, const float* scales, i64 k, i64 n, int perRow,
                                               void* out, int outType) {
    GRID_STRIDE(i, n) {
        const unsigned c = codes[i], e = (c >> 3) & 15u, m = c & 7u;
        float v;
        if (e == 15u && m == 7u) v = __uint_as_float(0x7fc00000u);
        else if (e == 0u) v = (float)m * 0.001953125f;                          // m * 2^-9, exact
        else v = __uint_as_float(((e + 120u) << 23) | (m << 20));               // (1 + m/8) * 2^(e-7)
        if (c & 0x80u) v = -v;
        st(out, outType, i, v * scales[perRow ? i / k : 0]);
    }
}
