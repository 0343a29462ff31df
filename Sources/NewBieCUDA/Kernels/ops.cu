// NewBie CUDA kernels: element-wise, reductions, norms, rotary embedding, attention, im2col.
// Compiled at run time by NVRTC for the running GPU; self-contained (no CUDA headers).
// Every kernel loads its inputs as float, computes in float and rounds the result once to the
// output's storage type, as the CPU backend does.

#define NB_INF __int_as_float(0x7f800000)
typedef unsigned short u16;
typedef long long i64;

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

extern "C" __global__ void nb_copy(const void* src, int sdt, Strided s, void* dst, int ddt, Strided d, i64 n) {
    GRID_STRIDE(i, n) { st(dst, ddt, where(d, i), ld(src, sdt, where(s, i))); }
}

// same dtype, any strides: raw element copy (keeps NaN payloads and every bit)
extern "C" __global__ void nb_copy_raw(const void* src, Strided s, void* dst, Strided d, i64 n, int bytes) {
    GRID_STRIDE(i, n) {
        i64 a = where(s, i), b = where(d, i);
        if (bytes == 4) ((unsigned*)dst)[b] = ((const unsigned*)src)[a];
        else if (bytes == 2) ((u16*)dst)[b] = ((const u16*)src)[a];
        else if (bytes == 8) ((unsigned long long*)dst)[b] = ((const unsigned long long*)src)[a];
        else ((unsigned char*)dst)[b] = ((const unsigned char*)src)[a];
    }
}

extern "C" __global__ void nb_fill(void* dst, int dt, i64 n, float v) {
    GRID_STRIDE(i, n) { st(dst, dt, i, v); }
}

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

extern "C" __global__ void nb_unary(const void* x, int xdt, Strided xs, void* out, int odt, i64 n, int op, float a, float b) {
    GRID_STRIDE(i, n) { st(out, odt, i, unary(op, ld(x, xdt, where(xs, i)), a, b)); }
}

extern "C" __global__ void nb_binary(const void* a, int adt, Strided as, const void* b, int bdt, Strided bs,
                                     void* out, int odt, i64 n, int op) {
    GRID_STRIDE(i, n) {
        float x = ld(a, adt, where(as, i)), y = ld(b, bdt, where(bs, i)), r;
        switch (op) {
        case 0: r = x + y; break;
        case 1: r = x - y; break;
        case 2: r = x * y; break;
        case 3: r = x / y; break;
        case 4: r = (x != x || y != y) ? __int_as_float(0x7fc00000) : fmaxf(x, y); break;
        default: r = (x != x || y != y) ? __int_as_float(0x7fc00000) : fminf(x, y); break;
        }
        st(out, odt, i, r);
    }
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

// x viewed as [outer, n, inner]; one block per output element. op: 0 sum, 1 mean, 2 max, 3 min, 4 sum of squares
extern "C" __global__ void nb_reduce(const void* x, int xdt, i64 xoff, void* out, int odt, i64 outer, i64 n, i64 inner, int op) {
    i64 idx = blockIdx.x;
    i64 o = idx / inner, in = idx % inner;
    const i64 base = xoff + o * n * inner + in;
    float acc = (op == 2) ? -NB_INF : (op == 3 ? NB_INF : 0.f);
    bool nan = false;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        float v = ld(x, xdt, base + j * inner);
        if (v != v) nan = true;
        if (op == 2) acc = fmaxf(acc, v);
        else if (op == 3) acc = fminf(acc, v);
        else if (op == 4) acc += v * v;
        else acc += v;
    }
    float r;
    if (op == 2) r = block_max(acc);
    else if (op == 3) r = -block_max(-acc);
    else r = block_sum(acc);
    float anyNan = block_sum(nan ? 1.f : 0.f);
    if (threadIdx.x == 0) {
        if (op == 1) r /= (float)n;
        if (anyNan > 0.f) r = __int_as_float(0x7fc00000);
        st(out, odt, idx, r);
    }
}

