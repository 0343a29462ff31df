// NewBie CUDA kernels: fused transformer ops (RMSNorm + modulation, gated residual, SwiGLU,
// QKV norm + RoPE), generic and 16-bit fast paths.
// The *_e4m3 forms write an fp8 layer's input as e4m3 codes with one scale per row instead of 16-bit
// values (the same codes as quantizing those values: FloatE4M3.quantizeRow). The *_sc forms read an
// fp8 layer's output before its scales (ScaledProduct): each loaded value v becomes
// round(v * (rowScale[row] * colScale[col])), the rounding of the rescale pass they replace.
// Compiled at run time by NVRTC for the running GPU. Every kernel loads its inputs as float, computes in
// float and rounds the result once to the output's storage type, as the CPU backend does.

#include "common.cuh"

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

// f[e] = round(f[e] * (rs * cs[e])) for 8 values whose column scales cs are 16-byte aligned.
template <bool BF> __device__ __forceinline__ void scale8(float* f, float rs, const float* cs) {
    const float4 a = ((const float4*)cs)[0], b = ((const float4*)cs)[1];
    const float c[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = rnd<BF>(f[e] * (rs * c[e]));
}

// A row of the norm kernels is held by one warp (BLOCK false: ROW_VMAX vectors per lane, 8 rows per
// 256-thread block) or by one block sized to it (BLOCK true: RQ_VMAX vectors per thread,
// CUDABackend.rowBlock; fewer registers per thread, so more rows in flight per SM). The two forms
// sum a row's squares in different orders; each is used for every norm of a run (NB_NORM_ROWS).
template <bool BLOCK> __device__ __forceinline__ int norm_row() {
    return BLOCK ? (int)blockIdx.x : (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
}
template <bool BLOCK> __device__ __forceinline__ int norm_thread() { return BLOCK ? (int)threadIdx.x : (int)(threadIdx.x & 31); }
template <bool BLOCK> __device__ __forceinline__ int norm_threads() { return BLOCK ? (int)blockDim.x : 32; }
template <bool BLOCK> __device__ __forceinline__ float norm_sum(float v) {
    if constexpr (BLOCK) return block_sum(v); else return warp_sum(v);
}
template <bool BLOCK> __device__ __forceinline__ unsigned norm_umax(unsigned v) {
    if constexpr (BLOCK) return block_umax(v); else return warp_umax(v);
}

// out = round(round(round(x r) w) * round(1 + scale[b])); one row of d per warp or block. With CODES, the
// row is written as e4m3 codes of those rounded values with one scale (FloatE4M3.quantizeRow)
// instead of 16-bit values: `out` unused, `codes` [rows, d] and `scales` [rows].
template <bool BF, bool CODES = false, bool BLOCK = false>
__device__ void rmsnorm_mod_v(const u16* x, const u16* w, const u16* scale, u16* out, int rows, int d, int rowsPerSample, float eps,
                              uint2* codes = nullptr, float* scales = nullptr) {
    constexpr int VM = BLOCK ? RQ_VMAX : ROW_VMAX;
    const int row = norm_row<BLOCK>(), lane = norm_thread<BLOCK>(), step = norm_threads<BLOCK>();
    if (row >= rows) return;   // (a whole warp, or never for the block form: grid = rows)
    const int nv = d >> 3;
    const V8* xr = (const V8*)(x + (size_t)row * d);
    V8 xv[VM];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < VM; ++i) { const int c = lane + i * step; if (c < nv) xv[i] = xr[c]; }
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        if (lane + i * step < nv) { float f[8]; unpack<BF>(xv[i], f); for (int e = 0; e < 8; ++e) ss += f[e] * f[e]; }
    }
    const float r = rsqrtf(norm_sum<BLOCK>(ss) / (float)d + eps);
    const V8* wr = (const V8*)w;
    const V8* sr = scale ? (const V8*)(scale + (size_t)(row / rowsPerSample) * d) : nullptr;
    V8* orow = (V8*)(out + (size_t)row * d);
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        const int c = lane + i * step;
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
            if (CODES) xv[i] = pack<BF>(f); else orow[c] = pack<BF>(f);
        }
    }
    if (!CODES) return;
    // the rounded row is back in xv: its maximum over the warp or block, then the codes
    unsigned m = 0u;
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        if (lane + i * step < nv) {
            float f[8]; unpack<BF>(xv[i], f);
            for (int e = 0; e < 8; ++e) m = umax_bits(m, __float_as_uint(fabsf(f[e])));
        }
    }
    const E4M3Row q = e4m3_row(norm_umax<BLOCK>(m));
    if (lane == 0) scales[row] = q.s;
    uint2* cr = codes + (size_t)row * nv;
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        const int c = lane + i * step;
        if (c < nv) { float f[8]; unpack<BF>(xv[i], f); cr[c] = e4m3_pack8(f, q); }
    }
}

