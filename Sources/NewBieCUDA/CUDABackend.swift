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
    /// Flash-attention block: "w4" or "w8" warps of 16 query rows each (w4 measured a little faster
    /// for the DiT on the H200); set from the command line (`--flash`).
    public var flashVariant = "w4"

    let driver: CUDADriver
    let context: OpaquePointer?
    let stream: OpaquePointer?
    let blas: CUBLASLt
    private var functions: [String: OpaquePointer?] = [:]
    let pool: MemoryPool
    /// cuBLASLt FP8 GEMM plans (CUDAQuantized.swift).
    let fp8Plans = FP8Plans()
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

    /// Kernel sources (package resources) and the functions each defines.
    static let modules: [(String, [String])] = [
        ("ops", ["nb_copy", "nb_copy_raw", "nb_fill", "nb_unary", "nb_binary", "nb_reduce", "nb_softmax", "nb_rmsnorm",
                 "nb_layernorm", "nb_groupnorm", "nb_rope", "nb_attention_ref", "nb_embedding", "nb_im2col",
                 "nb_channel_fill", "nb_im2col_u16", "nb_im2col_u32", "nb_groupnorm_partial", "nb_groupnorm_stats", "nb_groupnorm_apply", "nb_upsample2x", "nb_rmsnorm_mod", "nb_rmsnorm_gate_res", "nb_swiglu", "nb_qkv_norm_rope"]
                + ["bf16", "f16"].flatMap { t in ["nb_rmsnorm_mod_", "nb_rmsnorm_gate_res_", "nb_swiglu_", "nb_qkv_norm_rope_"].map { $0 + t } }),
        ("quant", CUDABackend.quantKernels),
        ("flash", ["bf16", "f16"].flatMap { t in [64, 96, 128].flatMap { d in [4, 8].map { w in "nb_flash_\(t)_d\(d)_w\(w)" } } }),
    ]

    private func loadKernels() throws {
        let nvrtc = try NVRTC()
        for (name, kernels) in CUDABackend.modules {
            guard let url = Bundle.module.url(forResource: name, withExtension: "cu", subdirectory: "Kernels")
                    ?? Bundle.module.url(forResource: name, withExtension: "cu") else {
                throw CUDAError("kernel source \(name).cu is missing from the NewBieCUDA resources (keep the NewBie_NewBieCUDA.resources folder next to the binary)")
            }
            let source = try String(contentsOf: url, encoding: .utf8)
            let cubin = try nvrtc.cubin(source: source, name: name, arch: computeCapability)
            var module: OpaquePointer? = nil
            try cubin.withUnsafeBytes { try driver.check(driver.cuModuleLoadData(&module, $0.baseAddress), "cuModuleLoadData(\(name))") }
            for f in kernels {
                var fn: OpaquePointer? = nil
                try driver.check(driver.cuModuleGetFunction(&fn, module, f), "cuModuleGetFunction(\(f))")
                functions[f] = fn
                // allow more than the default 48 KiB of dynamic shared memory (attribute 8)
                if f.hasPrefix("nb_flash") { try driver.check(driver.cuFuncSetAttribute(fn, 8, 160 * 1024), "cuFuncSetAttribute(\(f))") }
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

    // MARK: recorded work (CUDA graphs)

    /// Set while a stream capture is in progress: uploads then go through pinned copies that the
    /// graph keeps, downloads and waits are errors.
    private(set) var capturing: CUDAGraph?

    public func record(_ body: @escaping () throws -> Tensor) throws -> (work: RecordedWork, output: Tensor)? {
        setCurrent()
        let memory = pool.beginRecording()
        let graph = CUDAGraph(backend: self, memory: memory)
        capturing = graph
        // relaxed: allocations (cuMemAlloc for a new pool block) stay legal while capturing
        try driver.check(driver.cuStreamBeginCapture(stream, 2), "cuStreamBeginCapture")
        var output: Tensor? = nil, failure: Error? = nil
        do { output = try body() } catch { failure = error }
        var g: OpaquePointer? = nil
        let rc = driver.cuStreamEndCapture(stream, &g)
        capturing = nil
        pool.endRecording()
        graph.graph = g
        if let e = failure { throw e }
        try driver.check(rc, "cuStreamEndCapture")
        var exec: OpaquePointer? = nil
        try driver.check(driver.cuGraphInstantiateWithFlags(&exec, g, 0), "cuGraphInstantiateWithFlags")
        graph.exec = exec
        return (graph, output!)
    }

    // MARK: launching

    func launch(_ name: String, grid: Int, block: Int = 256, shared: Int = 0, _ args: KernelArgs) {
        guard !driver.failed else { return }  // an earlier failure: skip the work, report at the next check
        guard let fn = functions[name] else { driver.fail("CUDA kernel \(name) is not loaded"); return }
        setCurrent()
        precondition(grid < Int(Int32.max), "\(name): grid of \(grid) blocks is too large")
        let g = UInt32(Swift.max(1, grid))
        profiled(name) {
            args.withPointers { ptrs in
                driver.must(driver.cuLaunchKernel(fn, g, 1, 1, UInt32(block), 1, 1, UInt32(shared), stream, ptrs, nil), "launch \(name)")
            }
        }
    }

    /// A launch over a 2-D grid (x, y) of `block`-thread blocks.
    func launch2D(_ name: String, grid: (Int, Int), block: Int = 256, _ args: KernelArgs) {
        guard !driver.failed else { return }
        guard let fn = functions[name] else { driver.fail("CUDA kernel \(name) is not loaded"); return }
        setCurrent()
        precondition(grid.0 < Int(Int32.max) && grid.1 < 65536, "\(name): grid \(grid) is too large")
        profiled(name) {
            args.withPointers { ptrs in
                driver.must(driver.cuLaunchKernel(fn, UInt32(Swift.max(1, grid.0)), UInt32(Swift.max(1, grid.1)), 1, UInt32(block), 1, 1, 0,
                                                  stream, ptrs, nil), "launch \(name)")
            }
        }
    }

    // MARK: profiling (`--cuda-profile`): device time per kernel, from events around each launch

    private var profile: [(String, OpaquePointer?, OpaquePointer?)] = []
    public var profiling = false

    func profiled(_ name: String, _ body: () -> Void) {
        guard profiling, capturing == nil else { body(); return }
        var a: OpaquePointer? = nil, b: OpaquePointer? = nil
        driver.must(driver.cuEventCreate(&a, 0), "cuEventCreate")
        driver.must(driver.cuEventCreate(&b, 0), "cuEventCreate")
        driver.must(driver.cuEventRecord(a, stream), "cuEventRecord")
        body()
        driver.must(driver.cuEventRecord(b, stream), "cuEventRecord")
        profile.append((name, a, b))
    }

    /// Device milliseconds and launch counts per kernel since the last call; clears the record.
    public func profileReport() -> [(name: String, ms: Double, count: Int)] {
        synchronize()
        var acc: [String: (Double, Int)] = [:]
        for (name, a, b) in profile {
            var ms: Float = 0
            _ = driver.cuEventElapsedTime(&ms, a, b)
            let cur = acc[name] ?? (0, 0)
            acc[name] = (cur.0 + Double(ms), cur.1 + 1)
            _ = driver.cuEventDestroy(a); _ = driver.cuEventDestroy(b)
        }
        profile.removeAll()
        return acc.map { ($0.key, $0.value.0, $0.value.1) }.sorted { $0.ms > $1.ms }
    }

    /// Threads per block for the one-block-per-row kernels (norms, softmax): short rows get a warp.
    func rowThreads(_ d: Int) -> Int { d <= 256 ? 32 : (d <= 1024 ? 128 : 256) }

    /// Blocks for a grid-stride loop over n elements.
    func blocks(_ n: Int, _ threads: Int = 256) -> Int { Swift.max(1, Swift.min((n + threads - 1) / threads, 65536)) }

    // MARK: memory

    public func allocate(byteCount: Int) -> Buffer {
        setCurrent()
        let (ptr, size) = pool.take(Swift.max(byteCount, 1))
        // out of memory (recorded by the pool): a buffer at address 0 that no launch will touch
        guard ptr != 0 else { return Buffer(device: device, byteCount: byteCount, host: nil, deviceAddress: 0) }
        if poisonAllocations { driver.must(driver.cuMemsetD8Async(ptr, 0xFF, size, stream), "poison") }
        return Buffer(device: device, byteCount: byteCount, host: nil, deviceAddress: ptr, release: { [pool] in pool.give(ptr, size) })
    }

    public func upload(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, byteOffset: Int) {
        guard bytes.count > 0, !driver.failed, buffer.deviceAddress != 0 else { return }
        setCurrent()
        if let g = capturing {
            // recorded: a pinned copy the graph keeps, so each replay uploads these same bytes
            let pinned = g.pinnedCopy(bytes)
            driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset), pinned, bytes.count, stream), "upload")
            return
        }
        // Small uploads (RoPE tables, masks, timestep embeddings) go straight from pageable memory:
        // the driver stages them before returning and does not wait for the stream, so queued
        // kernels keep running. Large ones (weights) go through the pinned buffer in big chunks.
        if bytes.count <= 4 << 20 {
            driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset), bytes.baseAddress, bytes.count, stream), "upload")
            return
        }
        pool.staged(bytes.count) { staging, chunk in
            var done = 0
            while done < bytes.count {
                let n = Swift.min(chunk, bytes.count - done)
                driver.must(driver.cuStreamSynchronize(stream), "sync before staging")
                staging.copyMemory(from: bytes.baseAddress! + done, byteCount: n)
                driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset + done), staging, n, stream), "upload")
                done += n
            }
            driver.must(driver.cuStreamSynchronize(stream), "upload")
        }
    }

    public func download(_ buffer: Buffer, byteOffset: Int, into bytes: UnsafeMutableRawBufferPointer) {
        guard bytes.count > 0 else { return }
        // after a failure the data is meaningless: zeros (never read as a result: the next check throws)
        guard !driver.failed, buffer.deviceAddress != 0 else { bytes.initializeMemory(as: UInt8.self, repeating: 0); return }
        setCurrent()
        precondition(capturing == nil, "a download while recording device work (the recorded body must not read results)")
        driver.must(driver.cuMemcpyDtoHAsync(bytes.baseAddress, buffer.deviceAddress + UInt64(byteOffset), bytes.count, stream), "download")
        driver.must(driver.cuStreamSynchronize(stream), "download")
    }

    public var memoryStats: MemoryStats { pool.stats }
    public func resetPeakMemory() { pool.resetPeak() }

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

    // MARK: data movement

    public func copy(_ src: Tensor, into dst: Tensor) {
        let n = src.count
        if n == 0 { return }
        if src.dtype == dst.dtype {
            launch("nb_copy_raw", grid: blocks(n), KernelArgs().ptr(base(src)).strided(src).ptr(base(dst)).strided(dst).i64(n).i32(Int32(src.dtype.byteSize)))
        } else {
            launch("nb_copy", grid: blocks(n), KernelArgs().ptr(base(src)).i32(Self.dtypeCode(src.dtype)).strided(src)
                .ptr(base(dst)).i32(Self.dtypeCode(dst.dtype)).strided(dst).i64(n))
        }
    }

    public func fill(_ dst: Tensor, value: Float) {
        let n = dst.count
        if n == 0 { return }
        launch("nb_fill", grid: blocks(n), KernelArgs().ptr(ptr(dst)).i32(Self.dtypeCode(dst.dtype)).i64(n).f32(value))
    }

    // MARK: element-wise

    static func unaryCode(_ op: UnaryOp) -> (Int32, Float, Float) {
        switch op {
        case .identity: return (0, 0, 0)
        case .neg: return (1, 0, 0)
        case .abs: return (2, 0, 0)
        case .square: return (3, 0, 0)
        case .sqrt: return (4, 0, 0)
        case .rsqrt: return (5, 0, 0)
        case .exp: return (6, 0, 0)
        case .log: return (7, 0, 0)
        case .tanh: return (8, 0, 0)
        case .sin: return (16, 0, 0)
        case .cos: return (17, 0, 0)
        case .sigmoid: return (9, 0, 0)
        case .relu: return (10, 0, 0)
        case .silu: return (11, 0, 0)
        case .geluTanh: return (12, 0, 0)
        case .geluErf: return (13, 0, 0)
        case .affine(let a, let b): return (14, a, b)
        case .clamp(let lo, let hi): return (15, lo, hi)
        }
    }

    public func unary(_ op: UnaryOp, _ x: Tensor, dtype: DType) -> Tensor {
        let out = empty(x.shape, dtype)
        let n = x.count
        if n == 0 { return out }
        let (code, a, b) = Self.unaryCode(op)
        launch("nb_unary", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).strided(x)
            .ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i32(code).f32(a).f32(b))
        return out
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, dtype: DType) -> Tensor {
        let out = empty(a.shape, dtype)
        let n = a.count
        if n == 0 { return out }
        let code: Int32
        switch op {
        case .add: code = 0
        case .sub: code = 1
        case .mul: code = 2
        case .div: code = 3
        case .maximum: code = 4
        case .minimum: code = 5
        }
        launch("nb_binary", grid: blocks(n), KernelArgs().ptr(base(a)).i32(Self.dtypeCode(a.dtype)).strided(a)
            .ptr(base(b)).i32(Self.dtypeCode(b.dtype)).strided(b).ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i32(code))
        return out
    }

    // MARK: reductions and norms

    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, dtype: DType) -> Tensor {
        let out = empty([outer, inner], dtype)
        if outer * inner == 0 { return out }
        let code: Int32
        switch op {
        case .sum: code = 0
        case .mean: code = 1
        case .max: code = 2
        case .min: code = 3
        case .sumSquares: code = 4
        }
        launch("nb_reduce", grid: outer * inner, KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(outer).i64(n).i64(inner).i32(code))
        return out
    }

    public func softmax(_ x: Tensor) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let n = x.shape.last ?? 1
        let rows = x.count / Swift.max(n, 1)
        if rows == 0 { return out }
        launch("nb_softmax", grid: rows, block: rowThreads(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset).ptr(ptr(out)).i64(n))
        return out
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor?, eps: Float, style: RMSNormStyle) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape.last!
        let rows = x.count / Swift.max(d, 1)
        if rows == 0 { return out }
        launch("nb_rmsnorm", grid: rows, block: rowThreads(d), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).i32(Self.dtypeCode(weight?.dtype ?? .f32)).ptr(ptr(out)).i64(d).f32(eps)
            .i32(style == .roundThenWeight ? 0 : 1))
        return out
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape.last!
        let rows = x.count / Swift.max(d, 1)
        if rows == 0 { return out }
        // weight and bias share one dtype code in the kernel
        let wdt = weight?.dtype ?? bias?.dtype ?? .f32
        let b = bias.map { $0.dtype == wdt ? $0 : $0.to(wdt) }
        launch("nb_layernorm", grid: rows, block: rowThreads(d), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt)).ptr(ptr(out)).i64(d).f32(eps))
        return out
    }

    public func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let c = x.shape[1], s = x.shape.dropFirst(2).reduce(1, *)
        let wdt = weight?.dtype ?? bias?.dtype ?? .f32
        let b = bias.map { $0.dtype == wdt ? $0 : $0.to(wdt) }
        let batch = x.shape[0], n = (c / groups) * s
        if n >= 1 << 15 {
            // large groups (the VAE's): statistics from many blocks, then a plane-parallel pass
            let chunks = Swift.min(1024, n / (1 << 14)), groupsTotal = batch * groups
            let part = empty([groupsTotal * chunks], .f32), mean = empty([groupsTotal], .f32), rstd = empty([groupsTotal], .f32)
            for (stat, center) in [(mean, nil), (rstd, Optional(mean))] {
                launch2D("nb_groupnorm_partial", grid: (chunks, groupsTotal), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype))
                    .i64(x.offset).ptr(ptr(part)).ptr(center.map(ptr) ?? 0).i64(n).i32(Int32(chunks)))
                launch("nb_groupnorm_stats", grid: (groupsTotal + 255) / 256, KernelArgs().ptr(ptr(part)).ptr(ptr(stat)).i64(groupsTotal)
                    .i64(n).i32(Int32(chunks)).i32(center == nil ? 0 : 1).f32(eps))
            }
            launch2D("nb_groupnorm_apply", grid: (Swift.min((s + 255) / 256, 1024), batch * c), KernelArgs().ptr(base(x))
                .i32(Self.dtypeCode(x.dtype)).i64(x.offset).ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt))
                .ptr(ptr(out)).ptr(ptr(mean)).ptr(ptr(rstd)).i64(c).i64(s).i32(Int32(groups)))
            return out
        }
        launch("nb_groupnorm", grid: x.shape[0] * groups, KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt)).ptr(ptr(out)).i64(c).i64(s).i32(Int32(groups)).f32(eps))
        return out
    }

    // MARK: matrix products

    static func blasType(_ d: DType) -> Int32? {
        switch d {
        case .f32: return CUBLASLt.CUDA_R_32F
        case .f16: return CUBLASLt.CUDA_R_16F
        case .bf16: return CUBLASLt.CUDA_R_16BF
        default: return nil
        }
    }

    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0]
        let m = x.count / Swift.max(k, 1)
        let out = empty(Array(x.shape.dropLast()) + [n], x.dtype)
        if m == 0 || n == 0 { return out }
        guard let type = Self.blasType(x.dtype) else { driver.fail("linear: unsupported dtype \(x.dtype) on CUDA"); return out }
        guard !driver.failed else { return out }
        let w = weight.dtype == x.dtype ? weight : weight.to(x.dtype)
        let b = bias.map { $0.dtype == x.dtype ? $0 : $0.to(x.dtype) }
        if k == 0 { fill(out, value: 0); return b.map { out + $0 } ?? out }
        setCurrent()
        profiled("cublasLt linear") {
            do {
                try blas.gemm(m: m, n: n, k: k, batch: 1, type: type, a: ptr(x), strideA: 0, b: ptr(w), strideB: 0, transposeB: true,
                              c: ptr(out), strideC: 0, bias: b.map(ptr), allowTF32: allowTF32, stream: stream)
            } catch { driver.fail("linear [\(m) x \(k)] x [\(n) x \(k)]^T (\(x.dtype)): \(error)") }
        }
        return out
    }

    public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> Tensor {
        let batch = a.shape[0], m = a.shape[1], k = a.shape[2]
        let n = transposeB ? b.shape[1] : b.shape[2]
        let out = empty([batch, m, n], a.dtype)
        if batch * m * n == 0 { return out }
        guard let type = Self.blasType(a.dtype) else { driver.fail("matmul: unsupported dtype \(a.dtype) on CUDA"); return out }
        guard !driver.failed else { return out }
        let bb = b.dtype == a.dtype ? b : b.to(a.dtype)
        if k == 0 { fill(out, value: 0); return out }
        setCurrent()
        do {
            try blas.gemm(m: m, n: n, k: k, batch: batch, type: type, a: ptr(a), strideA: m * k, b: ptr(bb), strideB: k * n,
                          transposeB: transposeB, c: ptr(out), strideC: m * n, bias: nil, allowTF32: allowTF32, stream: stream)
        } catch { driver.fail("matmul \(batch) x [\(m) x \(k)] x [\(k) x \(n)] (\(a.dtype)): \(error)") }
        return out
    }

    // MARK: transformer ops

    public func rope(_ x: Tensor, cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let (b, l, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let n = b * l * h * d / 2
        if n == 0 { return out }
        launch("nb_rope", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(cos)).ptr(ptr(sin)).ptr(ptr(out)).i64(b).i64(l).i64(h).i64(d)
            .i32(cos.shape[0] == 1 ? 0 : 1).i32(layout == .interleaved ? 0 : 1))
        return out
    }

    public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions) -> Tensor {
        let (b, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let aligned = [ptr(q), ptr(k), ptr(v)].allSatisfy { $0 % 16 == 0 }
        let flash = (q.dtype == .bf16 || q.dtype == .f16) && k.dtype == q.dtype && v.dtype == q.dtype && d == dv
            && [64, 96, 128].contains(d) && aligned && !forceReferenceAttention
        // Head dims the flash kernels do not cover (the VAE's 512, Gemma's 256) and large Float32
        // problems go through matrix products (cuBLASLt) with chunked Float32 scores; the
        // one-warp-per-row reference kernel is left for small shapes.
        if !flash && !forceReferenceAttention && (Swift.max(d, dv) > 128 || lq * lk >= 1 << 16) {
            return attentionByMatmul(q, k, v, options: options)
        }
        precondition(d <= 256 && dv <= 256, "CUDA attention supports head dims up to 256")
        let out = empty([b, lq, hq, dv], q.dtype)
        if b * lq * hq == 0 { return out }
        let kk = k.dtype == q.dtype ? k : k.to(q.dtype), vv = v.dtype == q.dtype ? v : v.to(q.dtype)
        let mask = options.keyPaddingMask.map { $0.to(.f32) }
        let bias = options.bias.map { $0.to(.f32) }
        var p = AttnParamsRaw()
        p.i64s = [Int64(b), Int64(lq), Int64(lk), Int64(hq), Int64(hkv), Int64(d), Int64(dv)]
        p.scale = options.scale ?? 1 / Float(d).squareRoot()
        p.causal = options.causal ? 1 : 0
        p.window = Int32(options.slidingWindow ?? 0)
        p.hasMask = mask == nil ? 0 : 1
        p.hasBias = bias == nil ? 0 : 1
        p.biasB = Int64(bias?.shape[0] ?? 1)
        p.biasH = Int64(bias?.shape[1] ?? 1)
        let bytes = q.dtype.byteSize
        if flash {
            var f: [UInt8] = []
            func put<T>(_ v: T) { withUnsafeBytes(of: v) { f.append(contentsOf: $0) } }
            for v in [b, lq, lk, hq, hkv] { put(Int64(v)) }
            put(p.scale); put(p.causal); put(p.window); put(p.hasMask); put(p.hasBias); put(Int32(0))
            put(p.biasB); put(p.biasH)
            let w = flashVariant == "w8" ? 8 : 4
            let kernel = "nb_flash_\(q.dtype == .bf16 ? "bf16" : "f16")_d\(d)_w\(w)"
            // flash.cu: 16 query rows per warp, K and V double-buffered in tiles of 64 keys
            let rowsPerBlock = 16 * w
            let qTiles = (lq + rowsPerBlock - 1) / rowsPerBlock
            launch(kernel, grid: b * hq * qTiles, block: 32 * w, shared: (rowsPerBlock + 4 * 64) * (d + 8) * bytes,
                   KernelArgs().ptr(ptr(q)).ptr(ptr(kk)).ptr(ptr(vv)).ptr(mask.map(ptr) ?? 0).ptr(bias.map(ptr) ?? 0)
                    .ptr(ptr(out)).bytes(f))
            return out
        }
        let warps = b * lq * hq
        launch("nb_attention_ref", grid: (warps * 32 + 255) / 256, KernelArgs().ptr(ptr(q)).ptr(ptr(kk)).ptr(ptr(vv))
            .i32(Self.dtypeCode(q.dtype)).ptr(mask.map(ptr) ?? 0).ptr(bias.map(ptr) ?? 0).ptr(ptr(out)).bytes(p.encoded()))
        return out
    }

    public func embedding(_ table: Tensor, ids: Tensor, dtype: DType) -> Tensor {
        let n = ids.count, d = table.shape[1]
        let out = empty([n, d], dtype)
        if n * d == 0 { return out }
        launch("nb_embedding", grid: blocks(n * d), KernelArgs().ptr(ptr(table)).i32(Self.dtypeCode(table.dtype))
            .ptr(ptr(ids)).i32(Self.dtypeCode(ids.dtype)).ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i64(d))
        return out
    }

    // MARK: convolution

    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, options o: Conv2dOptions) -> Tensor {
        let (batch, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (cout, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3])
        let oh = (h + o.padTop + o.padBottom - kh) / o.strideH + 1
        let ow = (w + o.padLeft + o.padRight - kw) / o.strideW + 1
        let out = empty([batch, cout, oh, ow], x.dtype)
        guard let type = Self.blasType(x.dtype) else { driver.fail("conv2d: unsupported dtype \(x.dtype) on CUDA"); return out }
        guard !driver.failed else { return out }
        let wt = weight.dtype == x.dtype ? weight : weight.to(x.dtype)
        let kdim = cin * kh * kw, p = oh * ow
        let col = empty([kdim, p], x.dtype)
        setCurrent()
        // the bias goes in first and the product is added to it in fp32 (cuBLASLt's beta = 1): one
        // rounding of (W col + bias), as the CPU and cuDNN's fused bias do
        if let bias = bias {
            launch("nb_channel_fill", grid: blocks(out.count), KernelArgs().ptr(ptr(out)).i32(Self.dtypeCode(out.dtype))
                .ptr(ptr(bias)).i32(Self.dtypeCode(bias.dtype)).i64(cout).i64(p).i64(out.count))
        }
        for bi in 0..<batch {
            let xb = x.dtype.byteSize
            if cin < 65536 && (xb == 2 || xb == 4) {
                // x and col share the dtype: a raw copy
                launch2D(xb == 2 ? "nb_im2col_u16" : "nb_im2col_u32", grid: ((p + 1023) / 1024, cin),
                         KernelArgs().ptr(ptr(x) + UInt64(bi * cin * h * w * xb)).ptr(ptr(col)).i32(Int32(cin)).i32(Int32(h)).i32(Int32(w))
                    .i32(Int32(kh)).i32(Int32(kw)).i32(Int32(o.strideH)).i32(Int32(o.strideW)).i32(Int32(o.padTop)).i32(Int32(o.padLeft))
                    .i32(Int32(oh)).i32(Int32(ow)))
            } else {
                launch("nb_im2col", grid: blocks(kdim * p), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype))
                    .i64(x.offset + bi * cin * h * w).ptr(ptr(col)).i32(Self.dtypeCode(x.dtype)).i32(Int32(cin)).i32(Int32(h)).i32(Int32(w))
                    .i32(Int32(kh)).i32(Int32(kw)).i32(Int32(o.strideH)).i32(Int32(o.strideW)).i32(Int32(o.padTop)).i32(Int32(o.padLeft))
                    .i32(Int32(oh)).i32(Int32(ow)))
            }
            // out_b [cout, p] = W [cout, kdim] x col [kdim, p]
            profiled("cublasLt conv") { do {
                try blas.gemm(m: cout, n: p, k: kdim, batch: 1, type: type, a: ptr(wt), strideA: 0, b: ptr(col), strideB: 0,
                              transposeB: false, c: ptr(out) + UInt64(bi * cout * p * x.dtype.byteSize), strideC: 0,
                              bias: nil, allowTF32: allowTF32, accumulate: bias != nil, stream: stream)
            } catch { driver.fail("conv2d \(x.shape) * \(weight.shape) (\(x.dtype)): \(error)") } }
        }
        return out
    }

    // MARK: fused transformer ops (kernels in ops.cu round where the default compositions do)

    /// The suffix of the fast fused kernels ("bf16" / "f16") when every operand is contiguous, of that one
    /// 16-bit dtype, 16-byte aligned and rows are whole 16-byte vectors; nil for the generic kernels.
    func fastSuffix(_ ts: [Tensor?], rowLength d: Int, maxRow: Int = 4096) -> String? {
        guard let first = ts.compactMap({ $0 }).first, first.dtype == .bf16 || first.dtype == .f16,
              d % 8 == 0, d <= maxRow else { return nil }
        for case let t? in ts where t.dtype != first.dtype || !t.isContiguous || ptr(t) % 16 != 0 { return nil }
        return first.dtype == .bf16 ? "bf16" : "f16"
    }

    public func rmsNormModulate(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        if rows == 0 { return out }
        if let t = fastSuffix([x, weight, scale], rowLength: d), x.shape[1] > 0 {
            launch("nb_rmsnorm_mod_" + t, grid: (rows + 7) / 8, block: 256, KernelArgs().ptr(ptr(x)).ptr(ptr(weight))
                .ptr(scale.map(ptr) ?? 0).ptr(ptr(out)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps))
            return out
        }
        launch("nb_rmsnorm_mod", grid: rows, block: rowThreads(d), KernelArgs().ptr(ptr(x)).i32(Self.dtypeCode(x.dtype))
            .ptr(ptr(weight)).i32(Self.dtypeCode(weight.dtype)).ptr(scale.map(ptr) ?? 0).i32(Self.dtypeCode(scale?.dtype ?? x.dtype))
            .ptr(ptr(out)).i64(d).i64(x.shape[1]).f32(eps))
        return out
    }

    public func rmsNormGatedResidual(_ x: Tensor, _ y: Tensor, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        if rows == 0 { return out }
        let yy = y.dtype == x.dtype ? y : y.to(x.dtype)
        if let t = fastSuffix([x, yy, weight, gate], rowLength: d), x.shape[1] > 0 {
            launch("nb_rmsnorm_gate_res_" + t, grid: (rows + 7) / 8, block: 256, KernelArgs().ptr(ptr(x)).ptr(ptr(yy))
                .ptr(ptr(weight)).ptr(gate.map(ptr) ?? 0).ptr(ptr(out)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps))
            return out
        }
        launch("nb_rmsnorm_gate_res", grid: rows, block: rowThreads(d), KernelArgs().ptr(ptr(x)).ptr(ptr(yy)).i32(Self.dtypeCode(x.dtype))
            .ptr(ptr(weight)).i32(Self.dtypeCode(weight.dtype)).ptr(gate.map(ptr) ?? 0).i32(Self.dtypeCode(gate?.dtype ?? x.dtype))
            .ptr(ptr(out)).i64(d).i64(x.shape[1]).f32(eps))
        return out
    }

    public func swiglu(_ a: Tensor, _ b: Tensor) -> Tensor {
        let out = empty(a.shape, a.dtype)
        let n = a.count
        if n == 0 { return out }
        let bb = b.dtype == a.dtype ? b : b.to(a.dtype)
        if let t = fastSuffix([a, bb], rowLength: n, maxRow: Int.max) {
            launch("nb_swiglu_" + t, grid: Swift.min((n / 8 + 255) / 256, 1 << 20), KernelArgs().ptr(ptr(a)).ptr(ptr(bb)).ptr(ptr(out)).i64(n / 8))
            return out
        }
        launch("nb_swiglu", grid: blocks(n), KernelArgs().ptr(ptr(a)).ptr(ptr(bb)).i32(Self.dtypeCode(a.dtype)).ptr(ptr(out)).i64(n))
        return out
    }

    public func qkvNormRope(_ qkv: Tensor, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        let (b, l) = (qkv.shape[0], qkv.shape[1])
        let d = qkv.shape[2] / (heads + 2 * kvHeads)
        let q = empty([b, l, heads, d], qkv.dtype), k = empty([b, l, kvHeads, d], qkv.dtype), v = empty([b, l, kvHeads, d], qkv.dtype)
        let warps = b * l * (heads + 2 * kvHeads)
        if warps == 0 { return (q, k, v) }
        let kn = kNorm.dtype == qNorm.dtype ? kNorm : kNorm.to(qNorm.dtype)
        if layout == .interleaved, d % 4 == 0, d <= 128, cos.dtype == .f32, sin.dtype == .f32, cos.isContiguous, sin.isContiguous,
           b * l * (heads + 2 * kvHeads) < Int(Int32.max) / 32, let t = fastSuffix([qkv, qNorm, kn], rowLength: 8) {
            launch("nb_qkv_norm_rope_" + t, grid: (warps + 7) / 8, KernelArgs().ptr(ptr(qkv)).ptr(ptr(qNorm)).ptr(ptr(kn))
                .ptr(ptr(cos)).ptr(ptr(sin)).ptr(ptr(q)).ptr(ptr(k)).ptr(ptr(v)).i32(Int32(l)).i32(Int32(heads)).i32(Int32(kvHeads))
                .i32(Int32(d)).i32(cos.shape[0] == 1 ? 0 : 1).i32(Int32(b * l)).f32(eps))
            return (q, k, v)
        }
        launch("nb_qkv_norm_rope", grid: (warps + 7) / 8, KernelArgs().ptr(ptr(qkv)).i32(Self.dtypeCode(qkv.dtype))
            .ptr(ptr(qNorm)).ptr(ptr(kn)).i32(Self.dtypeCode(qNorm.dtype)).ptr(ptr(cos)).ptr(ptr(sin))
            .ptr(ptr(q)).ptr(ptr(k)).ptr(ptr(v)).i64(b).i64(l).i64(heads).i64(kvHeads).i64(d)
            .i32(cos.shape[0] == 1 ? 0 : 1).i32(layout == .interleaved ? 0 : 1).f32(eps))
        return (q, k, v)
    }

    public func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let out = empty([b, c, 2 * h, 2 * w], x.dtype)
        let n = out.count
        if n == 0 { return out }
        launch("nb_upsample2x", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(out)).i64(b * c).i64(h).i64(w))
        return out
    }
}

