// Flash attention forward for Hopper (sm_90a): the matrix products on warpgroup MMA (wgmma), a
// producer warpgroup that streams K/V tiles into shared memory, two consumer warpgroups of 64
// query rows each that compute S = Q K^T, the online softmax and O += P V. Same contract as
// flash.cu (layouts q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D], out like q; GQA; a key padding mask
// [B, Lk] in f32 with 0 = masked; causal and sliding-window masks; rows with no visible key give
// zeros); an additive bias is not taken here (the host routes it to flash.cu).
//
// Pipeline: K/V tiles of 128 keys in 3 shared-memory stages. The producer copies a tile with
// cp.async (16 bytes per thread and copy, zero-filled past Lk), waits for the tile before it,
// makes it visible to the tensor cores' (async) proxy and arrives on that stage's "full"
// mbarrier; consumers wait on "full", compute, and arrive on the stage's "empty" mbarrier,
// which the producer waits on before it overwrites the stage. With 3 stages the signal for
// tile i goes out while consumers still work on tile i-1, so they never wait on the producer's
// bookkeeping. Registers move from the producer to the consumers with setmaxnreg. The consumers'
// schedule is a compile-time choice (SCHED_* below): free, ping-pong between the two warpgroups,
// and the next tile's Q K^T overlapped with this tile's softmax inside a warpgroup.
//
// Shared-memory layout of every tile (Q, K, V alike), without SCHED_SWIZZLE64 (with it, see
// chunk_offset): the wgmma "no swizzle" canonical layout,
// made of 8-row x 16-byte core matrices, each 128 contiguous bytes. The 16-byte chunk c (head
// dims 8c..8c+7) of row r sits at byte ((r / 8) * (D / 8) + c) * 128 + (r % 8) * 16. For Q (A
// operand) and K (B operand of Q K^T) the head dim is the reduction (K-major): core matrices
// along it are 128 bytes apart (leading offset), 8-row groups D * 16 bytes apart (stride
// offset). V is the B operand of P V with keys as the reduction and the head dim contiguous
// (MN-major, transposed B): 8-key groups D * 16 bytes apart (leading offset), head-dim chunks
// 128 bytes apart (stride offset). One layout, one loader.
//
// Register fragments: the accumulator of m64nNk16 gives each warp 16 rows; thread (g = lane/4,
// t = lane%4) holds, for each 8-column group j, (row g, cols 8j+2t, +1) and (row g+8, same cols)
// in d[4j..4j+3], the m16n8 layout of mma.sync; the register A operand of P V has the m16k16
// layout of mma.sync, so P goes from S's accumulator to A registers without shared memory.

#include "common.cuh"  // u16, i64, NB_INF

struct FlashParams {   // same bytes as in flash.cu (the host encodes one struct for both)
    i64 B, Lq, Lk, Hq, Hkv;
    float scale; int causal; int window; int hasMask; int hasBias; int pad;
    i64 biasB, biasH;
};

typedef unsigned long long u64;

#define HBR 128     // query rows per block (two consumer warpgroups of 64)
#define HBC 128     // keys per tile
#define HSTAGES 3   // K/V tiles in flight
#define HTHREADS 384

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// generic-proxy writes to shared memory (cp.async lands there) made visible to wgmma's async proxy
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}
// A pipeline bug must not hang the process: after 2^26 unsuccessful polls (each try_wait already
// suspends for a while; a real wait here lasts microseconds) the producer traps, and the launch
// fails; a consumer exits instead (TRAP false), never arrives again, and the producer's last
// waits (the drain at its end) trap in turn. Consumers do not trap themselves because a trap in
// their code makes ptxas (CUDA 13) hold them to the entry register cap of 168 despite setmaxnreg,
// which serializes the overlapped schedule's wgmmas (C7512) and spills.
template <bool TRAP> __device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done = 0, polls = 0;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
        if (++polls == (1u << 26)) { if (TRAP) __trap(); else asm volatile("exit;"); }
    } while (!done);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// pins accumulator registers in program order around the asynchronous products: the compiler