// out = round(x + round(round(tanh(gate[b])) * round(round(y r) w))); one row of d per warp or block
// (the block form loads x with y, before the row's sum).
// With SC, y is an fp8 product before its scales (ys per row, yc per column, 16-byte aligned).
template <bool BF, bool SC = false, bool BLOCK = false>
__device__ void rmsnorm_gate_res_v(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows, int d,
                                   int rowsPerSample, float eps, const float* ys = nullptr, const float* yc = nullptr) {
    constexpr int VM = BLOCK ? RQ_VMAX : ROW_VMAX;
    const int row = norm_row<BLOCK>(), lane = norm_thread<BLOCK>(), step = norm_threads<BLOCK>();
    if (row >= rows) return;
    const int nv = d >> 3;
    const V8* yr = (const V8*)(y + (size_t)row * d);
    const V8* xr = (const V8*)(x + (size_t)row * d);
    V8 yv[VM], xv[BLOCK ? VM : 1];
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        const int c = lane + i * step;
        if (c < nv) { yv[i] = yr[c]; if (BLOCK) xv[BLOCK ? i : 0] = xr[c]; }
    }
    float ss = 0.f;
    const float rs = SC ? ys[row] : 1.f;
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        const int c = lane + i * step;
        if (c < nv) {
            float f[8]; unpack<BF>(yv[i], f);
            if (SC) { scale8<BF>(f, rs, yc + c * 8); yv[i] = pack<BF>(f); }
            for (int e = 0; e < 8; ++e) ss += f[e] * f[e];
        }
    }
    const float r = rsqrtf(norm_sum<BLOCK>(ss) / (float)d + eps);
    const V8* wr = (const V8*)w;
    const V8* gr = gate ? (const V8*)(gate + (size_t)(row / rowsPerSample) * d) : nullptr;
    V8* orow = (V8*)(out + (size_t)row * d);
#pragma unroll
    for (int i = 0; i < VM; ++i) {
        const int c = lane + i * step;
        if (c < nv) {
            float f[8], wf[8], gf[8], xf[8];
            unpack<BF>(yv[i], f); unpack<BF>(wr[c], wf); unpack<BF>(BLOCK ? xv[BLOCK ? i : 0] : xr[c], xf);
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
        for (int e = 0; e < 8; ++e) af[e] = rnd<BF>(silu16(af[e])) * bf[e];
        ((V8*)out)[i] = pack<BF>(af);
    }
}

// e4m3 codes and row scale of round(round(silu(a)) * b) (the values nb_swiglu_* writes), for rows of
// k = nv * 8: one block per row (sized to it: nv <= blockDim.x * RQ_VMAX), every load issued before
// the arithmetic, the rounded row held in registers between its maximum and its codes. With SC, a and
// b are fp8 products before their scales (rs per row, shared; ac and bc per column).
template <bool BF, bool SC = false>
__device__ void swiglu_e4m3_v(const u16* a, const u16* b, uint2* codes, float* scales, int nv,
                              const float* rs = nullptr, const float* ac = nullptr, const float* bc = nullptr) {
    const V8* ar = (const V8*)a + (size_t)blockIdx.x * nv;
    const V8* br = (const V8*)b + (size_t)blockIdx.x * nv;
    V8 va[RQ_VMAX], vb[RQ_VMAX];
#pragma unroll
    for (int i = 0; i < RQ_VMAX; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < nv) { va[i] = ar[c]; vb[i] = br[c]; }
    }
    const float r = SC ? rs[blockIdx.x] : 1.f;
    unsigned m = 0u;
#pragma unroll
    for (int i = 0; i < RQ_VMAX; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < nv) {
            float af[8], bf[8];
            unpack<BF>(va[i], af); unpack<BF>(vb[i], bf);
            if (SC) { scale8<BF>(af, r, ac + c * 8); scale8<BF>(bf, r, bc + c * 8); }
#pragma unroll
            for (int e = 0; e < 8; ++e) af[e] = rnd<BF>(silu16(af[e])) * bf[e];
            va[i] = pack<BF>(af);
            unpack<BF>(va[i], af);
#pragma unroll
            for (int e = 0; e < 8; ++e) m = umax_bits(m, __float_as_uint(fabsf(af[e])));
        }
    }
    const E4M3Row q = e4m3_row(block_umax(m));
    if (threadIdx.x == 0) scales[blockIdx.x] = q.s;
    uint2* cr = codes + (size_t)blockIdx.x * nv;
#pragma unroll
    for (int i = 0; i < RQ_VMAX; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < nv) { float f[8]; unpack<BF>(va[i], f); cr[c] = e4m3_pack8(f, q); }
    }
}

