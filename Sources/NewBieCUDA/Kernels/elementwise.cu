// NewBie CUDA kernels: element-wise ops (copy, fill, unary, binary) and embedding lookup.
// Compiled at run time by NVRTC for the running GPU. Every kernel loads its inputs as float, computes in
// float and rounds the result once to the output's storage type, as the CPU backend does.

#include "common.cuh"

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

// rows of table [V, D] picked by ids [N]
extern "C" __global__ void nb_embedding(const void* table, int tdt, const void* ids, int idt, void* out, int odt, i64 N, i64 D) {
    GRID_STRIDE(i, N * D) {
        i64 r = i / D, c = i % D;
        i64 id = idt == DT_I64 ? ((const i64*)ids)[r] : (i64)((const int*)ids)[r];
        st(out, odt, i, ld(table, tdt, id * D + c));
    }
}
