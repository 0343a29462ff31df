// NewBie CUDA kernels: rotary embedding and the reference attention (flash.cu has the fast one).
// Compiled at run time by NVRTC for the running GPU. Every kernel loads its inputs as float, computes in
// float and rounds the result once to the output's storage type, as the CPU backend does.

#include "common.cuh"

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