// must not read them before the wait nor write them after the issue
template <int N> __device__ __forceinline__ void fence_regs(float* r) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}

// shared-memory matrix descriptor, no swizzle: start address, leading and stride byte offsets (all >> 4)
__device__ __forceinline__ u64 smem_desc(unsigned addr, unsigned leading, unsigned stride) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)(leading >> 4) << 16) | ((u64)(stride >> 4) << 32);
}
// the same with the 64-byte swizzle (layout type 2 in bits 62-63; base offset 0: every swizzle
// atom starts on a 512-byte boundary)
__device__ __forceinline__ u64 smem_desc_sw64(unsigned addr, unsigned leading, unsigned stride) {
    return smem_desc(addr, leading, stride) | (2ull << 62);
}

// 2^x in one MUFU instruction; 2^-inf = 0
__device__ __forceinline__ float ex2(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
template <bool BF16> __device__ __forceinline__ unsigned cvt2(float lo, float hi) {
    unsigned r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ---- wgmma wrappers: S (64 x 128, A and B from shared memory), P V (64 x D, A from registers,
// B transposed from shared memory); operand lists written out, as inline asm needs ----
__device__ __forceinline__ void wgmma_ss_n128_bf16(float* d, unsigned long long da, unsigned long long db, int scaleD) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scaleD));
}

__device__ __forceinline__ void wgmma_rs_n64_bf16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_rs_n96_bf16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_rs_n128_bf16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_ss_n128_f16(float* d, unsigned long long da, unsigned long long db, int scaleD) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scaleD));
}

