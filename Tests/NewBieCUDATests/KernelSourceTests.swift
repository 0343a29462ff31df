import Foundation
import NewBieTestSupport
import XCTest
@testable import NewBieCUDA

/// The CUDA kernels are compiled by NVRTC on the GPU machine only; this syntax-checks them
/// everywhere (CI included) with the toolchain's clang in CUDA device mode, so a stray brace or
/// an undeclared name fails here rather than at the first run on a GPU. The prelude declares what
/// NVRTC provides without headers.
final class KernelSourceTests: XCTestCase {
    static let prelude = """
    #define __device__ __attribute__((device))
    #define __global__ __attribute__((global))
    #define __shared__ __attribute__((shared))
    #define __forceinline__ __inline__ __attribute__((always_inline))
    #define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
    #define __align__(n) __attribute__((aligned(n)))
    #define __grid_constant__
    #include "__clang_cuda_builtin_vars.h"
    typedef __SIZE_TYPE__ size_t;
    __device__ float __int_as_float(int);
    __device__ float __uint_as_float(unsigned);
    __device__ unsigned __float_as_uint(float);
    __device__ int __float_as_int(float);
    __device__ void __syncthreads();
    __device__ void __trap();
    __device__ float __shfl_xor_sync(unsigned, float, int);
    __device__ unsigned __shfl_xor_sync(unsigned, unsigned, int);
    __device__ unsigned atomicMax(unsigned*, unsigned);
    __device__ int __all_sync(unsigned, int);
    __device__ int __any_sync(unsigned, int);
    __device__ float rsqrtf(float); __device__ float sqrtf(float); __device__ float expf(float); __device__ float exp2f(float);
    __device__ float logf(float); __device__ float tanhf(float); __device__ float erff(float); __device__ float sinf(float);
    __device__ float cosf(float); __device__ float fmaxf(float, float); __device__ float fminf(float, float);
    __device__ float fabsf(float); __device__ float fmaf(float, float, float);
    __device__ float __fadd_rn(float, float); __device__ float __fmul_rn(float, float); __device__ float __fsub_rn(float, float);
    __device__ float __frcp_rn(float); __device__ float __fdividef(float, float); __device__ float __expf(float); __device__ bool isfinite(float);
    struct __align__(8) uint2 { unsigned x, y; };
    struct __align__(16) uint4 { unsigned x, y, z, w; };
    struct __align__(16) float4 { float x, y, z, w; };
    __device__ uint2 make_uint2(unsigned, unsigned);
    __device__ uint4 make_uint4(unsigned, unsigned, unsigned, unsigned);

    """

    func clang() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
        for dir in path.split(separator: ":") {
            let c = "\(dir)/clang++"
            if FileManager.default.isExecutableFile(atPath: c) { return c }
        }
        throw XCTSkip("no clang++ on PATH: the kernel sources are only checked by NVRTC on a GPU machine")
    }

    func testKernelSourcesParseAsCUDA() throws {
        let clang = try clang()
        let kernels = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/NewBieCUDA/Kernels")
        let sources = try FileManager.default.contentsOfDirectory(atPath: kernels.path).filter { $0.hasSuffix(".cu") }.sorted()
        XCTAssertEqual(sources, ["attention.cu", "conv.cu", "elementwise.cu", "flash.cu", "flash_hopper.cu", "fused.cu", "gguf.cu", "norms.cu", "quant.cu"])
        let prelude = TestScratch.path("newbie-nvrtc-prelude-\(getpid()).h")
        try Self.prelude.write(toFile: prelude, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: prelude) }
        for name in sources {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: clang)
            // the Hopper-only module is checked for the target NVRTC builds it for
            let arch = name == "flash_hopper.cu" ? "sm_90a" : "sm_90"
            p.arguments = ["-x", "cuda", "--cuda-gpu-arch=\(arch)", "--cuda-device-only", "-nocudainc", "-nocudalib", "-fsyntax-only",
                           "-std=c++17", "-include", prelude, kernels.appendingPathComponent(name).path]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = Pipe()
            try p.run()
            let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            if text.contains("unknown target CPU") || text.contains("cannot find CUDA") {
                throw XCTSkip("this clang cannot check CUDA sources: \(text.prefix(200))")
            }
            XCTAssertEqual(p.terminationStatus, 0, "\(name) does not parse:\n\(text)")
        }
    }
}

