import Foundation
import NewBieTensor

/// The CUDA backend: device memory from a caching pool, one stream, kernels compiled by NVRTC,
/// GEMMs through cuBLASLt. Ops are enqueued on the stream; reading a tensor back synchronises.
public final class CUDABackend: Backend, @unchecked Sendable {
    public let device: Device
    public let name: String
    public let computeCapability: Int
    public let totalMemory: Int
    /// fp32 GEMMs on the tensor cores in TF32 (faster, ~1e-3 relative error); off by default.
    public var allowTF32 = false
    /// Fill every new allocation with 0xFF bytes (NaN in every float type), so that an element a
    /// kernel fails to write shows up as NaN in checks. For `gpu-check`; costs a memset per tensor.
    public var poisonAllocations = false
    /// Use the simple one-warp-per-row attention kernel even where the flash kernel applies (checks).
    public var forceReferenceAttention = false
    /// Skip cuBLASLt's outer-vector scaling in fp8 products and take the fallback (unscaled fp32
    /// GEMM, then `nb_fp8_rescale`) that older cuBLASLt versions get, so that `gpu-check` runs it too.
    public var avoidFP8OuterVectorScaling = false
    /// The 16-bit RMSNorm kernels (fused.cu) hold a row in one block sized to it (true) or in one
    /// warp (false); `NEWBIE_NORM_ROWS=warp` picks the warp form, for A/B timings.
    public var normRowsPerBlock = ProcessInfo.processInfo.environment["NEWBIE_NORM_ROWS"] != "warp"
    /// Flash-attention kernel: "auto" takes the wgmma kernel (flash_hopper.cu) on compute
    /// capability 9.0 and the mma.sync kernel (flash.cu, 4 warps) elsewhere; "mma" (= "w4") and
    /// "w8" force the mma.sync kernel with 4 or 8 warps of 16 query rows (for A/B comparisons);
    /// set from the command line (`--flash`, `NEWBIE_FLASH`).
    public var flashVariant = "auto"
    /// The flash kernel of the last flash-attention launch (lets `gpu-check` prove which one ran;
    /// it clears this before a check).
    public var lastFlashKernel: String?

    let driver: CUDADriver
    let context: OpaquePointer?
    let stream: OpaquePointer?
    let blas: CUBLASLt
    var functions: [String: OpaquePointer?] = [:]
    let pool: MemoryPool
    /// cuBLASLt FP8 GEMM plans (CUDAQuantized.swift).
    let fp8Plans = FP8Plans()
    /// `--offload`'s copy stream and events (CUDAStreaming.swift), made on first use.
    var streamingState: CUDAWeightStreaming?
    let streamingLock = NSLock()
    private let lock = NSLock()

    private static let sharedLock = NSLock()
    nonisolated(unsafe) private static var instances: [Int: CUDABackend] = [:]

    /// Loads the driver, creates the context and stream, compiles the kernels and registers the
    /// backend for `.cuda(index)`. Throws a clear error when there is no usable GPU.
    @discardableResult
    public static func load(index: Int = 0) throws -> CUDABackend {
        sharedLock.lock(); defer { sharedLock.unlock() }
        if let b = instances[index] { return b }
        let b = try CUDABackend(index: index)
        instances[index] = b
        Backends.register(b)
        return b
    }

