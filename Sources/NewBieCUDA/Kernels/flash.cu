// Flash attention (FlashAttention-2 style forward) on the tensor cores with mma.sync m16n8k16,
// bf16 or fp16 inputs, fp32 accumulation and online softmax. One block of 4 or 8 warps handles 64 or 128
// query rows of one (batch, head); keys and values stream through shared memory in tiles of 64,
// double-buffered with cp.async; fragments come from shared memory through ldmatrix. The tile code
// exists twice: the common full tile has no per-score test (a predicated masking path in the same
// code doubled the instructions issued), edge tiles get the masks and bias. Lab: tools/bench/kernel_lab.py.
// No Lq x Lk matrix exists anywhere. Layouts: q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D], out like q.
// Supports GQA (query head h uses KV head h / (Hq / Hkv)), a key padding mask [B, Lk] (f32, 0 =
// masked), causal and sliding-window masks and an additive f32 bias [Bb, Hb, Lq, Lk].
// Rows whose keys are all masked produce zeros (as the CPU backend does).

#include "common.cuh"  // u16, i64, NB_INF, f2b, f2h

struct FlashParams {
    i64 B, Lq, Lk, Hq, Hkv;
    float scale; int causal; int window; int hasMask; int hasBias; int pad;
    i64 biasB, biasH;
};

__device__ __forceinline__ unsigned pack2(u16 lo, u16 hi) { return (unsigned)lo | ((unsigned)hi << 16); }
// two floats -> two packed 16-bit values (lo in the low half), one conversion instruction
template <bool BF16> __device__ __forceinline__ unsigned cvt2(float lo, float hi) {
    unsigned r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Not volatile: a pure register operation, so the compiler may interleave independent products.
template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, const unsigned* b) {
    if (BF16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}
// 2^x in one MUFU instruction (relative error ~2^-22, far below the 16-bit P it feeds); 2^-inf = 0
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }

#define BC 64    // keys per tile

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// 16-byte global -> shared copy that bypasses registers; `bytes` 0 writes zeros
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(smem_addr(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

// compile-time flag for the generic lambda that holds one tile's work
template <bool B> struct BoolC { static constexpr bool value = B; };

template <int D, int WARPS, bool BF16>
__device__ void flash_forward(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                              const float* __restrict__ mask, const float* __restrict__ bias, u16* __restrict__ out,
                              FlashParams p) {
    constexpr int BR = 16 * WARPS;       // query rows per block
    constexpr int LD = D + 8;            // padded shared-memory row (elements): ldmatrix rows hit distinct banks
    constexpr int KS = D / 16;           // k-steps over the head dim
    constexpr int NT = D / 8;            // n-tiles of the output
    constexpr int NB = BC / 8;           // n-tiles of the scores
    constexpr int VEC = D / 8;           // 16-byte vectors per row
    constexpr int THREADS = 32 * WARPS;
    constexpr int KV_ITER = BC * VEC / THREADS;
    static_assert(KS % 2 == 0 && BC == 64 && (BC * VEC) % THREADS == 0, "head dim must be a multiple of 32");
    extern __shared__ __align__(16) u16 smem[];
    u16* sQ = smem;
    u16* sK = sQ + BR * LD;              // [2][BC][LD]
    u16* sV = sK + 2 * BC * LD;          // [2][BC][LD]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const i64 qTiles = (p.Lq + BR - 1) / BR;
    const i64 qt = blockIdx.x % qTiles;
    const i64 h = (blockIdx.x / qTiles) % p.Hq;
    const i64 b = blockIdx.x / (qTiles * p.Hq);
    const i64 kvh = h / (p.Hq / p.Hkv);
    const i64 i0 = qt * BR;
    const float sl2 = p.scale * 1.4426950408889634f;   // raw score -> log2 units
    const i64 shift = p.Lk - p.Lq;

    i64 jEnd = p.Lk, jBegin = 0;
    if (p.causal) {
        i64 last = i0 + BR - 1 + shift;
        jEnd = last + 1 < p.Lk ? last + 1 : p.Lk;
        if (p.window > 0) { i64 first = i0 + shift - p.window + 1; jBegin = first > 0 ? (first / BC) * BC : 0; }
    }
    if (jEnd < 0) jEnd = 0;

    // K/V rows of this (batch, KV head): 64-bit base once, 32-bit offsets per copy
    const int kvStride = (int)(p.Hkv * D);
    const u16* kBase = k + (b * p.Lk * p.Hkv + kvh) * D;
    const u16* vBase = v + (b * p.Lk * p.Hkv + kvh) * D;
    auto loadKV = [&](i64 j0, int buf) {
        const i64 tileOff = j0 * kvStride;
        const int rowsLeft = (int)(p.Lk - j0 < BC ? p.Lk - j0 : BC);
#pragma unroll
        for (int it = 0; it < KV_ITER; ++it) {
            const int idx = tid + it * THREADS, r = idx / VEC, c = idx % VEC;
            const bool in = r < rowsLeft;
            const int off = in ? r * kvStride + c * 8 : 0;
            cp_async16(sK + (buf * BC + r) * LD + c * 8, kBase + tileOff + off, in ? 16 : 0);
            cp_async16(sV + (buf * BC + r) * LD + c * 8, vBase + tileOff + off, in ? 16 : 0);
        }
        cp_async_commit();
    };

    // Q tile (zero rows past Lq) and the first K/V tile
    for (int idx = tid; idx < BR * VEC; idx += THREADS) {
        int r = idx / VEC, c = idx % VEC;
        bool in = i0 + r < p.Lq;
        cp_async16(sQ + r * LD + c * 8, q + (in ? ((b * p.Lq + i0 + r) * p.Hq + h) * D + c * 8 : 0), in ? 16 : 0);
    }
    cp_async_commit();
    if (jBegin < jEnd) loadKV(jBegin, 0);
    cp_async_wait<1>();
    __syncthreads();

    // this warp's 16 query rows as A fragments (ldmatrix: lanes 0-15 rows 0-15 at col 0, lanes 16-31 at col 8)
    unsigned qa[KS][4];
    {
        const u16* rowp = sQ + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(qa[ks], rowp + ks * 16);
    }

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) { o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f; }
    // running row maxima in raw score units, row sums of 2^(sl2 (s - m))
    float mrow[2] = {-NB_INF, -NB_INF}, lrow[2] = {0.f, 0.f};
    const i64 qi[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
    const float biasScale = 1.f / p.scale;   // an additive logit bias in raw score units

    int buf = 0;
    for (i64 j0 = jBegin; j0 < jEnd; j0 += BC) {
        if (j0 + BC < jEnd) { loadKV(j0 + BC, buf ^ 1); cp_async_wait<1>(); }
        else { cp_async_wait<0>(); }
        __syncthreads();
        const u16* cK = sK + buf * BC * LD;
        const u16* cV = sV + buf * BC * LD;
        // A tile needs per-score masking only at the edges: a key padding mask is usually a prefix, so
        // each warp checks its tile's 64 mask entries with two votes; a tile with no visible key is
        // skipped (it would add exactly nothing).
        bool fullTile = false, emptyTile = false;
        if (!p.hasBias && !p.causal && j0 + BC <= p.Lk) {
            if (!p.hasMask) fullTile = true;
            else {
                const bool v0 = mask[b * p.Lk + j0 + lane] != 0.f, v1 = mask[b * p.Lk + j0 + 32 + lane] != 0.f;
                fullTile = __all_sync(0xffffffffu, v0 && v1);
                emptyTile = !__any_sync(0xffffffffu, v0 || v1);
            }
        }
        if (!emptyTile) {
            // two copies of the tile code: without any per-score test, and with the masks and bias
            auto tile = [&](auto maskedTag) {
                constexpr bool MASKED = decltype(maskedTag)::value;
                // S = Q K^T, 16 rows x BC keys. One ldmatrix x4 per key tile gives the B fragments of two
                // k-steps; all key tiles are loaded first so that the products of one k-step are independent.
                float s[NB][4];
#pragma unroll
                for (int n = 0; n < NB; ++n) { s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f; }
#pragma unroll
                for (int ks = 0; ks < KS; ks += 2) {
                    unsigned kb[NB][4];
#pragma unroll
                    for (int n = 0; n < NB; ++n) ldmatrix_x4(kb[n], cK + (n * 8 + (lane & 7)) * LD + (lane >> 3) * 8 + ks * 16);
#pragma unroll
                    for (int n = 0; n < NB; ++n) mma16816<BF16>(s[n], qa[ks], kb[n]);
#pragma unroll
                    for (int n = 0; n < NB; ++n) mma16816<BF16>(s[n], qa[ks + 1], kb[n] + 2);
                }
                // masks and bias (only where a tile needs them); row maxima
                float mnew[2] = {mrow[0], mrow[1]};
#pragma unroll
                for (int n = 0; n < NB; ++n) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int ri = e >> 1;
                        float val = s[n][e];
                        if (MASKED) {
                            const i64 j = j0 + n * 8 + t4 * 2 + (e & 1);
                            const i64 i = qi[ri];
                            bool visible = j < p.Lk;
                            if (visible && p.hasMask) visible = mask[b * p.Lk + j] != 0.f;
                            if (visible && p.causal) {
                                visible = j <= i + shift;
                                if (visible && p.window > 0) visible = (i + shift) - j < p.window;
                            }
                            if (visible && p.hasBias && i < p.Lq) {
                                i64 bb = p.biasB == 1 ? 0 : b, bh = p.biasH == 1 ? 0 : h;
                                val += bias[((bb * p.biasH + bh) * p.Lq + i) * p.Lk + j] * biasScale;
                            }
                            val = visible ? val : -NB_INF;
                            s[n][e] = val;
                        }
                        mnew[ri] = fmaxf(mnew[ri], val);
                    }
                }
#pragma unroll
                for (int ri = 0; ri < 2; ++ri) {
                    mnew[ri] = fmaxf(mnew[ri], __shfl_xor_sync(0xffffffffu, mnew[ri], 1));
                    mnew[ri] = fmaxf(mnew[ri], __shfl_xor_sync(0xffffffffu, mnew[ri], 2));
                }
                // p = 2^(sl2 s - sl2 m): one FMA and one MUFU per score; a row with nothing visible yet uses
                // m = 0 so that its -inf scores give 0, never NaN
                float msc[2], corr[2], psum[2] = {0.f, 0.f};
#pragma unroll
                for (int ri = 0; ri < 2; ++ri) {
                    msc[ri] = mnew[ri] == -NB_INF ? 0.f : mnew[ri] * sl2;
                    corr[ri] = mrow[ri] == -NB_INF ? 0.f : ex2(fmaf(mrow[ri], sl2, -msc[ri]));
                }
                // P as A fragments for P V; row sums use the fp32 values (as FlashAttention does)
                unsigned pa[BC / 16][4];
#pragma unroll
                for (int n = 0; n < NB; ++n) {
                    float pv[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) pv[e] = ex2(fmaf(s[n][e], sl2, -msc[e >> 1]));
                    psum[0] += pv[0] + pv[1];
                    psum[1] += pv[2] + pv[3];
                    const unsigned lo = cvt2<BF16>(pv[0], pv[1]);
                    const unsigned hi = cvt2<BF16>(pv[2], pv[3]);
                    const int kt = n >> 1;
                    if ((n & 1) == 0) { pa[kt][0] = lo; pa[kt][1] = hi; } else { pa[kt][2] = lo; pa[kt][3] = hi; }
                }
#pragma unroll
                for (int ri = 0; ri < 2; ++ri) {
                    psum[ri] += __shfl_xor_sync(0xffffffffu, psum[ri], 1);
                    psum[ri] += __shfl_xor_sync(0xffffffffu, psum[ri], 2);
                    lrow[ri] = lrow[ri] * corr[ri] + psum[ri];
                    mrow[ri] = mnew[ri];
                }
#pragma unroll
                for (int n = 0; n < NT; ++n) { o[n][0] *= corr[0]; o[n][1] *= corr[0]; o[n][2] *= corr[1]; o[n][3] *= corr[1]; }
                // O += P V. ldmatrix.trans on V rows (keys): matrices (keys 0-7 | 8-15) x (channels n*8 | n*8+8)
#pragma unroll
                for (int kt = 0; kt < BC / 16; ++kt) {
                    const u16* vr = cV + (kt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
                    for (int n = 0; n < NT; n += 2) {
                        unsigned vb[4];
                        ldmatrix_x4_trans(vb, vr + n * 8);
                        mma16816<BF16>(o[n], pa[kt], vb);
                        mma16816<BF16>(o[n + 1], pa[kt], vb + 2);
                    }
                }
            };
            if (fullTile) tile(BoolC<false>()); else tile(BoolC<true>());
        }
        __syncthreads();  // this buffer is refilled two tiles from now
        buf ^= 1;
    }
    // normalise and store
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const i64 i = qi[ri];
        if (i >= p.Lq) continue;
        const float inv = lrow[ri] > 0.f ? 1.f / lrow[ri] : 0.f;
        u16* dst = out + ((b * p.Lq + i) * p.Hq + h) * D;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const float x0 = o[n][ri * 2] * inv, x1 = o[n][ri * 2 + 1] * inv;
            *(unsigned*)(dst + n * 8 + t4 * 2) = cvt2<BF16>(x0, x1);
        }
    }
}

