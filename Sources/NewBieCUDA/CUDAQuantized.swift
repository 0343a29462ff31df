import Foundation
import NewBieTensor

/// Quantized linear layers on CUDA (docs/QUANTIZATION.md). int8 weights and their fp32 scales stay
/// resident on the device; each call widens one layer's weight into a pooled scratch tensor (the
/// pool hands the same block to the next layer of that size) and runs the ordinary cuBLASLt GEMM.
/// fp8 runs W8A8: the activation's amax and e4m3 codes are computed on the device (the scale
/// never leaves it), then cuBLASLt's FP8 GEMM multiplies the codes with fp32 accumulation and
/// applies both scales and the bias in its epilogue.
extension CUDABackend {
    /// Kernels of Kernels/quant.cu.
    static let quantKernels = ["nb_dequant_i8", "nb_amax_reset", "nb_absmax", "nb_quant_e4m3",
                               "nb_absmax_v8", "nb_quant_e4m3_v8", "nb_dequant_i8_v8"]

    /// Whether the 8-wide forms of the quant kernels apply: 16-bit data, whole groups of 8 at
    /// 16-byte-aligned addresses (every pooled tensor that starts at its buffer's start is).
    func vectorizable(_ t: Tensor, rowLength: Int) -> Bool {
        (t.dtype == .bf16 || t.dtype == .f16) && rowLength % 8 == 0 && ptr(t) % 16 == 0
    }

    /// Kernels of Kernels/gguf.cu, one per block format.
    static let blockKernels: [BlockFormat: String] = [
        .q8_0: "nb_dequant_q8_0", .q5_0: "nb_dequant_q5_0", .q4_0: "nb_dequant_q4_0",
        .q6_K: "nb_dequant_q6_K", .q5_K: "nb_dequant_q5_K", .q4_K: "nb_dequant_q4_K",
    ]

    /// GGML blocks resident on the device, widened into a pooled weight of `dtype` (the layer's)
    /// by the format's kernel, bit for bit `BlockFormat.decode` before the one rounding to `dtype`.
    public func dequantizeBlocks(_ blocks: Tensor, format: BlockFormat, rows: Int, cols: Int, dtype: DType) -> Tensor {
        let out = empty([rows, cols], dtype)
        guard let code = Self.floatCode(dtype), blocks.dtype == .u8, let kernel = Self.blockKernels[format] else {
            driver.fail("dequantizeBlocks: \(format) blocks to \(dtype) are not supported on CUDA"); return out
        }
        if rows * cols == 0 || driver.failed { return out }
        let bd = blocks.device == device ? blocks.contiguous() : blocks.contiguous().to(device: device)
        setCurrent()
        launch2D(kernel, grid: (Swift.min((cols + 255) / 256, 65536), Swift.min(rows, 65535)),
                 KernelArgs().ptr(ptr(bd)).i64(rows).i64(cols).i64(format.rowBytes(cols)).ptr(ptr(out)).i32(code))
        return out
    }

    static func floatCode(_ d: DType) -> Int32? {
        switch d {
        case .f32: return 0
        case .f16: return 1
        case .bf16: return 2
        default: return nil
        }
    }

    public func dequantizeInt8(_ q: Tensor, scales: Tensor, group: Int, dtype: DType) -> Tensor {
        let rows = q.shape[0], cols = q.shape[1]
        let out = empty([rows, cols], dtype)
        guard let code = Self.floatCode(dtype), q.dtype == .i8 else {
            driver.fail("dequantizeInt8: int8 values to \(dtype) are not supported on CUDA"); return out
        }
        if rows * cols == 0 || driver.failed { return out }
        let qd = q.device == device ? q.contiguous() : q.contiguous().to(device: device)
        let sd = (scales.device == device ? scales : scales.to(device: device)).to(.f32)
        let groups = sd.shape[1], group = Swift.max(group, 1)
        setCurrent()
        if vectorizable(out, rowLength: cols), ptr(qd) % 8 == 0 {
            launch2D("nb_dequant_i8_v8", grid: (Swift.min((cols / 8 + 255) / 256, 65536), Swift.min(rows, 65535)),
                     KernelArgs().ptr(ptr(qd)).ptr(ptr(sd)).i64(rows).i64(cols).i64(groups).i64(group).ptr(ptr(out)).i32(code))
            return out
        }
        launch2D("nb_dequant_i8", grid: (Swift.min((cols + 1023) / 1024, 65536), Swift.min(rows, 65535)),
                 KernelArgs().ptr(ptr(qd)).ptr(ptr(sd)).i64(rows).i64(cols).i64(groups).i64(group).ptr(ptr(out)).i32(code))
        return out
    }