__device__ __forceinline__ void wgmma_rs_n64_f16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_rs_n96_f16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n96k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_rs_n128_f16(float* d, const unsigned* a, unsigned long long db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <bool BF16> __device__ __forceinline__ void wgmma_scores(float* s, u64 da, u64 db, int accumulate) {
    if (BF16) wgmma_ss_n128_bf16(s, da, db, accumulate); else wgmma_ss_n128_f16(s, da, db, accumulate);
}
template <int D, bool BF16> __device__ __forceinline__ void wgmma_pv(float* o, const unsigned* a, u64 db) {
    if (D == 64) { if (BF16) wgmma_rs_n64_bf16(o, a, db); else wgmma_rs_n64_f16(o, a, db); }
    if (D == 96) { if (BF16) wgmma_rs_n96_bf16(o, a, db); else wgmma_rs_n96_f16(o, a, db); }
    if (D == 128) { if (BF16) wgmma_rs_n128_bf16(o, a, db); else wgmma_rs_n128_f16(o, a, db); }
}

template <bool B> struct HBoolC { static constexpr bool value = B; };

// wgmma.wait_group with the count as a template constant (the instruction takes an immediate)
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// the register A operand of an asynchronous P V is read until its wait: this pins the fragments
// there, so the compiler cannot reuse their registers for the next P before the product is done
template <int N> __device__ __forceinline__ void fence_regs_u(unsigned (*r)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
        asm volatile("" : "+r"(r[i][0]), "+r"(r[i][1]), "+r"(r[i][2]), "+r"(r[i][3]) :: "memory");
}

// Variants, a bit set: consumer schedules, and how tiles are loaded and laid out. The engine builds
// the one NB_FLASH_SCHEDULE names; tools/bench/hopper_attn_check.py checks and times them side by side.
// SCHED_PINGPONG: the two consumer warpgroups take turns at issuing their products (named
//   barriers 3 and 4), so that one's softmax runs while the other's products occupy the tensor
//   cores (FlashAttention-3's inter-warpgroup schedule).
// SCHED_OVERLAP: inside each warpgroup, the scores of tile j+1 (Q K^T) and the product of tile j's
//   probabilities with V go out together; the warpgroup waits for the scores only, and the softmax
//   of tile j+1 runs while the tensor cores still do P_j V_j (FlashAttention-3's intra-warpgroup
//   schedule). O is rescaled after that product is done. One S accumulator is enough: P_j already
//   sits in its own A-fragment registers when S_{j+1} is issued. A tile that the key padding mask
//   hides entirely is computed as a masked tile here (its probabilities are zero) instead of
//   skipped, which keeps the pipeline free of branches between issue and wait.
// SCHED_PAIRED_LOADS (not a consumer schedule, but chosen with them): how copies map to threads,
//   see tile_chunk below.
// SCHED_SWIZZLE64 (likewise): the tiles in the 64-byte swizzled layout instead of the no-swizzle
//   one, see chunk_offset below.
#define SCHED_PINGPONG 1
#define SCHED_OVERLAP 2
#define SCHED_PAIRED_LOADS 4
#define SCHED_SWIZZLE64 8

// Which chunk of a ROWS x VEC tile (row r, 16-byte column col) copy number c handles; its place
// in the canonical layout is chunk_offset. Unpaired: the 8 lanes of a quarter warp take 8 rows of
// one column. A quarter warp is one memory request for 16-byte accesses, and cp.async.cg bypasses
// L1, so each 32-byte sector came from L2 twice, once per half (ncu at the DiT shape: 50% excess
// sectors, L2 85% busy, the limit). Paired: two neighbouring lanes take the two halves of one
// sector and a quarter warp four rows, so every sector is fetched once; the price is a 2-way
// bank conflict on the shared-memory side (the two halves land 128 bytes apart).
template <int VEC, int ROWS, bool PAIRED> __device__ __forceinline__ void tile_chunk(int c, int& r, int& col) {
    if (PAIRED) { const int u = c >> 1; r = u % ROWS; col = 2 * (u / ROWS) + (c & 1); }
    else { r = ((c >> 3) / VEC) * 8 + (c & 7); col = (c >> 3) % VEC; }
}
// Where chunk (r, col) of a ROWS x VEC tile sits. No swizzle: the canonical layout of 8-row x
// 16-byte core matrices (see the top of the file). ncu at the DiT shape counts 3x more shared-
// memory wavefronts than the tensor cores' operands need there: with no swizzle, the rows that
// wgmma fetches together share banks. SWZ: the 64-byte swizzle, the widest that divides a 96-dim
// row (192 bytes; CUTLASS picks it for such tiles too). The row is cut into atom columns of 32
// dims (64 bytes); an atom is 8 rows x 64 bytes = 512 bytes, atoms of one column follow each
// other down the rows (so one column is ROWS * 64 bytes), and inside an atom the 16-byte chunk j
// of row r sits at chunk j ^ ((r >> 1) & 3): the XOR the hardware applies to address bits 4-5
// with bits 7-8, which holds because every atom starts on a 512-byte boundary. The same layout
// serves Q and K (K-major operands: 8-row groups 512 bytes apart) and V (MN-major: 8-key groups
// 512 bytes apart, atom columns along the head dim ROWS * 64 bytes apart).
template <int VEC, int ROWS, bool SWZ> __device__ __forceinline__ unsigned chunk_offset(int r, int col) {
    if (!SWZ) return (unsigned)(((r >> 3) * VEC + col) * 128 + (r & 7) * 16);
    return (unsigned)((col >> 2) * (ROWS * 64) + (r >> 3) * 512 + (r & 7) * 64 + (((col & 3) ^ ((r >> 1) & 3)) << 4));
}

// Online softmax of one 64 x 128 score tile held in the accumulator layout: masks (when MASKED),
// the running row maximum and sum, scores replaced by unnormalised probabilities; returns in corr
// the factor by which the output rows must be rescaled. Rows with nothing visible yet use m = 0,
// so their -inf scores give 0, never NaN. Key positions are relative to the tile (jj in 0..127)
// and 32-bit: keysLeft = Lk - j0, diag[ri] = (query index + Lk - Lq) - j0, the last key a causal
// row sees; maskTile = the key padding mask at j0 (null without one). Registers are what the
// overlapped schedule runs short of, and 64-bit positions cost two each.
template <bool MASKED>
__device__ __forceinline__ void softmax_tile(float* sc, float* mrow, float* lrow, float* corr, const FlashParams& p,
                                             const float* __restrict__ maskTile, int keysLeft, const int* diag,
                                             int t4, float sl2) {
    constexpr int NS = HBC / 8;
    float mnew[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int ri = e >> 1;
            float val = sc[4 * n + e];
            if (MASKED) {
                const int jj = n * 8 + t4 * 2 + (e & 1);
                bool visible = jj < keysLeft;
                if (visible && maskTile) visible = maskTile[jj] != 0.f;
                if (visible && p.causal) {
                    visible = jj <= diag[ri];
                    if (visible && p.window > 0) visible = diag[ri] - jj < p.window;
                }
                val = visible ? val : -NB_INF;
                sc[4 * n + e] = val;
            }
            mnew[ri] = fmaxf(mnew[ri], val);
        }
    }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        mnew[ri] = fmaxf(mnew[ri], __shfl_xor_sync(0xffffffffu, mnew[ri], 1));
        mnew[ri] = fmaxf(mnew[ri], __shfl_xor_sync(0xffffffffu, mnew[ri], 2));
    }
    float msc[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        msc[ri] = mnew[ri] == -NB_INF ? 0.f : mnew[ri] * sl2;
        corr[ri] = mrow[ri] == -NB_INF ? 0.f : ex2(fmaf(mrow[ri], sl2, -msc[ri]));
    }
    float psum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[4 * n + e] = ex2(fmaf(sc[4 * n + e], sl2, -msc[e >> 1]));
        psum[0] += sc[4 * n] + sc[4 * n + 1];
        psum[1] += sc[4 * n + 2] + sc[4 * n + 3];
    }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        psum[ri] += __shfl_xor_sync(0xffffffffu, psum[ri], 1);
        psum[ri] += __shfl_xor_sync(0xffffffffu, psum[ri], 2);
        lrow[ri] = lrow[ri] * corr[ri] + psum[ri];
        mrow[ri] = mnew[ri];
    }
}

