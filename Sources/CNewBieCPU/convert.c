// Conversions and a vectorisable exp. Plain C so that F16C/AVX2 code paths can be chosen at run
// time with target attributes: the package needs no special compiler flags and the same binary
// runs on CPUs without these features.
#include "CNewBieCPU.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NB_X86 1
#else
#define NB_X86 0
#endif

static int nb_feature_f16c = -1;
static int nb_feature_avx2 = -1;

int nb_cpu_has_f16c(void) {
#if NB_X86
    if (nb_feature_f16c < 0) {
        __builtin_cpu_init();
        nb_feature_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    }
    return nb_feature_f16c;
#else
    return 0;
#endif
}

int nb_cpu_has_avx2_fma(void) {
#if NB_X86
    if (nb_feature_avx2 < 0) {
        __builtin_cpu_init();
        nb_feature_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return nb_feature_avx2;
#else
    return 0;
#endif
}

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// ---- fp16, portable (IEEE binary16, round to nearest even) ----
float nb_f16_to_f32_one(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000 | (man << 13) | (man ? 0x400000 : 0));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        // subnormal: value = man * 2^-24
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t nb_f32_to_f16_one(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t absu = u & 0x7FFFFFFF;
    if (absu >= 0x7F800000) {  // inf or NaN
        if (absu > 0x7F800000) return sign | 0x7E00 | (uint16_t)((absu >> 13) & 0x3FF);
        return sign | 0x7C00;
    }
    if (absu >= 0x477FF000) return sign | 0x7C00;  // rounds to >= 65520 -> inf
    if (absu < 0x38800000) {  // below the smallest normal half (2^-14): subnormal or zero
        if (absu < 0x33000000) return sign;  // < 2^-25 rounds to zero (2^-25 exactly ties to 0)
        uint32_t e = absu >> 23;
        uint32_t m = (absu & 0x7FFFFF) | 0x800000;
        uint32_t shift = 126 - e;  // result = m >> (shift) with RNE, units of 2^-24
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = absu + 0xFFF + ((absu >> 13) & 1);  // round mantissa to 10 bits
    r -= 0x38000000;  // rebias 127 -> 15
    return sign | (uint16_t)(r >> 13);
}

#if NB_X86
__attribute__((target("avx,f16c")))
static void f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = nb_f16_to_f32_one(src[i]);
}

__attribute__((target("avx,f16c")))
static void f32_to_f16_f16c(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 f = _mm256_loadu_ps(src + i);
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++) dst[i] = nb_f32_to_f16_one(src[i]);
}
#endif

void nb_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if NB_X86
    if (nb_cpu_has_f16c()) { f16_to_f32_f16c(src, dst, n); return; }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = nb_f16_to_f32_one(src[i]);
}

void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
#if NB_X86
    if (nb_cpu_has_f16c()) { f32_to_f16_f16c(src, dst, n); return; }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = nb_f32_to_f16_one(src[i]);
}

// ---- bf16: the top 16 bits of a float32 ----
void nb_bf16_to_f32(const uint16_t *src, float *dst, size_t n) {
    uint32_t *d = (uint32_t *)dst;
    for (size_t i = 0; i < n; i++) d[i] = (uint32_t)src[i] << 16;
}

void nb_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
    const uint32_t *s = (const uint32_t *)src;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = s[i];
        if ((u & 0x7FFFFFFF) > 0x7F800000) { dst[i] = (uint16_t)((u >> 16) | 0x0040); continue; }  // quiet NaN
        u += 0x7FFF + ((u >> 16) & 1);
        dst[i] = (uint16_t)(u >> 16);
    }
}

// ---- exp: Cody-Waite range reduction, degree-6 polynomial; written so the compiler vectorises it ----
static inline float exp_one(float x0) {
    // comparisons keep NaN (both are false for NaN), and NaN is passed through at the end
    float x = x0 > 88.3762626647949f ? 88.3762626647949f : x0;
    x = x < -104.0f ? -104.0f : x;
    float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // scale by 2^k in two halves so that k = 128 and deep subnormal results both work
    int ki = (x == x) ? (int)k : 0;
    int k1 = ki >> 1, k2 = ki - k1;
    float s1 = bits_f32((uint32_t)(k1 + 127) << 23);
    float s2 = bits_f32((uint32_t)(k2 + 127) << 23);
    float y = p * s1 * s2;
    y = x0 < -104.0f ? 0.0f : y;
    y = x0 > 88.72283935546875f ? INFINITY : y;
    return (x0 == x0) ? y : x0;
}