extern "C" __global__ void nb_softmax(const void* x, int dt, i64 xoff, void* out, i64 n) {
    const i64 row = blockIdx.x;
    const i64 base = xoff + row * n;
    float m = -NB_INF;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, ld(x, dt, base + j));
    m = block_max(m);
    float s = 0.f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += expf(ld(x, dt, base + j) - m);
    s = block_sum(s);
    float inv = 1.f / s;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) st(out, dt, row * n + j, expf(ld(x, dt, base + j) - m) * inv);
}

// style 0: normalise, round to the weight dtype (when reduced), times weight; style 1: Gemma x*r*(1+w)
__device__ __forceinline__ float round_to(float v, int dt) {
    if (dt == DT_BF16) return b2f(f2b(v));
    if (dt == DT_F16) return h2f(f2h(v));
    return v;
}

extern "C" __global__ void nb_rmsnorm(const void* x, int dt, i64 xoff, const void* w, int wdt, void* out, i64 d, float eps, int style) {
    const i64 row = blockIdx.x;
    const i64 base = xoff + row * d;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { float v = ld(x, dt, base + j); s += v * v; }
    s = block_sum(s);
    float r = rsqrtf(s / (float)d + eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = ld(x, dt, base + j) * r;
        if (w) {
            float wv = ld(w, wdt, j);
            v = (style == 0) ? round_to(v, wdt) * wv : v * (1.f + wv);
        }
        st(out, dt, row * d + j, v);
    }
}

extern "C" __global__ void nb_layernorm(const void* x, int dt, i64 xoff, const void* w, const void* b, int wdt, void* out, i64 d, float eps) {
    const i64 row = blockIdx.x;
    const i64 base = xoff + row * d;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += ld(x, dt, base + j);
    float mean = block_sum(s) / (float)d;
    float q = 0.f;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { float v = ld(x, dt, base + j) - mean; q += v * v; }
    float rstd = rsqrtf(block_sum(q) / (float)d + eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = (ld(x, dt, base + j) - mean) * rstd;
        if (w) v *= ld(w, wdt, j);
        if (b) v += ld(b, wdt, j);
        st(out, dt, row * d + j, v);
    }
}

// x [B, C, S] contiguous; one block per (batch, group)
extern "C" __global__ void nb_groupnorm(const void* x, int dt, i64 xoff, const void* w, const void* b, int wdt, void* out,
                                        i64 C, i64 S, int G, float eps) {
    const i64 bg = blockIdx.x;
    const int g = (int)(bg % G);
    const i64 cpg = C / G, n = cpg * S;
    const i64 start = bg * n;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += ld(x, dt, xoff + start + j);
    float mean = block_sum(s) / (float)n;
    float q = 0.f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) { float v = ld(x, dt, xoff + start + j) - mean; q += v * v; }
    float rstd = rsqrtf(block_sum(q) / (float)n + eps);
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        i64 ch = g * cpg + j / S;
        float v = (ld(x, dt, xoff + start + j) - mean) * rstd;
        if (w) v *= ld(w, wdt, ch);
        if (b) v += ld(b, wdt, ch);
        st(out, dt, start + j, v);
    }
}