template <int D> __device__ __forceinline__ void rescale_rows(float* o, const float* corr) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        o[4 * n] *= corr[0]; o[4 * n + 1] *= corr[0]; o[4 * n + 2] *= corr[1]; o[4 * n + 3] *= corr[1];
    }
}

// P as A fragments, 16 keys per step: groups 2kt (keys +0..7) and 2kt+1 (keys +8..15)
template <bool BF16> __device__ __forceinline__ void probs_to_fragments(unsigned (*pa)[4], const float* sc) {
#pragma unroll
    for (int kt = 0; kt < HBC / 16; ++kt) {
        pa[kt][0] = cvt2<BF16>(sc[8 * kt + 0], sc[8 * kt + 1]);
        pa[kt][1] = cvt2<BF16>(sc[8 * kt + 2], sc[8 * kt + 3]);
        pa[kt][2] = cvt2<BF16>(sc[8 * kt + 4], sc[8 * kt + 5]);
        pa[kt][3] = cvt2<BF16>(sc[8 * kt + 6], sc[8 * kt + 7]);
    }
}

template <int D, bool BF16, int SCHED>
__device__ void flash_wgmma(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                            const float* __restrict__ mask, u16* __restrict__ out, const FlashParams& p) {
    constexpr bool PINGPONG = (SCHED & SCHED_PINGPONG) != 0;
    constexpr bool OVERLAP = (SCHED & SCHED_OVERLAP) != 0;
    constexpr bool PAIRED = (SCHED & SCHED_PAIRED_LOADS) != 0;
    constexpr bool SWZ = (SCHED & SCHED_SWIZZLE64) != 0;
    constexpr int VEC = D / 8;                 // 16-byte chunks per row
    constexpr int ROWB = D * 16;               // bytes between 8-row groups (stride of the canonical layout)
    constexpr int QBYTES = HBR * D * 2;
    constexpr int TILEB = HBC * D * 2;         // one K or V tile
    constexpr int NO = D / 8;                  // 8-column groups of the output
    static_assert(D % 32 == 0 && D <= 128, "head dim 64, 96 or 128");
    extern __shared__ __align__(128) unsigned char smem[];
    const unsigned sQ = smem_u32(smem);
    const unsigned sKV = sQ + QBYTES;          // stage s: K at sKV + 2 s TILEB, V one tile later
    const unsigned barFull = sKV + HSTAGES * 2 * TILEB, barEmpty = barFull + 8 * HSTAGES;

    const int tid = threadIdx.x, wg = tid >> 7;
    const i64 qTiles = (p.Lq + HBR - 1) / HBR;
    const i64 qt = blockIdx.x % qTiles;
    const i64 h = (blockIdx.x / qTiles) % p.Hq;
    const i64 b = blockIdx.x / (qTiles * p.Hq);
    const i64 kvh = h / (p.Hq / p.Hkv);
    const i64 i0 = qt * HBR;
    const i64 shift = p.Lk - p.Lq;
    i64 jEnd = p.Lk, jBegin = 0;
    if (p.causal) {
        const i64 last = i0 + HBR - 1 + shift;
        jEnd = last + 1 < p.Lk ? last + 1 : p.Lk;
        if (p.window > 0) { const i64 first = i0 + shift - p.window + 1; jBegin = first > 0 ? (first / HBC) * HBC : 0; }
    }
    if (jEnd < jBegin) jEnd = jBegin;
    const int nTiles = (int)((jEnd - jBegin + HBC - 1) / HBC);

    if (tid == 0) {
        for (int s = 0; s < HSTAGES; ++s) { mbar_init(barFull + 8 * s, 128); mbar_init(barEmpty + 8 * s, 256); }
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer: 128 threads copy K and V tiles ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        // the swizzle is applied to address bits, so every 512-byte atom must start on a boundary
        if (SWZ && (sQ & 511u)) __trap();
        const int kvStride = (int)(p.Hkv * D);   // elements between consecutive keys
        const u16* kBase = k + (b * p.Lk * p.Hkv + kvh) * D;
        const u16* vBase = v + (b * p.Lk * p.Hkv + kvh) * D;
        auto issue = [&](int it) {
            const int s = it % HSTAGES;
            const i64 j0 = jBegin + (i64)it * HBC;
            const int rowsLeft = (int)(p.Lk - j0 < HBC ? p.Lk - j0 : HBC);
            const u16* kt = kBase + j0 * kvStride;
            const u16* vt = vBase + j0 * kvStride;
            const unsigned dK = sKV + 2 * s * TILEB, dV = dK + TILEB;
#pragma unroll 4
            for (int c = tid; c < HBC * VEC; c += 128) {
                int r, col;
                tile_chunk<VEC, HBC, PAIRED>(c, r, col);
                const unsigned at = chunk_offset<VEC, HBC, SWZ>(r, col);
                const bool in = r < rowsLeft;
                const int off = in ? r * kvStride + col * 8 : 0;
                cp_async16(dK + at, kt + off, in ? 16 : 0);
                cp_async16(dV + at, vt + off, in ? 16 : 0);
            }
            cp_async_commit();
        };
        if (nTiles > 0) issue(0);
        for (int it = 1; it < nTiles; ++it) {
            const int s = it % HSTAGES;
            if (it >= HSTAGES) mbar_wait<true>(barEmpty + 8 * s, ((it / HSTAGES) - 1) & 1);
            issue(it);
            cp_async_wait<1>();              // tile it-1 has landed (this thread's copies)
            fence_proxy_async();
            mbar_arrive(barFull + 8 * ((it - 1) % HSTAGES));
        }
        if (nTiles > 0) {
            cp_async_wait<0>();
            fence_proxy_async();
            mbar_arrive(barFull + 8 * ((nTiles - 1) % HSTAGES));
        }
        // drain: wait until the consumers have released the last tiles, so that a consumer that
        // gave up on a wait (and exited) makes the launch fail here instead of passing unnoticed
        for (int it = nTiles > HSTAGES ? nTiles - HSTAGES : 0; it < nTiles; ++it)
            mbar_wait<true>(barEmpty + 8 * (it % HSTAGES), (it / HSTAGES) & 1);
    } else {
    // ---- consumers: warpgroups 1 and 2, 64 query rows each (the roles are the two branches of
    // one if/else, which is what lets ptxas give this branch the registers setmaxnreg raises) ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int cwg = wg - 1, ctid = tid & 127, warp = ctid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const unsigned sQw = sQ + cwg * (QBYTES / 2);
    {
        const i64 r0 = i0 + cwg * 64;
        const u16* qb = q + ((b * p.Lq) * p.Hq + h) * D;
        const i64 qStride = p.Hq * D;
#pragma unroll
        for (int c = ctid; c < 64 * VEC; c += 128) {
            int r, col;
            tile_chunk<VEC, 64, PAIRED>(c, r, col);
            const bool in = r0 + r < p.Lq;
            cp_async16(sQw + chunk_offset<VEC, 64, SWZ>(r, col), qb + (in ? (r0 + r) * qStride + col * 8 : 0), in ? 16 : 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();
        asm volatile("bar.sync %0, 128;" :: "r"(1 + cwg) : "memory");
    }

    // Turns: warpgroup cwg waits on barrier 3 + cwg before issuing, and after issuing lets the other
    // warpgroup go (arrive on 3 + (cwg ^ 1)). Warpgroup 1 grants the first turn, warpgroup 0 takes
    // one more turn at the end, so every barrier use completes. Both warpgroups see the same tiles
    // and the same empty-tile votes, so their turns pair up.
    auto myTurn = [&]() { if (PINGPONG) asm volatile("bar.sync %0, 256;" :: "r"(3 + cwg) : "memory"); };
    auto otherTurn = [&]() { if (PINGPONG) asm volatile("bar.arrive %0, 256;" :: "r"(3 + (cwg ^ 1)) : "memory"); };
    if (cwg == 1) otherTurn();

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float mrow[2] = {-NB_INF, -NB_INF}, lrow[2] = {0.f, 0.f};
    // Positions in 32 bits (a K of 2^31 keys would not fit in a GPU's memory): registers are what
    // the overlapped schedule runs short of, and a 64-bit value takes two. rowKey is the last key
    // a causal mask lets this thread's first row see (its second row sees 8 more).
    const int rowKey = (int)(i0 + shift) + cwg * 64 + warp * 16 + g;
    const int firstKey = (int)jBegin, keyCount = (int)p.Lk;
    const float* maskBatch = p.hasMask ? mask + b * p.Lk : nullptr;
    const float sl2 = p.scale * 1.4426950408889634f;   // raw score -> log2 units

    // which path a tile takes: full tiles have no per-score test; a key padding mask is read as 4
    // votes per lane (identical in every warp, so the skip of an all-masked tile is warpgroup-uniform)
    auto classify = [&](int j0, bool& fullTile, bool& emptyTile) {
        fullTile = false; emptyTile = false;
        if (!p.causal && j0 + HBC <= keyCount) {
            if (!maskBatch) fullTile = true;
            else {
                const float* mrowp = maskBatch + j0;
                const bool v0 = mrowp[lane] != 0.f, v1 = mrowp[lane + 32] != 0.f;
                const bool v2 = mrowp[lane + 64] != 0.f, v3 = mrowp[lane + 96] != 0.f;
                fullTile = __all_sync(0xffffffffu, v0 && v1 && v2 && v3);
                emptyTile = !__any_sync(0xffffffffu, v0 || v1 || v2 || v3);
            }
        }
    };
    auto softmax = [&](float* sc, float* corr, int j0, bool fullTile) {
        if (fullTile) {
            softmax_tile<false>(sc, mrow, lrow, corr, p, nullptr, 0, nullptr, t4, sl2);
        } else {
            const int diag[2] = {rowKey - j0, rowKey + 8 - j0};
            softmax_tile<true>(sc, mrow, lrow, corr, p, maskBatch ? maskBatch + j0 : nullptr, keyCount - j0, diag, t4, sl2);
        }
    };
    // S = Q K^T over D / 16 steps of 16 head dims. No swizzle: two core matrices, 256 bytes, per
    // step. Swizzled: half of a 64-byte atom row, so the step starts 32 bytes into atom column
    // ks / 2 (leading offset unused for swizzled K-major operands; 8-row groups 512 bytes apart).
    auto issueScores = [&](float* sc, unsigned sK) {
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            if (SWZ) wgmma_scores<BF16>(sc, smem_desc_sw64(sQw + (ks >> 1) * (64 * 64) + (ks & 1) * 32, 16, 512),
                                        smem_desc_sw64(sK + (ks >> 1) * (HBC * 64) + (ks & 1) * 32, 16, 512), ks > 0);
            else wgmma_scores<BF16>(sc, smem_desc(sQw + ks * 256, 128, ROWB), smem_desc(sK + ks * 256, 128, ROWB), ks > 0);
        }
    };
    // O += P V: 16 keys (two 8-key groups) per step. No swizzle: groups 2 ROWB bytes apart.
    // Swizzled (MN-major): leading offset = between atom columns along the head dim (HBC * 64
    // bytes), stride offset = between 8-key groups (512 bytes).
    auto issuePV = [&](unsigned (*pa)[4], unsigned sV) {
#pragma unroll
        for (int kt = 0; kt < HBC / 16; ++kt) {
            if (SWZ) wgmma_pv<D, BF16>(o, pa[kt], smem_desc_sw64(sV + kt * 2 * 512, HBC * 64, 512));
            else wgmma_pv<D, BF16>(o, pa[kt], smem_desc(sV + kt * 2 * ROWB, ROWB, 128));
        }
    };

    if (!OVERLAP) {
        for (int it = 0; it < nTiles; ++it) {
            const int s = it % HSTAGES;
            const int j0 = firstKey + it * HBC;
            bool fullTile, emptyTile;
            classify(j0, fullTile, emptyTile);
            mbar_wait<false>(barFull + 8 * s, (it / HSTAGES) & 1);
            fence_proxy_async();
            if (!emptyTile) {
                const unsigned sK = sKV + 2 * s * TILEB, sV = sK + TILEB;
                float sc[HBC / 2];
                myTurn();
                wgmma_fence();
                issueScores(sc, sK);
                wgmma_commit();
                otherTurn();
                wgmma_wait0();
                fence_regs<HBC / 2>(sc);
                float corr[2];
                softmax(sc, corr, j0, fullTile);
                rescale_rows<D>(o, corr);
                unsigned pa[HBC / 16][4];
                probs_to_fragments<BF16>(pa, sc);
                fence_regs<D / 2>(o);
                myTurn();
                wgmma_fence();
                issuePV(pa, sV);
                wgmma_commit();
                otherTurn();
                wgmma_wait0();
                fence_regs<D / 2>(o);
            }
            mbar_arrive(barEmpty + 8 * s);
        }
    } else if (nTiles > 0) {
        // Tile 0: scores, softmax, P kept in pa; its stage stays held until P_0 V_0 is done.
        // Every later tile: issue S_it and P_{it-1} V_{it-1} (two groups), wait for S_it only,
        // softmax, then wait for the product, release tile it-1's stage, rescale O, convert P_it.
        // A stage is released one tile later than in the plain schedule; with 3 stages the
        // producer still has tile it+1 ready when the consumers reach it (it needs tile it-2's
        // stage, released during tile it-1). A key padding mask's vote on a tile (classify) is
        // taken one tile ahead, while the products run, so its loads do not delay the issue.
        float sc[HBC / 2];
        unsigned pa[HBC / 16][4];
        bool nextFull, ignored;
        {
            bool fullTile;
            classify(firstKey, fullTile, ignored);
            mbar_wait<false>(barFull, 0);
            myTurn();
            wgmma_fence();
            issueScores(sc, sKV);
            wgmma_commit();
            otherTurn();
            classify(firstKey + HBC, nextFull, ignored);
            wgmma_wait<0>();
            fence_regs<HBC / 2>(sc);
            float corr[2];
            softmax(sc, corr, firstKey, fullTile);   // o is still zero: no rescale
            probs_to_fragments<BF16>(pa, sc);
        }
        for (int it = 1; it < nTiles; ++it) {
            const int s = it % HSTAGES, sPrev = (it - 1) % HSTAGES;
            const int j0 = firstKey + it * HBC;
            const bool fullTile = nextFull;
            mbar_wait<false>(barFull + 8 * s, (it / HSTAGES) & 1);
            myTurn();
            wgmma_fence();
            issueScores(sc, sKV + 2 * s * TILEB);
            wgmma_commit();
            issuePV(pa, sKV + 2 * sPrev * TILEB + TILEB);
            wgmma_commit();
            otherTurn();
            // the next tile's vote; its mask loads stay in bounds (classify reads a tile only
            // when all of it lies before Lk) even past the last tile
            classify(j0 + HBC, nextFull, ignored);
            wgmma_wait<1>();                     // the scores; P V may still run
            fence_regs<HBC / 2>(sc);
            float corr[2];
            softmax(sc, corr, j0, fullTile);
            wgmma_wait<0>();                     // P_{it-1} V_{it-1} done: o and pa are free
            fence_regs<D / 2>(o);
            fence_regs_u<HBC / 16>(pa);
            mbar_arrive(barEmpty + 8 * sPrev);
            rescale_rows<D>(o, corr);
            probs_to_fragments<BF16>(pa, sc);
        }
        const int sLast = (nTiles - 1) % HSTAGES;
        fence_regs<D / 2>(o);
        myTurn();
        wgmma_fence();
        issuePV(pa, sKV + 2 * sLast * TILEB + TILEB);
        wgmma_commit();
        otherTurn();
        wgmma_wait<0>();
        fence_regs<D / 2>(o);
        fence_regs_u<HBC / 16>(pa);
        mbar_arrive(barEmpty + 8 * sLast);
    }
    if (cwg == 0) myTurn();

    // normalise and store
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const i64 i = i0 + cwg * 64 + warp * 16 + g + 8 * ri;
        if (i >= p.Lq) continue;
        const float inv = lrow[ri] > 0.f ? 1.f / lrow[ri] : 0.f;
        u16* dst = out + ((b * p.Lq + i) * p.Hq + h) * D;
#pragma unroll
        for (int n = 0; n < NO; ++n)
            *(unsigned*)(dst + n * 8 + t4 * 2) = cvt2<BF16>(o[4 * n + 2 * ri] * inv, o[4 * n + 2 * ri + 1] * inv);
    }
    }
}

