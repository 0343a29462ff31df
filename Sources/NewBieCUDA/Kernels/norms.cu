// NewBie CUDA kernels: reductions, softmax, RMSNorm, LayerNorm, GroupNorm.
// Compiled at run time by NVRTC for the running GPU. Every kernel loads its inputs as float, computes in
// float and rounds the result once to the output's storage type, as the CPU backend does.

#include "common.cuh"

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

// Softmax rows for attention by matrix products (CUDAAttention.swift, head dims the flash kernels
// do not take): s fp32 [rows, n] raw scores Q K^T; p (bf16/f16, dt) = exp(scale * (s - rowmax)),
// unnormalised and rounded once, which the P V product reads; sum fp32 [rows] = the sum of the
// unrounded p. The same arithmetic as the flash kernels (P rounded for its product, the row sum in
// fp32). Pass 1 keeps a running max and sum per thread (merged across the block), pass 2 writes p.
extern "C" __global__ void nb_softmax_rows_p16(const float* s, void* p, int dt, float* sum, i64 n, float scale) {
    const i64 row = blockIdx.x;
    const float* x = s + row * n;
    const float k = scale * 1.4426950408889634f;   // exp(scale * d) = exp2(k * d)
    float m = -NB_INF, l = 0.f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        float v = x[j];
        if (v > m) { l = l * exp2f(k * (m - v)) + 1.f; m = v; } else l += exp2f(k * (v - m));
    }
    const float rowMax = block_max(m);
    l = (m == -NB_INF) ? 0.f : l * exp2f(k * (m - rowMax));
    const float total = block_sum(l);
    if (threadIdx.x == 0) sum[row] = total;
    const i64 base = row * n;
    u16* out = (u16*)p;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = exp2f(k * (x[j] - rowMax));
        out[base + j] = dt == DT_BF16 ? f2b(e) : f2h(e);
    }
}

// style 0: normalise, round to the weight dtype (when reduced), times weight; style 1: Gemma x*r*(1+w)

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

// ---- fused GroupNorm (+ SiLU), typed and vectorised (the VAE's resnet norms) ----
// Two kernels instead of five passes plus a separate SiLU: `nb_gn_chunk_stats` reads each chunk of
// a group twice (the second time from L2) for its own mean and centred sum of squares; each block
// of `nb_gn_apply` merges its group's chunks (Chan's formula: M2 = sum M2_k + n_k (mean_k - mean)^2,
// as stable as two passes over the whole group), then normalises as the CPU does (x scale + shift,
// scale = rstd w, shift = b - mean scale), rounds to the storage type, applies SiLU when asked and
// writes once. DT is the storage type's code, VEC elements travel as one 16-byte load (1: scalar).

template <int DT, int VEC>
__device__ __forceinline__ void gn_load(const void* p, i64 i, float* v) {
    if (VEC == 1) { v[0] = ld(p, DT, i); return; }
    nb_v16 q = DT == DT_F32 ? *(const nb_v16*)((const float*)p + i) : *(const nb_v16*)((const u16*)p + i);
    if (DT == DT_F32) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = __uint_as_float(q.w[e]);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const u16 h = (u16)(q.w[e / 2] >> (16 * (e % 2)));
            v[e] = DT == DT_BF16 ? b2f(h) : h2f(h);
        }
    }
}

template <int DT, int VEC>
__device__ __forceinline__ void gn_store(void* p, i64 i, const float* v) {
    if (VEC == 1) { st(p, DT, i, v[0]); return; }
    nb_v16 q;
    if (DT == DT_F32) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) q.w[e] = __float_as_uint(v[e]);
        *(nb_v16*)((float*)p + i) = q;
    } else {
#pragma unroll
        for (int e = 0; e < VEC / 2; ++e) {
            const u16 lo = DT == DT_BF16 ? f2b(v[2 * e]) : f2h(v[2 * e]);
            const u16 hi = DT == DT_BF16 ? f2b(v[2 * e + 1]) : f2h(v[2 * e + 1]);
            q.w[e] = (unsigned)lo | ((unsigned)hi << 16);
        }
        *(nb_v16*)((u16*)p + i) = q;
    }
}