// 4-warp blocks are held to 168 registers so that three fit on an SM (12 warps; measured 1.50 vs
// 1.98 ms at 206 registers and two blocks, DiT shape on the H200)
#define FLASH(name, D, W, BF) \
extern "C" __global__ void __launch_bounds__(32 * W, W == 4 ? 3 : 1) name(const u16* q, const u16* k, const u16* v, const float* mask, \
                                                          const float* bias, u16* out, FlashParams p) { \
    flash_forward<D, W, BF>(q, k, v, mask, bias, out, p); }

FLASH(nb_flash_bf16_d64_w4, 64, 4, true)
FLASH(nb_flash_bf16_d96_w4, 96, 4, true)
FLASH(nb_flash_bf16_d128_w4, 128, 4, true)
FLASH(nb_flash_f16_d64_w4, 64, 4, false)
FLASH(nb_flash_f16_d96_w4, 96, 4, false)
FLASH(nb_flash_f16_d128_w4, 128, 4, false)
FLASH(nb_flash_bf16_d64_w8, 64, 8, true)
FLASH(nb_flash_bf16_d96_w8, 96, 8, true)
FLASH(nb_flash_bf16_d128_w8, 128, 8, true)
FLASH(nb_flash_f16_d64_w8, 64, 8, false)
FLASH(nb_flash_f16_d96_w8, 96, 8, false)
FLASH(nb_flash_f16_d128_w8, 128, 8, false)