// The engine's variant (SCHED_* bits above): the one constant to change when
// tools/bench/hopper_attn_check.py, which checks and times every variant, says another is the
// fastest that passes (tools/bench/gpu-session-h.sh makes that choice on the GPU machine). The
// overlapped ones need 167 (d96) and 183 (d128) registers per consumer thread. A variant becomes
// the default only after it has passed on a GPU. On the H200 (2026-12-03) every variant passed and
// the free schedule with the 64-byte swizzle was the fastest: 0.879 ms at the DiT shape against
// 1.218 for no swizzle; the overlapped schedules were slower (1.16-1.63 ms).
#define NB_FLASH_SCHEDULE (SCHED_SWIZZLE64)

// One block per SM (about 170-224 KiB of shared memory); the register cap at entry (384 threads,
// 168 each) is what setmaxnreg redistributes: 40 for the producer, 232 for each consumer.
#define FLASH_WGMMA(name, D, BF) \
extern "C" __global__ void __launch_bounds__(HTHREADS, 1) name(const u16* q, const u16* k, const u16* v, const float* mask, \
                                                              u16* out, const __grid_constant__ FlashParams p) { \
    flash_wgmma<D, BF, NB_FLASH_SCHEDULE>(q, k, v, mask, out, p); }

FLASH_WGMMA(nb_flash_wgmma_bf16_d64, 64, true)
FLASH_WGMMA(nb_flash_wgmma_bf16_d96, 96, true)
FLASH_WGMMA(nb_flash_wgmma_bf16_d128, 128, true)
FLASH_WGMMA(nb_flash_wgmma_f16_d64, 64, false)
FLASH_WGMMA(nb_flash_wgmma_f16_d96, 96, false)
FLASH_WGMMA(nb_flash_wgmma_f16_d128, 128, false)