#if NB_X86
__attribute__((target("avx2,fma")))
static void exp_avx2(const float *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = exp_one(src[i]);
}
#endif

void nb_exp_f32(const float *src, float *dst, size_t n) {
#if NB_X86
    if (nb_cpu_has_avx2_fma()) { exp_avx2(src, dst, n); return; }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = exp_one(src[i]);
}

// ---- activations built on exp_one (vectorised with the same AVX2 dispatch) ----
static inline float silu_one(float x) { return x / (1.0f + exp_one(-x)); }

static inline float tanh_one(float y) {
    // tanh(|y|) = (1 - e) / (1 + e), e = exp(-2|y|): no overflow, sign restored after
    float a = y < 0 ? -y : y;
    float e = exp_one(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    t = y < 0 ? -t : t;
    return (y == y) ? t : y;
}

static inline float erf_one(float x) {
    // erfc(|x|) = t exp(-x^2 + P(t)), t = 1 / (1 + |x|/2) (Numerical Recipes' erfcc, rel. error < 1.2e-7)
    float z = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float erfc = t * exp_one(-z * z + p);
    float r = 1.0f - erfc;
    r = x < 0 ? -r : r;
    return (x == x) ? r : x;
}

#define NB_ROW_KERNEL(name, expr) \
    static void name##_generic(float *x, size_t n) { for (size_t i = 0; i < n; i++) { float v = x[i]; x[i] = (expr); } } \
    NB_AVX2(static void name##_avx2(float *x, size_t n) { for (size_t i = 0; i < n; i++) { float v = x[i]; x[i] = (expr); } }) \
    void name(float *x, size_t n) { NB_DISPATCH(name, x, n); }

#if NB_X86
#define NB_AVX2(def) __attribute__((target("avx2,fma"))) def
#define NB_DISPATCH(name, x, n) if (nb_cpu_has_avx2_fma()) { name##_avx2(x, n); return; } name##_generic(x, n)
#else
#define NB_AVX2(def)
#define NB_DISPATCH(name, x, n) name##_generic(x, n)
#endif

NB_ROW_KERNEL(nb_silu_f32, silu_one(v))
NB_ROW_KERNEL(nb_gelu_tanh_f32, 0.5f * v * (1.0f + tanh_one(0.7978845608028654f * (v + 0.044715f * v * v * v))))
NB_ROW_KERNEL(nb_gelu_erf_f32, 0.5f * v * (1.0f + erf_one(v * 0.7071067811865476f)))

// Max and sum use 8 independent partial results so the loops vectorise without reassociation flags.
static inline float online_softmax_body(float *s, size_t n, float *m, float *l) {
    float part[8];
    for (int k = 0; k < 8; k++) part[k] = *m;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) part[k] = s[i + k] > part[k] ? s[i + k] : part[k];
    float mx = part[0];
    for (int k = 1; k < 8; k++) mx = part[k] > mx ? part[k] : mx;
    for (; i < n; i++) mx = s[i] > mx ? s[i] : mx;
    if (mx == -INFINITY) {  // nothing visible in this row yet
        for (i = 0; i < n; i++) s[i] = 0.0f;
        return 1.0f;
    }
    float corr = (*m == -INFINITY) ? 0.0f : exp_one(*m - mx);
    for (i = 0; i < n; i++) s[i] = exp_one(s[i] - mx);
    for (int k = 0; k < 8; k++) part[k] = 0.0f;
    for (i = 0; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) part[k] += s[i + k];
    float sum = 0.0f;
    for (int k = 0; k < 8; k++) sum += part[k];
    for (; i < n; i++) sum += s[i];
    *l = *l * corr + sum;
    *m = mx;
    return corr;
}

static float online_softmax_row(float *s, size_t n, float *m, float *l) { return online_softmax_body(s, n, m, l); }

#if NB_X86
__attribute__((target("avx2,fma")))
static float online_softmax_row_avx2(float *s, size_t n, float *m, float *l) { return online_softmax_body(s, n, m, l); }
#endif

float nb_online_softmax_row(float *s, size_t n, float *m, float *l) {
#if NB_X86
    if (nb_cpu_has_avx2_fma()) return online_softmax_row_avx2(s, n, m, l);
#endif
    return online_softmax_row(s, n, m, l);
}
