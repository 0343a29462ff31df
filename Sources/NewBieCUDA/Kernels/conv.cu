// NewBie CUDA kernels: im2col for convolutions, channel fill (bias), nearest 2x upsampling.
// Compiled at run time by NVRTC for the running GPU. Every kernel loads its inputs as float, computes in
// float and rounds the result once to the output's storage type, as the CPU backend does.

#include "common.cuh"

// im2col for one image: col[(ci*kh+ky)*kw+kx, oy*ow+ox] in dtype `cdt` (= compute dtype of the GEMM)
extern "C" __global__ void nb_im2col(const void* x, int dt, i64 xoff, void* col, int cdt, int Cin, int H, int W, int kh, int kw,
                                     int sh, int sw, int pt, int pl, int oh, int ow) {
    const i64 n = (i64)oh * ow;
    const i64 total = (i64)Cin * kh * kw * n;
    GRID_STRIDE(i, total) {
        i64 kk = i / n, p = i % n;
        int ci = (int)(kk / (kh * kw)), ky = (int)((kk / kw) % kh), kx = (int)(kk % kw);
        int oy = (int)(p / ow), ox = (int)(p % ow);
        int iy = oy * sh - pt + ky, ix = ox * sw - pl + kx;
        float v = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? ld(x, dt, xoff + ((i64)ci * H + iy) * W + ix) : 0.f;
        st(col, cdt, i, v);
    }
}

// The same columns when x and col share a dtype: a raw copy of T (2 or 4 bytes) with 32-bit index
// math and more work per thread: grid (pixel blocks, Cin), each thread takes 4 output pixels of one
// input channel and writes their kh x kw rows. (The grid-stride version above spent a 1024x1024 VAE
// decode's time in 64-bit divisions and per-element dtype switches.)
template <typename T>
__device__ void im2col_same(const T* x, T* col, int Cin, int H, int W, int kh, int kw, int sh, int sw, int pt, int pl, int oh, int ow) {
    const int n = oh * ow, ci = blockIdx.y;
    const int p0 = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (p0 >= n) return;
    const T* xc = x + (size_t)ci * H * W;
    int oy[4], ox[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) { const int p = p0 + e; oy[e] = p / ow; ox[e] = p - oy[e] * ow; }
    const int cnt = n - p0 < 4 ? n - p0 : 4;
    for (int ky = 0; ky < kh; ++ky) {
        for (int kx = 0; kx < kw; ++kx) {
            T* dst = col + (size_t)((ci * kh + ky) * kw + kx) * n + p0;
            T v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int iy = oy[e] * sh - pt + ky, ix = ox[e] * sw - pl + kx;
                v[e] = (e < cnt && iy >= 0 && iy < H && ix >= 0 && ix < W) ? xc[iy * W + ix] : (T)0;
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) if (e < cnt) dst[e] = v[e];
        }
    }
}
extern "C" __global__ void nb_im2col_u16(const u16* x, u16* col, int Cin, int H, int W, int kh, int kw, int sh, int sw, int pt, int pl,
                                         int oh, int ow) { im2col_same<u16>(x, col, Cin, H, W, kh, kw, sh, sw, pt, pl, oh, ow); }
extern "C" __global__ void nb_im2col_u32(const unsigned* x, unsigned* col, int Cin, int H, int W, int kh, int kw, int sh, int sw, int pt,
                                         int pl, int oh, int ow) { im2col_same<unsigned>(x, col, Cin, H, W, kh, kw, sh, sw, pt, pl, oh, ow); }

// The 16-bit 3-wide stride-1 case (every VAE decoder convolution), when output rows are whole
// multiples of 8 pixels: each thread takes 8 pixels of one output row, reads the kh input row
// segments they need once (10 values each) and writes each of the kh x 3 column rows as one
// 16-byte store (the 4-pixel kernel above issues 36 two-byte stores per 4 pixels).
extern "C" __global__ void nb_im2col_u16_k3w8(const u16* x, u16* col, int Cin, int H, int W, int kh, int pt, int pl, int oh, int ow) {
    const int n = oh * ow, ci = blockIdx.y;
    const int p0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (p0 >= n) return;
    const int oy = p0 / ow, ox0 = p0 - oy * ow;   // ow % 8 == 0: the 8 pixels share a row
    const u16* xc = x + (size_t)ci * H * W;
    for (int ky = 0; ky < kh; ++ky) {
        const int iy = oy - pt + ky;
        const bool rowIn = iy >= 0 && iy < H;
        u16 r[10];
#pragma unroll
        for (int e = 0; e < 10; ++e) {
            const int ix = ox0 - pl + e;
            r[e] = (rowIn && ix >= 0 && ix < W) ? xc[(size_t)iy * W + ix] : (u16)0;
        }
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
            nb_v16 q;
#pragma unroll
            for (int e = 0; e < 4; ++e) q.w[e] = (unsigned)r[kx + 2 * e] | ((unsigned)r[kx + 2 * e + 1] << 16);
            *(nb_v16*)(col + (size_t)((ci * kh + ky) * 3 + kx) * n + p0) = q;
        }
    }
}

// out [B, C, S] = bias[C] (the start of a convolution's accumulation)
extern "C" __global__ void nb_channel_fill(void* out, int dt, const void* bias, int bdt, i64 C, i64 S, i64 total) {
    GRID_STRIDE(i, total) { st(out, dt, i, ld(bias, bdt, (i / S) % C)); }
}

extern "C" __global__ void nb_upsample2x(const void* x, int dt, i64 xoff, void* out, i64 planes, i64 H, i64 W) {
    const i64 total = planes * 4 * H * W;
    GRID_STRIDE(i, total) {
        i64 ox = i % (2 * W), oy = (i / (2 * W)) % (2 * H), pl = i / (4 * H * W);
        st(out, dt, i, ld(x, dt, xoff + (pl * H + oy / 2) * W + ox / 2));
    }
}