// grid (chunks, B*G); x [B, C, S] contiguous from xoff (a multiple of VEC), a group's n = C/G x S
// elements contiguous. part[(bg * chunks + c) * 2 + {0, 1}] = the chunk's mean and M2. Chunks are
// `len` long (a multiple of VEC), the last one shorter.
template <int DT, int VEC>
__device__ void gn_chunk_stats(const void* x, i64 xoff, float* part, i64 n, i64 len, int chunks) {
    const int c = blockIdx.x;
    const i64 bg = blockIdx.y;
    const i64 begin = (i64)c * len, end = begin + len < n ? begin + len : n;
    const i64 base = xoff + bg * n;
    float v[VEC];
    float s = 0.f;
    for (i64 j = begin + (i64)threadIdx.x * VEC; j < end; j += (i64)blockDim.x * VEC) {
        gn_load<DT, VEC>(x, base + j, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += v[e];
    }
    const float cnt = (float)(end > begin ? end - begin : 0);
    const float mean = cnt > 0.f ? block_sum(s) / cnt : 0.f;
    float q = 0.f;
    for (i64 j = begin + (i64)threadIdx.x * VEC; j < end; j += (i64)blockDim.x * VEC) {
        gn_load<DT, VEC>(x, base + j, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) { const float d = v[e] - mean; q += d * d; }
    }
    q = block_sum(q);
    if (threadIdx.x == 0) { part[(bg * chunks + c) * 2] = mean; part[(bg * chunks + c) * 2 + 1] = q; }
}

// grid (blocks along a plane, B*C); the statistics merged from the group's chunks, then the plane
// (S elements, a multiple of VEC) normalised.
template <int DT, int VEC>
__device__ void gn_apply(const void* x, i64 xoff, const void* w, const void* b, int wdt, void* out, const float* part,
                         i64 C, i64 S, int G, i64 len, int chunks, float eps, int silu) {
    const i64 plane = blockIdx.y;            // batch * C + channel
    const i64 ch = plane % C, bg = (plane / C) * G + ch / (C / G);
    const i64 n = (C / G) * S;
    const float* pp = part + bg * chunks * 2;
    float s = 0.f;
    for (int k = threadIdx.x; k < chunks; k += blockDim.x) {
        const i64 begin = (i64)k * len, end = begin + len < n ? begin + len : n;
        s += (float)(end - begin) * pp[2 * k];
    }
    const float mean = block_sum(s) / (float)n;
    float m2 = 0.f;
    for (int k = threadIdx.x; k < chunks; k += blockDim.x) {
        const i64 begin = (i64)k * len, end = begin + len < n ? begin + len : n;
        const float d = pp[2 * k] - mean;
        m2 += pp[2 * k + 1] + (float)(end - begin) * d * d;
    }
    const float rstd = rsqrtf(block_sum(m2) / (float)n + eps);
    const float scale = w ? rstd * ld(w, wdt, ch) : rstd;
    const float shift = (b ? ld(b, wdt, ch) : 0.f) - mean * scale;
    float v[VEC];
    for (i64 j = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * VEC; j < S; j += (i64)blockDim.x * gridDim.x * VEC) {
        gn_load<DT, VEC>(x, xoff + plane * S + j, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            float y = round_to(__fadd_rn(__fmul_rn(v[e], scale), shift), DT);  // the GroupNorm's own rounding
            v[e] = silu ? y / (1.f + expf(-y)) : y;
        }
        gn_store<DT, VEC>(out, plane * S + j, v);
    }
}

#define NB_GN_KERNELS(SUF, DT, VEC) \
extern "C" __global__ void nb_gn_chunk_stats_##SUF(const void* x, i64 xoff, float* part, i64 n, i64 len, int chunks) { \
    gn_chunk_stats<DT, VEC>(x, xoff, part, n, len, chunks); } \
extern "C" __global__ void nb_gn_apply_##SUF(const void* x, i64 xoff, const void* w, const void* b, int wdt, void* out, \
    const float* part, i64 C, i64 S, int G, i64 len, int chunks, float eps, int silu) { \
    gn_apply<DT, VEC>(x, xoff, w, b, wdt, out, part, C, S, G, len, chunks, eps, silu); }
NB_GN_KERNELS(f32, DT_F32, 1)
NB_GN_KERNELS(f16, DT_F16, 1)
NB_GN_KERNELS(bf16, DT_BF16, 1)
NB_GN_KERNELS(f32x4, DT_F32, 4)
NB_GN_KERNELS(f16x8, DT_F16, 8)
NB_GN_KERNELS(bf16x8, DT_BF16, 8)