/// Mirrors `AttnParams` in ops.cu (7 x i64, float, 4 x int, pad, 2 x i64 = 96 bytes).
struct AttnParamsRaw {
    var i64s: [Int64] = []
    var scale: Float = 1
    var causal: Int32 = 0, window: Int32 = 0, hasMask: Int32 = 0, hasBias: Int32 = 0
    var biasB: Int64 = 1, biasH: Int64 = 1

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func put<T>(_ v: T) { withUnsafeBytes(of: v) { out.append(contentsOf: $0) } }
        for v in i64s { put(v) }
        put(scale); put(causal); put(window); put(hasMask); put(hasBias)
        while out.count % 8 != 0 { out.append(0) }
        put(biasB); put(biasH)
        return out
    }
}

/// Kernel arguments packed for cuLaunchKernel: each argument lives in its own heap cell and the
/// kernel receives an array of pointers to them.
final class KernelArgs {
    private var cells: [UnsafeMutableRawPointer] = []

    @discardableResult func bytes(_ b: [UInt8]) -> KernelArgs {
        let p = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(b.count, 1), alignment: 16)
        b.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: b.count) }
        cells.append(p)
        return self
    }
    private func value<T>(_ v: T) -> KernelArgs {
        let p = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: 16)
        p.storeBytes(of: v, as: T.self)
        cells.append(p)
        return self
    }
    func ptr(_ v: UInt64) -> KernelArgs { value(v) }
    func i64(_ v: Int) -> KernelArgs { value(Int64(v)) }
    func i32(_ v: Int32) -> KernelArgs { value(v) }
    func f32(_ v: Float) -> KernelArgs { value(v) }

    /// `Strided` in ops.cu: int rank, int small, i64 shape[8], i64 stride[8], i64 offset. The
    /// logical shape is the same for every operand of a kernel, but each operand's own view of it
    /// can drop size-1 axes and merge axes it stores contiguously: the index decomposition then
    /// lands on the same elements with fewer divisions (rank 1 for a contiguous tensor).
    func strided(_ t: Tensor) -> KernelArgs {
        var shape: [Int] = [], strides: [Int] = []
        for (n, s) in zip(t.shape, t.strides) where n != 1 {
            if let last = shape.indices.last, strides[last] == s * n {
                shape[last] *= n
                strides[last] = s
            } else {
                shape.append(n); strides.append(s)
            }
        }
        if shape.isEmpty { shape = [1]; strides = [1] }
        precondition(shape.count <= 8, "CUDA kernels take tensors of rank <= 8 after merging, got \(t.shape)")
        var words = [Int64](repeating: 0, count: 18)
        let small: Int64 = shape.allSatisfy { $0 < Int(Int32.max) } ? 1 : 0
        words[0] = Int64(shape.count) | (small << 32)
        for i in 0..<8 {
            words[1 + i] = i < shape.count ? Int64(shape[i]) : 1
            words[9 + i] = i < shape.count ? Int64(strides[i]) : 0
        }
        words[17] = Int64(t.offset)
        return bytes(words.withUnsafeBytes { Array($0) })
    }

    func withPointers(_ body: (UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Void) {
        var ptrs: [UnsafeMutableRawPointer?] = cells
        ptrs.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }

    deinit { cells.forEach { $0.deallocate() } }
}