// GroupNorm for large groups, in steps that spread each group over many blocks (one block per
// group left 100 of 132 SMs idle: 381 ms of a 1024x1024 VAE decode). x [B, C, S] contiguous, groups
// of n = C/G x S elements, split in `chunks` pieces; the same two-pass statistics as nb_groupnorm.
// partial: part[bg, c] = sum of the chunk of x (mean == nullptr) or of (x - mean[bg])^2.
extern "C" __global__ void nb_groupnorm_partial(const void* x, int dt, i64 xoff, float* part, const float* mean, i64 n, int chunks) {
    const int c = blockIdx.x;
    const i64 bg = blockIdx.y;
    const i64 len = (n + chunks - 1) / chunks, begin = c * len, end = begin + len < n ? begin + len : n;
    const float m = mean ? mean[bg] : 0.f;
    float acc = 0.f;
    for (i64 j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const float v = ld(x, dt, xoff + bg * n + j);
        acc += mean ? (v - m) * (v - m) : v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[bg * chunks + c] = acc;
}

// stats[bg] = sum of the group's partials / n (rsqrt(. + eps) when `rstd`), one thread per group
extern "C" __global__ void nb_groupnorm_stats(const float* part, float* stats, i64 groups, i64 n, int chunks, int rstd, float eps) {
    const i64 bg = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (bg >= groups) return;
    float t = 0.f;
    for (int k = 0; k < chunks; ++k) t += part[bg * chunks + k];
    stats[bg] = rstd ? rsqrtf(t / (float)n + eps) : t / (float)n;
}

// out = ((x - mean) rstd) w + b, blocks along one (batch, channel) plane each (grid y)
extern "C" __global__ void nb_groupnorm_apply(const void* x, int dt, i64 xoff, const void* w, const void* b, int wdt, void* out,
                                              const float* mean, const float* rstd, i64 C, i64 S, int G) {
    const i64 plane = blockIdx.y;            // b * C + ch
    const i64 ch = plane % C, bg = (plane / C) * G + ch / (C / G);
    const float m = mean[bg], r = rstd[bg];
    const float wv = w ? ld(w, wdt, ch) : 1.f, bv = b ? ld(b, wdt, ch) : 0.f;
    for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < S; j += (i64)blockDim.x * gridDim.x) {
        float v = (ld(x, dt, xoff + plane * S + j) - m) * r;
        if (w) v *= wv;
        if (b) v += bv;
        st(out, dt, plane * S + j, v);
    }
}

// x [B, L, H, D] contiguous; cos/sin f32 [Bt, L, D/2] with Bt in {1, B}; layout 0 interleaved, 1 rotate-half
extern "C" __global__ void nb_rope(const void* x, int dt, i64 xoff, const float* cs, const float* sn, void* out,
                                   i64 B, i64 L, i64 H, i64 D, int perSample, int layout) {
    const i64 half = D / 2;
    const i64 total = B * L * H * half;
    GRID_STRIDE(i, total) {
        i64 m = i % half;
        i64 bh = i / half;               // (b, l, h)
        i64 l = (bh / H) % L, b = bh / (H * L);
        i64 t = ((perSample ? b : 0) * L + l) * half + m;
        float c = cs[t], s = sn[t];
        i64 base = bh * D;
        i64 i0 = layout == 0 ? 2 * m : m, i1 = layout == 0 ? 2 * m + 1 : m + half;
        float x0 = ld(x, dt, xoff + base + i0), x1 = ld(x, dt, xoff + base + i1);
        st(out, dt, base + i0, x0 * c - x1 * s);
        st(out, dt, base + i1, x1 * c + x0 * s);
    }
}

// Reference attention: one warp per (batch, query row, head); keys visited one at a time with an
// online softmax. Correct for any shape; the fast path is a separate kernel.
// q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D/Dv] contiguous; out f32-or-dt [B, Lq, Hq, Dv].
struct AttnParams {
    i64 B, Lq, Lk, Hq, Hkv, D, Dv;
    float scale; int causal; int window;   // window <= 0: none
    int hasMask; int hasBias; i64 biasB, biasH;
};