// nb_qkv_norm_rope for the interleaved RoPE layout and D % 4 == 0, D <= 128: one warp per
// (token, head), four consecutive channels (two rotation pairs) per lane, 8-byte loads.
// With SC, qkv is an fp8 product before its scales (ps per token, pc per column, 16-byte aligned).
template <bool BF, bool SC = false>
__device__ void qkv_norm_rope_v(const u16* qkv, const u16* qw, const u16* kw, const float* cs, const float* sn,
                                u16* qo, u16* ko, u16* vo, int L, int Hq, int Hkv, int D, int perSample, int tokens, float eps,
                                const float* ps = nullptr, const float* pc = nullptr) {
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
    if (SC && active) {
        const float4 cv = *(const float4*)(pc + (size_t)hh * D + c0);
        const float rs = ps[bl];
        const u16 h0 = fromf<BF>(tof<BF>((u16)(raw[0] & 0xffff)) * (rs * cv.x)), h1 = fromf<BF>(tof<BF>((u16)(raw[0] >> 16)) * (rs * cv.y));
        const u16 h2 = fromf<BF>(tof<BF>((u16)(raw[1] & 0xffff)) * (rs * cv.z)), h3 = fromf<BF>(tof<BF>((u16)(raw[1] >> 16)) * (rs * cv.w));
        raw[0] = (unsigned)h0 | ((unsigned)h1 << 16); raw[1] = (unsigned)h2 | ((unsigned)h3 << 16);
    }
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
extern "C" __global__ void nb_rmsnorm_mod_e4m3_##T(const u16* x, const u16* w, const u16* scale, uint2* codes, float* scales, \
                                                   int rows, int d, int rowsPerSample, float eps) { \
    rmsnorm_mod_v<BF, true>(x, w, scale, nullptr, rows, d, rowsPerSample, eps, codes, scales); } \
extern "C" __global__ void nb_swiglu_e4m3_##T(const u16* a, const u16* b, uint2* codes, float* scales, int nv) { \
    swiglu_e4m3_v<BF>(a, b, codes, scales, nv); } \
extern "C" __global__ void nb_qkv_norm_rope_##T(const u16* qkv, const u16* qw, const u16* kw, const float* cs, const float* sn, \
                                                u16* qo, u16* ko, u16* vo, int L, int Hq, int Hkv, int D, int perSample, int tokens, float eps) { \
    qkv_norm_rope_v<BF>(qkv, qw, kw, cs, sn, qo, ko, vo, L, Hq, Hkv, D, perSample, tokens, eps); }
FAST_FUSED(bf16, true)
FAST_FUSED(f16, false)

// The block-per-row forms of the norm kernels (norm_row<true>: grid = rows, block = CUDABackend.rowBlock).
#define BLOCK_NORMS(T, BF) \
extern "C" __global__ void nb_rmsnorm_mod_blk_##T(const u16* x, const u16* w, const u16* scale, u16* out, int rows, int d, \
                                                  int rowsPerSample, float eps) { \
    rmsnorm_mod_v<BF, false, true>(x, w, scale, out, rows, d, rowsPerSample, eps); } \
extern "C" __global__ void nb_rmsnorm_gate_res_blk_##T(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows, \
                                                       int d, int rowsPerSample, float eps) { \
    rmsnorm_gate_res_v<BF, false, true>(x, y, w, gate, out, rows, d, rowsPerSample, eps); } \
extern "C" __global__ void nb_rmsnorm_mod_e4m3_blk_##T(const u16* x, const u16* w, const u16* scale, uint2* codes, float* scales, \
                                                       int rows, int d, int rowsPerSample, float eps) { \
    rmsnorm_mod_v<BF, true, true>(x, w, scale, nullptr, rows, d, rowsPerSample, eps, codes, scales); }
BLOCK_NORMS(bf16, true)
BLOCK_NORMS(f16, false)

// Readers of bf16 fp8 products before their scales (the only dtype the CUDA backend leaves unscaled).
extern "C" __global__ void nb_rmsnorm_gate_res_sc_bf16(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows,
                                                       int d, int rowsPerSample, float eps, const float* ys, const float* yc) {
    rmsnorm_gate_res_v<true, true>(x, y, w, gate, out, rows, d, rowsPerSample, eps, ys, yc); }
extern "C" __global__ void nb_rmsnorm_gate_res_sc_blk_bf16(const u16* x, const u16* y, const u16* w, const u16* gate, u16* out, int rows,
                                                           int d, int rowsPerSample, float eps, const float* ys, const float* yc) {
    rmsnorm_gate_res_v<true, true, true>(x, y, w, gate, out, rows, d, rowsPerSample, eps, ys, yc); }
extern "C" __global__ void nb_swiglu_e4m3_sc_bf16(const u16* a, const u16* b, uint2* codes, float* scales, int nv,
                                                  const float* rs, const float* ac, const float* bc) {
    swiglu_e4m3_v<true, true>(a, b, codes, scales, nv, rs, ac, bc); }
extern "C" __global__ void nb_qkv_norm_rope_sc_bf16(const u16* qkv, const u16* qw, const u16* kw, const float* cs, const float* sn,
                                                    u16* qo, u16* ko, u16* vo, int L, int Hq, int Hkv, int D, int perSample, int tokens,
                                                    float eps, const float* ps, const float* pc) {
    qkv_norm_rope_v<true, true>(qkv, qw, kw, cs, sn, qo, ko, vo, L, Hq, Hkv, D, perSample, tokens, eps, ps, pc); }