/// Caching device allocator: freed blocks go to a free list keyed by their rounded size and are
/// reused by later allocations of that size, so steady-state steps make no cuMemAlloc calls.
/// Reuse is safe because every op runs on the one stream, in order.
final class MemoryPool: @unchecked Sendable {
    let driver: CUDADriver
    private var free: [Int: [CUdeviceptr]] = [:]
    private var current = 0, peak = 0, reserved = 0
    private let lock = NSLock()
    private var staging: UnsafeMutableRawPointer?
    private let stagingBytes = 64 << 20
    private let stagingLock = NSLock()

    init(driver: CUDADriver) { self.driver = driver }

    static func roundUp(_ n: Int) -> Int {
        if n <= 1 << 20 { return (n + 511) & ~511 }
        return (n + (1 << 20) - 1) & ~((1 << 20) - 1)
    }

    func take(_ bytes: Int) -> (CUdeviceptr, Int) {
        let size = MemoryPool.roundUp(bytes)
        lock.lock(); defer { lock.unlock() }
        current += size
        peak = Swift.max(peak, current + graphReserved)
        if let g = recording {
            // recorded work reuses what it freed itself first (replays run in the same order)
            if var list = g.free[size], let p = list.popLast() {
                g.free[size] = list
                graphReserved -= size
                return (p, size)
            }
            let p = takeShared(size)
            g.owned[p] = size
            owner[p] = g
            return (p, size)
        }
        return (takeShared(size), size)
    }