#define MAXD 8   // head dims up to 256 (8 per lane)
extern "C" __global__ void nb_attention_ref(const void* q, const void* k, const void* v, int dt,
                                            const float* mask, const float* bias, void* out, AttnParams p) {
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const i64 total = p.B * p.Lq * p.Hq;
    if (warp >= total) return;
    const i64 h = warp % p.Hq, i = (warp / p.Hq) % p.Lq, b = warp / (p.Hq * p.Lq);
    const i64 kvh = h / (p.Hq / p.Hkv);
    float qv[MAXD], acc[MAXD];
    for (int t = 0; t < MAXD; ++t) {
        i64 d = lane + 32 * t;
        qv[t] = d < p.D ? ld(q, dt, ((b * p.Lq + i) * p.Hq + h) * p.D + d) : 0.f;
        acc[t] = 0.f;
    }
    const i64 shift = p.Lk - p.Lq;
    float m = -NB_INF, l = 0.f;
    for (i64 j = 0; j < p.Lk; ++j) {
        if (p.hasMask && mask[b * p.Lk + j] == 0.f) continue;
        if (p.causal) {
            if (j > i + shift) break;
            if (p.window > 0 && (i + shift) - j >= p.window) continue;
        }
        const i64 kb = ((b * p.Lk + j) * p.Hkv + kvh);
        float s = 0.f;
        for (int t = 0; t < MAXD; ++t) { i64 d = lane + 32 * t; if (d < p.D) s += qv[t] * ld(k, dt, kb * p.D + d); }
        s = warp_sum(s) * p.scale;
        if (p.hasBias) {
            i64 bb = p.biasB == 1 ? 0 : b, bh = p.biasH == 1 ? 0 : h;
            s += bias[((bb * p.biasH + bh) * p.Lq + i) * p.Lk + j];
        }
        if (s == -NB_INF) continue;
        float mn = fmaxf(m, s);
        float corr = m == -NB_INF ? 0.f : expf(m - mn);
        float e = expf(s - mn);
        l = l * corr + e;
        for (int t = 0; t < MAXD; ++t) { i64 d = lane + 32 * t; if (d < p.Dv) acc[t] = acc[t] * corr + e * ld(v, dt, kb * p.Dv + d); }
        m = mn;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int t = 0; t < MAXD; ++t) {
        i64 d = lane + 32 * t;
        if (d < p.Dv) st(out, dt, ((b * p.Lq + i) * p.Hq + h) * p.Dv + d, acc[t] * inv);
    }
}

// rows of table [V, D] picked by ids [N]
extern "C" __global__ void nb_embedding(const void* table, int tdt, const void* ids, int idt, void* out, int odt, i64 N, i64 D) {
    GRID_STRIDE(i, N * D) {
        i64 r = i / D, c = i % D;
        i64 id = idt == DT_I64 ? ((const i64*)ids)[r] : (i64)((const int*)ids)[r];
        st(out, odt, i, ld(table, tdt, id * D + c));
    }
}

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

// ---- fused transformer ops: one pass each, rounding where the unfused composition rounds ----

// out = round(round(round(x r, wdt) w) * round(1 + scale[b])), x rows of d, rowsPerSample rows per batch entry
extern "C" __global__ void nb_rmsnorm_mod(const void* x, int dt, const void* w, int wdt, const void* scale, int sdt,
                                          void* out, i64 d, i64 rowsPerSample, float eps) {
    const i64 row = blockIdx.x, bi = row / rowsPerSample;
    const i64 base = row * d;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { float v = ld(x, dt, base + j); s += v * v; }
    const float r = rsqrtf(block_sum(s) / (float)d + eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        float v = round_to(round_to(ld(x, dt, base + j) * r, wdt) * ld(w, wdt, j), dt);
        if (scale) v = v * round_to(ld(scale, sdt, bi * d + j) + 1.f, sdt);
        st(out, dt, base + j, v);
    }
}

// out = round(x + round(round(tanh(gate[b]), gdt) * round(round(y r, wdt) w)))
extern "C" __global__ void nb_rmsnorm_gate_res(const void* x, const void* y, int dt, const void* w, int wdt,
                                               const void* gate, int gdt, void* out, i64 d, i64 rowsPerSample, float eps) {
    const i64 row = blockIdx.x, bi = row / rowsPerSample;
    const i64 base = row * d;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) { float v = ld(y, dt, base + j); s += v * v; }
    const float r = rsqrtf(block_sum(s) / (float)d + eps);
    for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
        float n = round_to(round_to(ld(y, dt, base + j) * r, wdt) * ld(w, wdt, j), dt);
        if (gate) n = round_to(round_to(tanhf(ld(gate, gdt, bi * d + j)), gdt) * n, gdt);
        st(out, dt, base + j, ld(x, dt, base + j) + n);
    }
}

