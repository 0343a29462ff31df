// NewBie CUDA kernels widening GGML blocks (GGUF Q8_0, Q5_0, Q4_0, Q6_K, Q5_K, Q4_K) held resident
// on the device into a 16/32-bit weight, one layer just before its GEMM (docs/QUANTIZATION.md).
// One thread per output value (coalesced stores; the block's scale bytes are re-read from cache).
// The fp32 arithmetic is BlockFormat.decode's (NewBieTensor/BlockFormats.swift), itself the gguf
// package's, in the same order; __fmul_rn/__fsub_rn keep NVRTC (--fmad=true) from fusing a
// multiply and a subtract into one rounding, which would change the last bit.

#include "common.cuh"

__device__ __forceinline__ float blk_f16(const unsigned char* p) { return h2f((u16)(p[0] | (p[1] << 8))); }

// Scale and min (6 bits each) of sub-block j of a Q4_K/Q5_K block's 12 packed scale bytes.
__device__ __forceinline__ void blk_scale_min_k4(int j, const unsigned char* q, int* sc, int* m) {
    if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
    else { *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

// Value j (0..<32) of a Q8_0 block: d (f16), 32 int8.
__device__ __forceinline__ float blk_q8_0(const unsigned char* p, int j) {
    return __fmul_rn((float)(signed char)p[2 + j], blk_f16(p));
}

// Q4_0: d, 16 bytes of nibbles (low: values 0..15, high: 16..31), offset 8.
__device__ __forceinline__ float blk_q4_0(const unsigned char* p, int j) {
    int q = j < 16 ? (p[2 + j] & 0x0F) : (p[2 + j - 16] >> 4);
    return __fmul_rn(blk_f16(p), (float)(q - 8));
}

// Q5_0: d, a u32 of fifth bits (bit j for value j), 16 bytes of nibbles, offset 16.
__device__ __forceinline__ float blk_q5_0(const unsigned char* p, int j) {
    unsigned qh = (unsigned)p[2] | ((unsigned)p[3] << 8) | ((unsigned)p[4] << 16) | ((unsigned)p[5] << 24);
    int lo = j < 16 ? (p[6 + j] & 0x0F) : (p[6 + j - 16] >> 4);
    int q = lo | (int)(((qh >> j) & 1u) << 4);
    return __fmul_rn(blk_f16(p), (float)(q - 16));
}

// Q4_K: d, dmin, 12 scale bytes, 128 bytes of nibbles; value = (d * sc) * q - (dmin * m) over 8
// sub-blocks of 32 (each 64-value chunk: low nibbles first, then high).
__device__ __forceinline__ float blk_q4_K(const unsigned char* p, int j) {
    int chunk = j >> 6, w = j & 63, l = w & 31, sub = 2 * chunk + (w >> 5);
    int sc, m;
    blk_scale_min_k4(sub, p + 4, &sc, &m);
    unsigned char b = p[16 + chunk * 32 + l];
    int q = w < 32 ? (b & 0x0F) : (b >> 4);
    float d = __fmul_rn(blk_f16(p), (float)sc), dm = __fmul_rn(blk_f16(p + 2), (float)m);
    return __fsub_rn(__fmul_rn(d, (float)q), dm);
}

// Q5_K: Q4_K's layout plus 32 bytes of fifth bits (bit 2*chunk for the low nibble, 2*chunk+1 high).
__device__ __forceinline__ float blk_q5_K(const unsigned char* p, int j) {
    int chunk = j >> 6, w = j & 63, l = w & 31, hi = w >> 5, sub = 2 * chunk + hi;
    int sc, m;
    blk_scale_min_k4(sub, p + 4, &sc, &m);
    unsigned char b = p[48 + chunk * 32 + l];
    int q = (hi ? (b >> 4) : (b & 0x0F)) | ((p[16 + l] >> sub) & 1 ? 16 : 0);
    float d = __fmul_rn(blk_f16(p), (float)sc), dm = __fmul_rn(blk_f16(p + 2), (float)m);
    return __fsub_rn(__fmul_rn(d, (float)q), dm);
}

// Q6_K: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d (f16) last; two halves of
// 128 values, each four quarters of 32 taking nibble and 2-bit field by quarter; offset 32.
__device__ __forceinline__ float blk_q6_K(const unsigned char* p, int j) {
    int half = j >> 7, r = j & 127, quarter = r >> 5, l = r & 31;
    const unsigned char* ql = p + half * 64;
    const unsigned char* qh = p + 128 + half * 32;
    const signed char* sc = (const signed char*)(p + 192 + half * 8);
    unsigned char low = ql[l + (quarter & 1) * 32];
    int q = ((quarter < 2 ? (low & 0x0F) : (low >> 4)) | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
    float s = (float)sc[(l >> 4) + 2 * quarter];
    return __fmul_rn(__fmul_rn(blk_f16(p + 208), s), (float)q);
}

// out[o, c] = value c of row o, whose blocks start at blocks + o * rowBytes. Grid: y over rows
// (striding past 65535), x over columns.
#define NB_DEQUANT_BLOCKS(NAME, FN, QK, BYTES)                                                          \
extern "C" __global__ void NAME(const unsigned char* blocks, i64 rows, i64 cols, i64 rowBytes,      \
                                void* out, int outType) {                                           \
    int ncols = (int)cols;                                                                          \
    for (i64 o = blockIdx.y; o < rows; o += gridDim.y) {                                            \
        const unsigned char* row = blocks + o * rowBytes;                                           \
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < ncols; c += gridDim.x * blockDim.x) \
            st(out, outType, o * cols + c, FN(row + (c / QK) * BYTES, c % QK));                     \
    }                                                                                               \
}

NB_DEQUANT_BLOCKS(nb_dequant_q8_0, blk_q8_0, 32, 34)
NB_DEQUANT_BLOCKS(nb_dequant_q5_0, blk_q5_0, 32, 22)
NB_DEQUANT_BLOCKS(nb_dequant_q4_0, blk_q4_0, 32, 18)
NB_DEQUANT_BLOCKS(nb_dequant_q6_K, blk_q6_K, 256, 210)
NB_DEQUANT_BLOCKS(nb_dequant_q5_K, blk_q5_K, 256, 176)
NB_DEQUANT_BLOCKS(nb_dequant_q4_K, blk_q4_K, 256, 144)