    private func takeShared(_ size: Int) -> CUdeviceptr {
        if var list = free[size], let p = list.popLast() {
            free[size] = list
            return p
        }
        var p: CUdeviceptr = 0
        var rc = driver.cuMemAlloc(&p, size)
        if rc != 0 {  // out of memory: give the cached blocks back and try once more
            for (_, list) in free { for q in list { _ = driver.cuMemFree(q) } }
            free.removeAll()
            reserved = current - size
            rc = driver.cuMemAlloc(&p, size)
        }
        guard driver.must(rc, "out of device memory: cuMemAlloc of \(formatBytes(size)) with \(formatBytes(current - size)) in use") else {
            current -= size
            return 0
        }
        reserved += size
        return p
    }

    func give(_ p: CUdeviceptr, _ size: Int) {
        lock.lock(); defer { lock.unlock() }
        current -= size
        if let g = owner[p] {
            if !g.released {
                // a block of recorded work stays with it: a replay writes it again
                g.free[size, default: []].append(p)
                graphReserved += size
                return
            }
            owner[p] = nil
        }
        free[size, default: []].append(p)
    }

    // MARK: memory of recorded work (CUDA graphs)

    /// The blocks a recording allocated: they keep their addresses for as long as the graph lives.
    final class GraphMemory {
        var owned: [CUdeviceptr: Int] = [:]
        var free: [Int: [CUdeviceptr]] = [:]
        var released = false
    }
    private var recording: GraphMemory?
    private var owner: [CUdeviceptr: GraphMemory] = [:]
    /// Bytes held by live graphs but by no tensor (their intermediate results).
    private var graphReserved = 0