/// Every kernel module compiled by the real NVRTC (for sm_90, the Hopper-only module for sm_90a; no
/// GPU needed), the shared header
/// handed over by name as at load time, and every kernel the backend looks up present in its
/// module's cubin. Skipped where libnvrtc cannot be loaded (LD_LIBRARY_PATH must reach it, e.g. the
/// nvidia/cu13/lib folder of a PyTorch CUDA wheel).
final class KernelModuleTests: XCTestCase {
    func testEveryModuleCompilesWithTheSharedHeader() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC() } catch { throw XCTSkip("NVRTC is not loadable here: \(error)") }
        let cache = TestScratch.path("newbie-kernel-cache-\(getpid())")
        setenv("NEWBIE_KERNEL_CACHE", cache, 1)
        defer { unsetenv("NEWBIE_KERNEL_CACHE"); try? FileManager.default.removeItem(atPath: cache) }
        let headers = try CUDABackend.headers.map { (name: $0, source: try CUDABackend.kernelSource($0)) }
        var names: [String] = []
        for (module, kernels, arch) in CUDABackend.modules(computeCapability: 90) {
            let source = try CUDABackend.kernelSource(module + ".cu")
            XCTAssertTrue(source.contains("#include \"common.cuh\""), "\(module).cu")
            let cubin = try nvrtc.cubin(source: source, name: module, arch: arch, headers: headers)
            for k in kernels { XCTAssertNotNil(cubin.range(of: Data(k.utf8)), "\(k) is not in \(module).cu's cubin") }
            names += kernels
        }
        XCTAssertEqual(names.count, Set(names).count, "a kernel listed in two modules")
        // without the header the include cannot resolve: the header really is what NVRTC reads
        XCTAssertThrowsError(try nvrtc.cubin(source: try CUDABackend.kernelSource("norms.cu"), name: "norms", arch: "90"))
    }

    /// wgmma exists only on sm_90a: NVRTC refuses the Hopper module for plain sm_90, which is why it
    /// is built for "90a" and loaded on compute capability 9.0 only.
    func testHopperModuleNeedsTheArchSpecificTarget() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC() } catch { throw XCTSkip("NVRTC is not loadable here: \(error)") }
        let cache = TestScratch.path("newbie-kernel-cache-\(getpid())")
        setenv("NEWBIE_KERNEL_CACHE", cache, 1)
        defer { unsetenv("NEWBIE_KERNEL_CACHE"); try? FileManager.default.removeItem(atPath: cache) }
        let headers = try CUDABackend.headers.map { (name: $0, source: try CUDABackend.kernelSource($0)) }
        let source = try CUDABackend.kernelSource("flash_hopper.cu")
        XCTAssertThrowsError(try nvrtc.cubin(source: source, name: "flash_hopper", arch: "90", headers: headers)) { error in
            // refused for the target, not for anything else in the source
            XCTAssertTrue("\(error)".contains("not supported on .target 'sm_90'"), "\(error)")
        }
        XCTAssertNoThrow(try nvrtc.cubin(source: source, name: "flash_hopper", arch: "90a", headers: headers))
    }

    /// The wgmma kernels keep their products asynchronous and their registers in registers: ptxas
    /// reports no spill and no C7512 ("wgmma.mma_async instructions are serialized"), which it
    /// prints when the consumers' registers run short (as they did while consumer code could trap).
    func testHopperModuleHasNoSpillsAndNoSerializedWgmma() throws {
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC() } catch { throw XCTSkip("NVRTC is not loadable here: \(error)") }
        let headers = try CUDABackend.headers.map { (name: $0, source: try CUDABackend.kernelSource($0)) }
        let report = try nvrtc.ptxasReport(source: try CUDABackend.kernelSource("flash_hopper.cu"), name: "flash_hopper",
                                           arch: "90a", headers: headers)
        let entries = report.components(separatedBy: "\n").filter { $0.contains("Compiling entry function") }
        XCTAssertEqual(entries.count, 6, "one report per kernel:\n\(report)")
        XCTAssertFalse(report.contains("C7512"), report)
        XCTAssertFalse(report.contains("serialized"), report)
        let spills = report.components(separatedBy: "\n").filter { $0.contains("spill stores") }
        XCTAssertEqual(spills.count, 6, report)
        for line in spills { XCTAssertTrue(line.contains(" 0 bytes spill stores, 0 bytes spill loads"), line) }
    }
}

/// Which GPUs load which modules: the wgmma module only on compute capability 9.0 (sm_90a code runs
/// nowhere else), every other module everywhere, built for the GPU's own architecture.
final class KernelModuleSelectionTests: XCTestCase {
    func testHopperModuleOnlyOnComputeCapability90() {
        let hopper = CUDABackend.modules(computeCapability: 90)
        XCTAssertEqual(hopper.first { $0.name == "flash_hopper" }?.arch, "90a")
        XCTAssertEqual(Set(hopper.filter { $0.name != "flash_hopper" }.map(\.arch)), ["90"])
        XCTAssertTrue(hopper.contains { $0.name == "flash" }, "the mma.sync kernel stays (bias, and NEWBIE_FLASH=mma)")
        for cc in [80, 86, 89, 100, 120] {
            let m = CUDABackend.modules(computeCapability: cc)
            XCTAssertFalse(m.contains { $0.name == "flash_hopper" }, "sm_\(cc) must not load the sm_90a module")
            XCTAssertEqual(Set(m.map(\.arch)), ["\(cc)"])
            XCTAssertEqual(m.count, CUDABackend.modules.count)
        }
        XCTAssertEqual(CUDABackend.hopperModules.first?.1.count, 6, "bf16 and fp16 x head dims 64, 96, 128")
    }
}