    private init(index: Int) throws {
        driver = try CUDADriver()
        try driver.check(driver.cuInit(0), "cuInit")
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, Int32(index)), "cuDeviceGet(\(index))")
        var major: Int32 = 0, minor: Int32 = 0
        try driver.check(driver.cuDeviceGetAttribute(&major, 75, dev), "compute capability")
        try driver.check(driver.cuDeviceGetAttribute(&minor, 76, dev), "compute capability")
        computeCapability = Int(major * 10 + minor)
        var nameBuf = [CChar](repeating: 0, count: 256)
        _ = driver.cuDeviceGetName(&nameBuf, 256, dev)
        name = String(cString: nameBuf)
        var total = 0
        _ = driver.cuDeviceTotalMem(&total, dev)
        totalMemory = total
        var ctx: OpaquePointer? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain")
        context = ctx
        try driver.check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        var s: OpaquePointer? = nil
        try driver.check(driver.cuStreamCreate(&s, 1), "cuStreamCreate")
        stream = s
        device = .cuda(index)
        pool = MemoryPool(driver: driver)
        blas = try CUBLASLt(driver: driver)
        try loadKernels()
    }

    /// Kernel sources (package resources, one module per op family) and the functions each defines.
    static let modules: [(String, [String])] = [
        ("elementwise", ["nb_copy", "nb_copy_raw", "nb_fill", "nb_unary", "nb_binary", "nb_embedding"]),
        ("norms", ["nb_reduce", "nb_softmax", "nb_softmax_rows_p16", "nb_rmsnorm", "nb_layernorm", "nb_groupnorm", "nb_groupnorm_partial", "nb_groupnorm_stats",
                   "nb_groupnorm_apply"] + ["f32", "f16", "bf16", "f32x4", "f16x8", "bf16x8"].flatMap { ["nb_gn_chunk_stats_" + $0, "nb_gn_apply_" + $0] }),
        ("attention", ["nb_rope", "nb_attention_ref"]),
        ("conv", ["nb_im2col", "nb_channel_fill", "nb_im2col_u16", "nb_im2col_u32", "nb_im2col_u16_k3w8", "nb_upsample2x"]),
        ("fused", ["nb_rmsnorm_mod", "nb_rmsnorm_gate_res", "nb_swiglu", "nb_qkv_norm_rope"]
                + ["bf16", "f16"].flatMap { t in ["nb_rmsnorm_mod_", "nb_rmsnorm_gate_res_", "nb_swiglu_", "nb_qkv_norm_rope_",
                                                 "nb_rmsnorm_mod_e4m3_", "nb_swiglu_e4m3_"].map { $0 + t } }
                + ["bf16", "f16"].flatMap { t in ["nb_rmsnorm_mod_blk_", "nb_rmsnorm_gate_res_blk_", "nb_rmsnorm_mod_e4m3_blk_"].map { $0 + t } }
                + ["nb_rmsnorm_gate_res_sc_bf16", "nb_rmsnorm_gate_res_sc_blk_bf16", "nb_swiglu_e4m3_sc_bf16", "nb_qkv_norm_rope_sc_bf16"]),
        ("quant", CUDABackend.quantKernels),
        ("gguf", CUDABackend.blockKernels.values.sorted()),
        ("flash", ["bf16", "f16"].flatMap { t in [64, 96, 128].flatMap { d in [4, 8].map { w in "nb_flash_\(t)_d\(d)_w\(w)" } } }),
    ]
    /// Modules built only for compute capability 9.0, for `sm_90a`: wgmma and setmaxnreg exist only
    /// on that target, and its code runs on 9.0 GPUs only. Other GPUs use the kernels above.
    static let hopperModules: [(String, [String])] = [
        ("flash_hopper", ["bf16", "f16"].flatMap { t in [64, 96, 128].map { d in "nb_flash_wgmma_\(t)_d\(d)" } }),
    ]

    /// The modules a GPU of compute capability `cc` loads, each with the NVRTC target it is built for.
    static func modules(computeCapability cc: Int) -> [(name: String, kernels: [String], arch: String)] {
        modules.map { (name: $0.0, kernels: $0.1, arch: "\(cc)") }
            + (cc == 90 ? hopperModules.map { (name: $0.0, kernels: $0.1, arch: "90a") } : [])
    }

    /// Headers the modules include (`#include "common.cuh"`), handed to NVRTC by name.
    static let headers = ["common.cuh"]

    /// The text of kernel resource `file` (e.g. "norms.cu").
    static func kernelSource(_ file: String) throws -> String {
        let url = URL(fileURLWithPath: file)
        let (base, ext) = (url.deletingPathExtension().lastPathComponent, url.pathExtension)
        guard let u = Bundle.module.url(forResource: base, withExtension: ext, subdirectory: "Kernels")
                ?? Bundle.module.url(forResource: base, withExtension: ext) else {
            throw CUDAError("kernel source \(file) is missing from the NewBieCUDA resources (keep the NewBie_NewBieCUDA.resources folder next to the binary)")
        }
        return try String(contentsOf: u, encoding: .utf8)
    }

    private func loadKernels() throws {
        let nvrtc = try NVRTC()
        let headers = try CUDABackend.headers.map { (name: $0, source: try CUDABackend.kernelSource($0)) }
        for (name, kernels, arch) in CUDABackend.modules(computeCapability: computeCapability) {
            let source = try CUDABackend.kernelSource(name + ".cu")
            let cubin = try nvrtc.cubin(source: source, name: name, arch: arch, headers: headers)
            var module: OpaquePointer? = nil
            try cubin.withUnsafeBytes { try driver.check(driver.cuModuleLoadData(&module, $0.baseAddress), "cuModuleLoadData(\(name))") }
            for f in kernels {
                var fn: OpaquePointer? = nil
                try driver.check(driver.cuModuleGetFunction(&fn, module, f), "cuModuleGetFunction(\(f))")
                functions[f] = fn
                // allow more than the default 48 KiB of dynamic shared memory (attribute 8)
                if f.hasPrefix("nb_flash") {
                    let bytes = f.hasPrefix("nb_flash_wgmma") ? CUDABackend.hopperFlashSharedBytes(headDim: 128) : 160 * 1024
                    try driver.check(driver.cuFuncSetAttribute(fn, 8, Int32(bytes)), "cuFuncSetAttribute(\(f))")
                }
            }
        }
    }

    func setCurrent() { driver.must(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent") }

    /// Throws the first failure since the last check (a launch, a cuBLASLt call, an allocation:
    /// out of memory names the size asked for and the bytes in use), naming the op.
    public func checkErrors() throws {
        if let f = driver.takeFailure() { throw DeviceError("\(device) (\(name)): \(f)") }
    }

    /// Waits for every queued op.
    public func synchronize() {
        setCurrent()
        precondition(capturing == nil, "a wait while recording device work")
        driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
    }

    /// Milliseconds of device time `body` enqueues, measured with CUDA events (median of `runs`
    /// after one warm-up run).
    public func time(runs: Int = 10, _ body: () -> Void) -> Double {
        setCurrent()
        var start: OpaquePointer? = nil, stop: OpaquePointer? = nil
        driver.must(driver.cuEventCreate(&start, 0), "cuEventCreate")
        driver.must(driver.cuEventCreate(&stop, 0), "cuEventCreate")
        defer { _ = driver.cuEventDestroy(start); _ = driver.cuEventDestroy(stop) }
        body()
        synchronize()
        var times: [Double] = []
        for _ in 0..<Swift.max(1, runs) {
            driver.must(driver.cuEventRecord(start, stream), "cuEventRecord")
            body()
            driver.must(driver.cuEventRecord(stop, stream), "cuEventRecord")
            driver.must(driver.cuEventSynchronize(stop), "cuEventSynchronize")
            var ms: Float = 0
            driver.must(driver.cuEventElapsedTime(&ms, start, stop), "cuEventElapsedTime")
            times.append(Double(ms))
        }
        times.sort()
        return times[times.count / 2]
    }

    // MARK: state of recorded work and profiling (used by CUDAGraphs.swift and CUDALaunch.swift)

    /// Set while a stream capture is in progress: uploads then go through pinned copies that the
    /// graph keeps, downloads and waits are errors.
    var capturing: CUDAGraph?

    var profile: [(String, OpaquePointer?, OpaquePointer?)] = []
    public var profiling = false

    // MARK: helpers

    static func dtypeCode(_ d: DType) -> Int32 {
        switch d {
        case .f32: return 0
        case .f16: return 1
        case .bf16: return 2
        case .i32: return 3
        case .i64: return 4
        case .u8, .bool: return 5
        case .f64: return 6
        case .i8: return 7
        case .i16: return 8
        }
    }

    func ptr(_ t: Tensor) -> UInt64 { t.buffer.deviceAddress + UInt64(t.offset * t.dtype.byteSize) }
    func base(_ t: Tensor) -> UInt64 { t.buffer.deviceAddress }

    func empty(_ shape: [Int], _ dtype: DType) -> Tensor { Tensor.empty(shape, dtype: dtype, device: device) }
}