    func beginRecording() -> GraphMemory {
        lock.lock(); defer { lock.unlock() }
        precondition(recording == nil, "a recording is already in progress")
        let g = GraphMemory()
        recording = g
        return g
    }

    func endRecording() { lock.lock(); recording = nil; lock.unlock() }

    /// The graph is gone: its free blocks return to the pool; blocks still held by tensors return
    /// when those are freed.
    func release(_ g: GraphMemory) {
        lock.lock(); defer { lock.unlock() }
        g.released = true
        for (size, list) in g.free {
            for p in list { owner[p] = nil; free[size, default: []].append(p); graphReserved -= size }
        }
        g.free.removeAll()
    }

    var stats: MemoryStats {
        lock.lock(); defer { lock.unlock() }
        return MemoryStats(currentBytes: current + graphReserved, peakBytes: peak)
    }

    func resetPeak() { lock.lock(); peak = current + graphReserved; lock.unlock() }

    /// A pinned host buffer for uploads (allocated once, 64 MiB).
    func staged(_ bytes: Int, _ body: (UnsafeMutableRawPointer, Int) -> Void) {
        stagingLock.lock(); defer { stagingLock.unlock() }
        if staging == nil {
            var p: UnsafeMutableRawPointer? = nil
            driver.must(driver.cuMemHostAlloc(&p, stagingBytes, 0), "cuMemHostAlloc(staging)")
            staging = p
        }
        body(staging!, stagingBytes)
    }
}