    /// Per-tensor e4m3 codes of x and their scale, both on the device: amax reset, amax, quantize.
    func quantizeE4M3(_ x: Tensor) -> (codes: Tensor, scale: Tensor) {
        let n = x.count
        let codes = empty(x.shape, .u8), scale = empty([1], .f32), amax = empty([1], .i32)
        guard let code = Self.floatCode(x.dtype) else {
            driver.fail("fp8 activation quantization: \(x.dtype) input is not supported"); return (codes, scale)
        }
        launch("nb_amax_reset", grid: 1, block: 1, KernelArgs().ptr(ptr(amax)))
        if vectorizable(x, rowLength: n), ptr(codes) % 8 == 0 {
            // 4 groups of 8 per thread for the reduction (few atomics), one per thread to quantize
            launch("nb_absmax_v8", grid: Swift.min(blocks(n / 8 / 4), 4096), KernelArgs().ptr(ptr(x)).i32(code).i64(n / 8).ptr(ptr(amax)))
            launch("nb_quant_e4m3_v8", grid: blocks(n / 8),
                   KernelArgs().ptr(ptr(x)).i32(code).i64(n / 8).ptr(ptr(amax)).ptr(ptr(codes)).ptr(ptr(scale)))
            return (codes, scale)
        }
        launch("nb_absmax", grid: Swift.min(blocks(n), 1024), KernelArgs().ptr(ptr(x)).i32(code).i64(n).ptr(ptr(amax)))
        launch("nb_quant_e4m3", grid: blocks(n), KernelArgs().ptr(ptr(x)).i32(code).i64(n).ptr(ptr(amax)).ptr(ptr(codes)).ptr(ptr(scale)))
        return (codes, scale)
    }

    public func fp8Linear(_ x: Tensor, weight: Tensor, weightScale: Tensor, bias: Tensor?) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0]
        let m = x.count / Swift.max(k, 1)
        let out = empty(Array(x.shape.dropLast()) + [n], x.dtype)
        if m == 0 || n == 0 || driver.failed { return out }
        guard let outType = Self.blasType(x.dtype), weight.dtype == .u8 else {
            driver.fail("fp8 linear: \(x.dtype) activations are not supported on CUDA"); return out
        }
        // FP8 tensor-core GEMMs need Hopper (sm_89+) and 16-aligned k and n; elsewhere the weight is
        // widened like int8's and multiplied in 16 bits (weight-only), which keeps the layer running.
        let xc = x.contiguous()
        let w = weight.device == device ? weight : weight.to(device: device)
        let ws = (weightScale.device == device ? weightScale : weightScale.to(device: device)).to(.f32)
        guard computeCapability >= 89, k % 16 == 0, n % 16 == 0 else {
            let wide = decodeE4M3Weight(w, scale: ws, dtype: x.dtype)
            return linear(xc, weight: wide, bias: bias)
        }
        let (codes, xs) = quantizeE4M3(xc)
        // bias in the epilogue for 16-bit outputs (its dtype is the output's); fp32 outputs add it after
        let epilogueBias = x.dtype == .f32 ? nil : bias.map { $0.dtype == x.dtype ? $0.contiguous() : $0.to(x.dtype) }
        setCurrent()
        profiled("cublasLt fp8 linear") {
            do {
                try fp8Plans.gemm(blas: blas, m: m, n: n, k: k, outType: outType, x: ptr(codes), xScale: ptr(xs), w: ptr(w),
                                  wScale: ptr(ws), out: ptr(out), bias: epilogueBias.map(ptr), stream: stream)
            } catch { driver.fail("fp8 linear [\(m) x \(k)] x [\(n) x \(k)]^T (\(x.dtype)): \(error)") }
        }
        if x.dtype == .f32, let b = bias { return out + b.to(.f32) }
        return out
    }

    /// The activation quantization of `fp8Linear` on its own (for checks): codes and scale on the device.
    public func quantizeActivationE4M3(_ x: Tensor) -> (codes: Tensor, scale: Tensor) {
        setCurrent()
        return quantizeE4M3(x.contiguous())
    }

    /// e4m3 codes times their scale in `dtype` (the fallback where the FP8 GEMM does not apply).
    func decodeE4M3Weight(_ w: Tensor, scale: Tensor, dtype: DType) -> Tensor {
        let host = w.to(device: .cpu).contiguous()
        let cp = host.hostPointer.assumingMemoryBound(to: UInt8.self)
        let s = scale.toFloats()[0]
        return Tensor((0..<host.count).map { FloatE4M3.decode(cp[$0]) * s }, shape: w.shape, dtype: dtype, device: device)
    }
}