// out = round(round(silu(a)) * b)
extern "C" __global__ void nb_swiglu(const void* a, const void* b, int dt, void* out, i64 n) {
    GRID_STRIDE(i, n) {
        const float x = ld(a, dt, i);
        st(out, dt, i, round_to(x / (1.f + expf(-x)), dt) * ld(b, dt, i));
    }
}

// One warp per (token, head) of a fused projection [B*L, (Hq + 2 Hkv) * D]: q and k heads get
// RMSNorm (round, weight, round) then RoPE (fp32 tables, rounded once); v heads are copied.
extern "C" __global__ void nb_qkv_norm_rope(const void* qkv, int dt, const void* qw, const void* kw, int wdt,
                                            const float* cs, const float* sn, void* qo, void* ko, void* vo,
                                            i64 B, i64 L, i64 Hq, i64 Hkv, i64 D, int perSample, int layout, float eps) {
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const i64 H = Hq + 2 * Hkv;
    if (warp >= B * L * H) return;
    const i64 bl = warp / H, hh = warp % H;
    const i64 src = bl * H * D + hh * D;
    if (hh >= Hq + Hkv) {
        const i64 dst = (bl * Hkv + (hh - Hq - Hkv)) * D;
        for (i64 j = lane; j < D; j += 32) st(vo, dt, dst + j, ld(qkv, dt, src + j));
        return;
    }
    const bool isQ = hh < Hq;
    const void* w = isQ ? qw : kw;
    void* o = isQ ? qo : ko;
    const i64 dst = isQ ? (bl * Hq + hh) * D : (bl * Hkv + (hh - Hq)) * D;
    float s = 0.f;
    for (i64 j = lane; j < D; j += 32) { float v = ld(qkv, dt, src + j); s += v * v; }
    const float r = rsqrtf(warp_sum(s) / (float)D + eps);
    const i64 half = D / 2;
    const i64 b = bl / L, l = bl % L;
    const i64 t0 = ((perSample ? b : 0) * L + l) * half;
    for (i64 m = lane; m < half; m += 32) {
        const i64 i0 = layout == 0 ? 2 * m : m, i1 = layout == 0 ? 2 * m + 1 : m + half;
        const float n0 = round_to(round_to(ld(qkv, dt, src + i0) * r, wdt) * ld(w, wdt, i0), dt);
        const float n1 = round_to(round_to(ld(qkv, dt, src + i1) * r, wdt) * ld(w, wdt, i1), dt);
        const float c = cs[t0 + m], sv = sn[t0 + m];
        st(o, dt, dst + i0, n0 * c - n1 * sv);
        st(o, dt, dst + i1, n1 * c + n0 * sv);
    }
}

// ---- fast paths of the fused ops: one 16-bit dtype for every operand (bf16 or fp16), rows
// contiguous with d % 8 == 0 and 16-byte aligned. 16-byte vectors, one warp per row with the row
// held in registers, 32-bit index math. They round exactly where the generic kernels above do.

struct __align__(16) V8 { unsigned w[4]; };   // 8 x 16-bit
template <bool BF> __device__ __forceinline__ float tof(u16 v) { return BF ? b2f(v) : h2f(v); }
template <bool BF> __device__ __forceinline__ u16 fromf(float f) { return BF ? f2b(f) : f2h(f); }
template <bool BF> __device__ __forceinline__ float rnd(float f) { return tof<BF>(fromf<BF>(f)); }
template <bool BF> __device__ __forceinline__ void unpack(const V8& v, float* f) {
#pragma unroll
    for (int i = 0; i < 4; ++i) { f[2 * i] = tof<BF>((u16)(v.w[i] & 0xffff)); f[2 * i + 1] = tof<BF>((u16)(v.w[i] >> 16)); }
}
template <bool BF> __device__ __forceinline__ V8 pack(const float* f) {
    V8 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.w[i] = (unsigned)fromf<BF>(f[2 * i]) | ((unsigned)fromf<BF>(f[2 * i + 1]) << 16);
    return v;
}
#define ROW_VMAX 16   // vectors per lane: rows up to 32 x 16 x 8 = 4096 elements

