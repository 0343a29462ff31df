// NewBie CUDA kernels for quantized linear layers (docs/QUANTIZATION.md): int8 weight-only
// dequantization into a 16/32-bit scratch weight, and fp8 e4m3 activation quantization (per-tensor
// amax, then scale and cast) for cuBLASLt's FP8 GEMM. Storage types, dtype codes, loads and stores from common.cuh.

#include "common.cuh"

// w[o, i] = q[o, i] * scale[o, i / group] in fp32, rounded once to the output type. Grid: y over
// rows (striding past 65535), x over each row's columns, 4 per thread; 32-bit column arithmetic
// (a row is far below 2^31 columns) and no division at all per channel (groups == 1).
extern "C" __global__ void nb_dequant_i8(const signed char* q, const float* scales, i64 rows, i64 cols,
                                         i64 groups, i64 group, void* out, int outType) {
    int ncols = (int)cols, g = (int)group, ng = (int)groups;
    for (i64 o = blockIdx.y; o < rows; o += gridDim.y) {
        const signed char* qr = q + o * cols;
        const float* sr = scales + o * groups;
        i64 base = o * cols;
        for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * 4; c < ncols; c += gridDim.x * blockDim.x * 4) {
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                int cc = c + j;
                if (cc < ncols) st(out, outType, base + cc, (float)qr[cc] * (ng == 1 ? sr[0] : sr[cc / g]));
            }
        }
    }
}

// float -> float8_e4m3fn bits exactly as torch 2.15's cast (FloatE4M3.encode): round to nearest
// even, saturating at +-448 (infinities included); NaN stays NaN (0x7f). The format has no inf.
__device__ __forceinline__ unsigned char q_e4m3(float f) {
    unsigned bits = __float_as_uint(f);
    unsigned sign = bits & 0x80000000u;
    bits ^= sign;
    unsigned r;
    if (bits > 0x7f800000u) {
        r = 0x7f;
    } else if (bits >= (1087u << 20)) {
        r = 0x7e;
    } else if (bits < (121u << 23)) {
        // subnormal range: in x + 2^14 the last mantissa bit weighs 2^-9, e4m3's subnormal step,
        // so the fp32 add rounds x to that step (nearest even) and the low bits are the code
        float d = __uint_as_float(bits) + __uint_as_float(141u << 23);
        r = __float_as_uint(d) - (141u << 23);
    } else {
        unsigned odd = (bits >> 20) & 1u;
        bits += ((unsigned)(7 - 127) << 23) + 0x7ffffu;
        bits += odd;
        r = bits >> 20;
        if (r > 0x7eu) r = 0x7eu;  // (464, 480) rounds to the NaN code: saturate to 448
    }
    return (unsigned char)(r | (sign >> 24));
}

// Zeroes the amax cell (kept on the device: no host round trip between the kernels and the GEMM).
extern "C" __global__ void nb_amax_reset(unsigned* amax) { *amax = 0u; }

// amax = max |x| over n elements, as float bits (non-negative floats order like their bits). A NaN
// in x gives NaN bits (above inf's): the scale falls back to 1, as torch.where(amax > 0, ...) does,
// the NaN element's code is NaN and the rows it reaches in the product come out NaN.
extern "C" __global__ void nb_absmax(const void* x, int dt, i64 n, unsigned* amax) {
    __shared__ unsigned warpMax[32];
    unsigned m = 0u;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        unsigned b = __float_as_uint(fabsf(ld(x, dt, i)));
        m = m > b ? m : b;
    }
    for (int o = 16; o > 0; o >>= 1) { unsigned v = __shfl_xor_sync(0xffffffffu, m, o); m = m > v ? m : v; }
    if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned b = 0u;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) b = b > warpMax[w] ? b : warpMax[w];
        atomicMax(amax, b);
    }
}

// scale = amax / 448 (1 when amax is 0); out = e4m3(x / scale); the scale is written for the GEMM.
extern "C" __global__ void nb_quant_e4m3(const void* x, int dt, i64 n, const unsigned* amax,
                                         unsigned char* out, float* scaleOut) {
    float a = __uint_as_float(*amax);
    float s = a > 0.f ? a / 448.f : 1.f;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scaleOut = s;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = q_e4m3(ld(x, dt, i) / s);
}