/// cuBLASLt plans for FP8 GEMMs: D[m, n] (bf16/f16/f32) = xScale * wScale * X[m, k] · W[n, k]^T
/// (+ bias[n]), X and W e4m3fn, fp32 accumulation. Column-major view as in `CUBLASLt.gemm`: the
/// first operand is W (transposed), the second X: the "TN" layout FP8 kernels require.
final class FP8Plans: @unchecked Sendable {
    static let CUDA_R_8F_E4M3: Int32 = 28
    static let DESC_A_SCALE_POINTER: Int32 = 17, DESC_B_SCALE_POINTER: Int32 = 18

    private var plans: [String: CUBLASLt.Plan] = [:]
    private let lock = NSLock()

    private func ok(_ rc: Int32, _ what: String) throws {
        if rc != 0 { throw CUDAError("cuBLASLt FP8: \(what) failed (status \(rc))") }
    }

    func gemm(blas: CUBLASLt, m: Int, n: Int, k: Int, outType: Int32, x: CUdeviceptr, xScale: CUdeviceptr,
              w: CUdeviceptr, wScale: CUdeviceptr, out: CUdeviceptr, bias: CUdeviceptr?, stream: OpaquePointer?) throws {
        lock.lock(); defer { lock.unlock() }
        let key = "\(m),\(n),\(k),\(outType),\(bias != nil)"
        let plan: CUBLASLt.Plan
        if let p = plans[key] { plan = p } else {
            plan = try makePlan(blas: blas, m: m, n: n, k: k, outType: outType, hasBias: bias != nil)
            plans[key] = plan
        }
        // the scales and bias live on the device and change per call: pointers set before each call
        var wp = wScale, xp = xScale
        try ok(blas.descSet(plan.desc, Self.DESC_A_SCALE_POINTER, &wp, 8), "A scale pointer")
        try ok(blas.descSet(plan.desc, Self.DESC_B_SCALE_POINTER, &xp, 8), "B scale pointer")
        if let b = bias {
            var bp = b
            try ok(blas.descSet(plan.desc, CUBLASLt.DESC_BIAS_POINTER, &bp, 8), "bias pointer")
        }
        var alpha: Float = 1, beta: Float = 0
        let rc = plan.algo.withUnsafeBytes { algo in
            blas.matmul(blas.handle, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, out, plan.c, out, plan.c,
                        algo.baseAddress, blas.workspace, blas.workspaceBytes, stream)
        }
        try ok(rc, "cublasLtMatmul m=\(m) n=\(n) k=\(k)")
    }

    private func makePlan(blas: CUBLASLt, m: Int, n: Int, k: Int, outType: Int32, hasBias: Bool) throws -> CUBLASLt.Plan {
        let p = CUBLASLt.Plan()
        try ok(blas.descCreate(&p.desc, CUBLASLt.COMPUTE_32F, CUBLASLt.CUDA_R_32F), "matmul descriptor")
        var ta: Int32 = 1, tb: Int32 = 0
        try ok(blas.descSet(p.desc, CUBLASLt.DESC_TRANSA, &ta, 4), "transa")
        try ok(blas.descSet(p.desc, CUBLASLt.DESC_TRANSB, &tb, 4), "transb")
        if hasBias {
            var epi = CUBLASLt.EPILOGUE_BIAS
            try ok(blas.descSet(p.desc, CUBLASLt.DESC_EPILOGUE, &epi, 4), "epilogue")
            var bt = outType
            try ok(blas.descSet(p.desc, CUBLASLt.DESC_BIAS_DATA_TYPE, &bt, 4), "bias type")
        }
        try ok(blas.layoutCreate(&p.a, Self.CUDA_R_8F_E4M3, UInt64(k), UInt64(n), Int64(k)), "layout W")
        try ok(blas.layoutCreate(&p.b, Self.CUDA_R_8F_E4M3, UInt64(k), UInt64(m), Int64(k)), "layout X")
        try ok(blas.layoutCreate(&p.c, outType, UInt64(n), UInt64(m), Int64(n)), "layout D")
        var pref: OpaquePointer? = nil
        try ok(blas.prefCreate(&pref), "preference")
        defer { _ = blas.prefDestroy(pref) }
        var wsBytes = UInt64(blas.workspaceBytes)
        try ok(blas.prefSet(pref, CUBLASLt.PREF_MAX_WORKSPACE, &wsBytes, 8), "workspace preference")
        var result = [UInt8](repeating: 0, count: CUBLASLt.heuristicResultBytes)
        var found: Int32 = 0
        let rc = result.withUnsafeMutableBytes { r in
            blas.heuristic(blas.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, r.baseAddress!, &found)
        }
        guard rc == 0, found > 0 else {
            throw CUDAError("cuBLASLt found no FP8 algorithm for m=\(m) n=\(n) k=\(k) (status \(rc)); FP8 GEMMs need compute capability 8.9 or later")
        }
        p.algo = Array(result[0..<64])
        return p
    }
}