// out = round(round(round(x r) w) * round(1 + scale[b])); one warp per row of d
template <bool BF>
__device__ void rmsnorm_mod_v(const u16* x, const u16* w, const u16* scale, u16* out, int rows, int d, int rowsPerSample, float eps) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int nv = d >> 3;
    const V8* xr = (const V8*)(x + (size_t)row * d);
    V8 xv[ROW_VMAX];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < ROW_VMAX; ++i) {
        const int c = lane + i * 32;
        if (c < nv) { xv[i] = xr[c]; float f[8]; unpack<BF>(xv[i], f); for (int e = 0; e < 8; ++e) ss += f[e] * f[e]; }
    }
    const float r = rsqrtf(warp_sum(ss) / (float)d + eps);
    const V8* wr = (const V8*)w;
    const V8* sr = scale ? (const V8*)(scale + (size_t)(row / rowsPerSample) * d) : nullptr;
    V8* orow = (V8*)(out + (size_t)row * d);
#pragma unroll
    for (int i = 0; i < ROW_VMAX; ++i) {
        const int c = lane + i * 32;
        if (c < nv) {
            float f[8], wf[8], sf[8];
            unpack<BF>(xv[i], f); unpack<BF>(wr[c], wf);
            if (sr) unpack<BF>(sr[c], sf);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float v = rnd<BF>(rnd<BF>(f[e] * r) * wf[e]);
                if (sr) v = v * rnd<BF>(sf[e] + 1.f);
                f[e] = v;
            }
            orow[c] = pack<BF>(f);
        }
    }
}

// out = round(x + round(round(tanh(gate[b])) * round(round(y r) w))); one warp per row of d
template <bool BF>
__device__ void rmsnorm_gate_res_v(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows, int d,
                                   int rowsPerSample, float eps) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int nv = d >> 3;
    const V8* yr = (const V8*)(y + (size_t)row * d);
    V8 yv[ROW_VMAX];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < ROW_VMAX; ++i) {
        const int c = lane + i * 32;
        if (c < nv) { yv[i] = yr[c]; float f[8]; unpack<BF>(yv[i], f); for (int e = 0; e < 8; ++e) ss += f[e] * f[e]; }
    }
    const float r = rsqrtf(warp_sum(ss) / (float)d + eps);
    const V8* xr = (const V8*)(x + (size_t)row * d);
    const V8* wr = (const V8*)w;
    const V8* gr = gate ? (const V8*)(gate + (size_t)(row / rowsPerSample) * d) : nullptr;
    V8* orow = (V8*)(out + (size_t)row * d);
#pragma unroll
    for (int i = 0; i < ROW_VMAX; ++i) {
        const int c = lane + i * 32;
        if (c < nv) {
            float f[8], wf[8], gf[8], xf[8];
            unpack<BF>(yv[i], f); unpack<BF>(wr[c], wf); unpack<BF>(xr[c], xf);
            if (gr) unpack<BF>(gr[c], gf);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float n = rnd<BF>(rnd<BF>(f[e] * r) * wf[e]);
                if (gr) n = rnd<BF>(rnd<BF>(tanhf(gf[e])) * n);
                f[e] = xf[e] + n;
            }
            orow[c] = pack<BF>(f);
        }
    }
}

// out = round(round(silu(a)) * b), 8 elements per thread
template <bool BF>
__device__ void swiglu_v(const u16* a, const u16* b, u16* out, long long nv) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nv; i += (long long)blockDim.x * gridDim.x) {
        float af[8], bf[8];
        unpack<BF>(((const V8*)a)[i], af); unpack<BF>(((const V8*)b)[i], bf);
#pragma unroll
        for (int e = 0; e < 8; ++e) af[e] = rnd<BF>(af[e] / (1.f + expf(-af[e]))) * bf[e];
        ((V8*)out)[i] = pack<BF>(af);
    }
}

