#ifndef CNEWBIECPU_H
#define CNEWBIECPU_H
#include <stddef.h>
#include <stdint.h>

/* Row conversions between float32 and the 16-bit storage types.
   All conversions round to nearest, ties to even, and keep NaN (quiet) and infinities.
   The fp16 paths use F16C instructions when the CPU has them (checked once at run time). */
void nb_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void nb_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void nb_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
void nb_f32_to_bf16(const float *src, uint16_t *dst, size_t n);

/* Scalar versions (same rounding) for code that converts one value at a time. */
float nb_f16_to_f32_one(uint16_t h);
uint16_t nb_f32_to_f16_one(float f);

/* dst[i] = exp(src[i]) for a row; vectorised polynomial (max rel. error ~2e-7 on [-87, 88]). */
void nb_exp_f32(const float *src, float *dst, size_t n);

/* Activations over a row, in place, vectorisable (AVX2+FMA when present):
   silu(x) = x / (1 + exp(-x)); gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)));
   gelu_erf(x) = 0.5 x (1 + erf(x / sqrt(2))). erf uses a Chebyshev fit of erfc (relative error
   below 1.2e-7), tanh uses exp; both are within a few float ulps of libm. NaN propagates. */
void nb_silu_f32(float *x, size_t n);
void nb_gelu_tanh_f32(float *x, size_t n);
void nb_gelu_erf_f32(float *x, size_t n);

/* One online-softmax step for a row of attention scores (already scaled and masked with -inf):
   raises the running maximum *m with the row, replaces s[i] by exp(s[i] - m), adds their sum to
   *l after rescaling it, and returns the factor exp(m_old - m_new) the output accumulator needs.
   A row with nothing visible yet (m stays -inf) becomes zeros and returns 1. */
float nb_online_softmax_row(float *s, size_t n, float *m, float *l);

/* Which fast paths are active, for `newbie bench` and tests. */
int nb_cpu_has_f16c(void);
int nb_cpu_has_avx2_fma(void);

#endif
