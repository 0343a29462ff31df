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

/* Which fast paths are active, for `newbie bench` and tests. */
int nb_cpu_has_f16c(void);
int nb_cpu_has_avx2_fma(void);

#endif