// nb_qkv_norm_rope for the interleaved RoPE layout and D % 4 == 0, D <= 128: one warp per
// (token, head), four consecutive channels (two rotation pairs) per lane, 8-byte loads.
template <bool BF>
__device__ void qkv_norm_rope_v(const u16* qkv, const u16* qw, const u16* kw, const float* cs, const float* sn,
                                u16* qo, u16* ko, u16* vo, int L, int Hq, int Hkv, int D, int perSample, int tokens, float eps) {
    const unsigned warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int H = Hq + 2 * Hkv;
    if (warp >= (unsigned)tokens * H) return;
    const unsigned bl = warp / H;
    const int hh = warp - bl * H;
    const int c0 = lane * 4;
    const bool active = c0 < D;
    unsigned raw[2] = {0u, 0u};
    if (active) { const unsigned* src = (const unsigned*)(qkv + ((size_t)bl * H + hh) * D + c0); raw[0] = src[0]; raw[1] = src[1]; }
    if (hh >= Hq + Hkv) {
        if (active) { unsigned* dst = (unsigned*)(vo + ((size_t)bl * Hkv + (hh - Hq - Hkv)) * D + c0); dst[0] = raw[0]; dst[1] = raw[1]; }
        return;
    }
    float f[4] = {tof<BF>((u16)(raw[0] & 0xffff)), tof<BF>((u16)(raw[0] >> 16)), tof<BF>((u16)(raw[1] & 0xffff)), tof<BF>((u16)(raw[1] >> 16))};
    const float r = rsqrtf(warp_sum(f[0] * f[0] + f[1] * f[1] + f[2] * f[2] + f[3] * f[3]) / (float)D + eps);
    if (!active) return;
    const bool isQ = hh < Hq;
    const u16* w = isQ ? qw : kw;
    u16* o = isQ ? qo + ((size_t)bl * Hq + hh) * D : ko + ((size_t)bl * Hkv + (hh - Hq)) * D;
    const unsigned b = bl / L, l = bl - b * L;
    const size_t t0 = ((size_t)(perSample ? b : 0) * L + l) * (D / 2) + lane * 2;
    float n[4], res[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) n[e] = rnd<BF>(rnd<BF>(f[e] * r) * tof<BF>(w[c0 + e]));
#pragma unroll
    for (int m = 0; m < 2; ++m) {
        const float c = cs[t0 + m], sv = sn[t0 + m];
        res[2 * m] = n[2 * m] * c - n[2 * m + 1] * sv;
        res[2 * m + 1] = n[2 * m + 1] * c + n[2 * m] * sv;
    }
    unsigned* dst = (unsigned*)(o + c0);
    dst[0] = (unsigned)fromf<BF>(res[0]) | ((unsigned)fromf<BF>(res[1]) << 16);
    dst[1] = (unsigned)fromf<BF>(res[2]) | ((unsigned)fromf<BF>(res[3]) << 16);
}

#define FAST_FUSED(T, BF) \
extern "C" __global__ void nb_rmsnorm_mod_##T(const u16* x, const u16* w, const u16* scale, u16* out, int rows, int d, \
                                              int rowsPerSample, float eps) { rmsnorm_mod_v<BF>(x, w, scale, out, rows, d, rowsPerSample, eps); } \
extern "C" __global__ void nb_rmsnorm_gate_res_##T(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows, \
                                                   int d, int rowsPerSample, float eps) { rmsnorm_gate_res_v<BF>(x, y, w, gate, out, rows, d, rowsPerSample, eps); } \
extern "C" __global__ void nb_swiglu_##T(const u16* a, const u16* b, u16* out, long long nv) { swiglu_v<BF>(a, b, out, nv); } \
extern "C" __global__ void nb_qkv_norm_rope_##T(const u16* qkv, const u16* qw, const u16* kw, const float* cs, const float* sn, \
                                                u16* qo, u16* ko, u16* vo, int L, int Hq, int Hkv, int D, int perSample, int tokens, float eps) { \
    qkv_norm_rope_v<BF>(qkv, qw, kw, cs, sn, qo, ko, vo, L, Hq, Hkv, D, perSample, tokens, eps); }
FAST_FUSED(bf16, true)
FAST_FUSED(f16, false)