/// A captured CUDA graph: the kernels and copies of one recorded body, replayed on its stream.
/// Its memory blocks (`MemoryPool.GraphMemory`) and pinned upload copies live as long as it does.
public final class CUDAGraph: RecordedWork, @unchecked Sendable {
    unowned let backend: CUDABackend
    let memory: MemoryPool.GraphMemory
    var graph: OpaquePointer?
    var exec: OpaquePointer?
    private var pinned: [UnsafeMutableRawPointer] = []

    init(backend: CUDABackend, memory: MemoryPool.GraphMemory) { self.backend = backend; self.memory = memory }

    func pinnedCopy(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer? = nil
        backend.driver.must(backend.driver.cuMemHostAlloc(&p, bytes.count, 0), "cuMemHostAlloc(recorded upload)")
        p!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        pinned.append(p!)
        return p!
    }

    public func replay() {
        backend.setCurrent()
        backend.driver.must(backend.driver.cuGraphLaunch(exec, backend.stream), "cuGraphLaunch")
    }

    deinit {
        // the stream may still be replaying: wait before the blocks go back to the pool
        backend.setCurrent()
        _ = backend.driver.cuStreamSynchronize(backend.stream)
        if let e = exec { _ = backend.driver.cuGraphExecDestroy(e) }
        if let g = graph { _ = backend.driver.cuGraphDestroy(g) }
        for p in pinned { _ = backend.driver.cuMemFreeHost(p) }
        backend.pool.release(memory)
    }
}
