import Foundation
import NewBieTensor

/// Quantized linear layers on CUDA (docs/QUANTIZATION.md). int8 weights and their fp32 scales stay
/// resident on the device; each call widens one layer's weight into a pooled scratch tensor (the
/// pool hands the same block to the next layer of that size) and runs the ordinary cuBLASLt GEMM.
/// fp8 runs W8A8 with one scale per output channel and one per token: the activations' e4m3 codes
/// and row scales come from one pass (`nb_quant_rows_e4m3`) or straight from the producing kernel
/// (fused.cu's *_e4m3 forms), then cuBLASLt's FP8 GEMM multiplies the codes with fp32 accumulation
/// and applies the two scale vectors (outer-vector scaling) and the bias.
extension CUDABackend {
    /// Kernels of Kernels/quant.cu.
    static let quantKernels = ["nb_dequant_i8", "nb_dequant_i8_v8", "nb_quant_rows_e4m3", "nb_quant_rows_e4m3_v8",
                               "nb_fp8_rescale", "nb_fp8_rescale_bf16_v8", "nb_decode_e4m3_rows"]

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

    /// FP8 tensor-core GEMMs need sm_89 or later; below, fp8 layers widen their weight (weight-only).
    public var takesE4M3Activations: Bool { computeCapability >= 89 }

    /// Row vectors a one-block-per-row kernel holds in registers: `RQ_VMAX` (common.cuh) per thread
    /// x at most 1024 threads.
    static let heldRowVectors = 4 * 1024

    /// The block of a one-block-per-row kernel for rows of `vectors` 8-wide vectors: whole warps,
    /// `RQ_VMAX` vectors per thread (a 9216-wide row gets 288 threads).
    static func rowBlock(vectors: Int) -> Int { Swift.min(1024, Swift.max(32, ((vectors + 3) / 4 + 31) / 32 * 32)) }

    public func quantizeRowsE4M3(_ x: Tensor) -> E4M3Rows {
        let xc = x.contiguous()
        let k = xc.shape.last ?? 0, rows = xc.count / Swift.max(k, 1)
        let codes = empty(xc.shape, .u8), scales = empty([rows], .f32)
        guard let code = Self.floatCode(xc.dtype) else {
            driver.fail("fp8 activation quantization: \(xc.dtype) input is not supported"); return E4M3Rows(codes: codes, scales: scales)
        }
        if rows == 0 || k == 0 || driver.failed { return E4M3Rows(codes: codes, scales: scales) }
        setCurrent()
        if vectorizable(xc, rowLength: k), k / 8 <= Self.heldRowVectors, ptr(codes) % 8 == 0 {
            launch("nb_quant_rows_e4m3_v8", grid: rows, block: Self.rowBlock(vectors: k / 8), KernelArgs().ptr(ptr(xc)).i32(code).i32(Int32(k / 8)).ptr(ptr(codes)).ptr(ptr(scales)))
        } else {
            launch("nb_quant_rows_e4m3", grid: rows, KernelArgs().ptr(ptr(xc)).i32(code).i64(k).ptr(ptr(codes)).ptr(ptr(scales)))
        }
        return E4M3Rows(codes: codes, scales: scales)
    }

    public func rmsNormModulateE4M3(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> E4M3Rows {
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        guard let t = fastSuffix([x, weight, scale], rowLength: d), rows > 0 else {
            return quantizeRowsE4M3(rmsNormModulate(x, weight: weight, eps: eps, scale: scale))
        }
        let codes = empty(x.shape, .u8), scales = empty([rows], .f32)
        let (kernel, grid, block) = normLaunch("nb_rmsnorm_mod_e4m3_", t, rows: rows, d: d)
        launch(kernel, grid: grid, block: block, KernelArgs().ptr(ptr(x)).ptr(ptr(weight))
            .ptr(scale.map(ptr) ?? 0).ptr(ptr(codes)).ptr(ptr(scales)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps))
        return E4M3Rows(codes: codes, scales: scales)
    }

    public func swigluE4M3(_ a: Tensor, _ b: Tensor) -> E4M3Rows {
        let k = a.shape.last ?? 0, rows = a.count / Swift.max(k, 1)
        let bb = b.dtype == a.dtype ? b : b.to(a.dtype)
        guard let t = fastSuffix([a, bb], rowLength: k, maxRow: Self.heldRowVectors * 8), rows > 0 else {
            return quantizeRowsE4M3(swiglu(a, b))
        }
        let codes = empty(a.shape, .u8), scales = empty([rows], .f32)
        launch("nb_swiglu_e4m3_" + t, grid: rows, block: Self.rowBlock(vectors: k / 8),
               KernelArgs().ptr(ptr(a)).ptr(ptr(bb)).ptr(ptr(codes)).ptr(ptr(scales)).i32(Int32(k / 8)))
        return E4M3Rows(codes: codes, scales: scales)
    }

    // MARK: fp8 products before their scales (ScaledProduct)

    /// Without outer-vector scaling in cuBLASLt, a bf16 fp8 product is handed on unscaled: its
    /// reader (the kernels *_sc_bf16) applies x.scales[r] * ws[o] as it loads each value, which
    /// saves the in-place rescale pass. Otherwise (outer-vector scaling available, other dtypes,
    /// unaligned shapes) the product is scaled here, as `fp8Linear` does.
    public func fp8Product(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, dtype: DType) -> ScaledProduct {
        let k = weight.shape[1], n = weight.shape[0], m = x.rows
        let scaledHere = { ScaledProduct(self.fp8Linear(x, weight: weight, weightScales: weightScales, bias: nil, dtype: dtype)) }
        guard dtype == .bf16, weight.dtype == .u8, x.rowLength == k, k % 16 == 0, n % 16 == 0, m > 0, !driver.failed,
              weightScales.count == n, outerVectorUnavailable(m: m, n: n, k: k) else { return scaledHere() }
        let w = weight.device == device ? weight : weight.to(device: device)
        var ws = (weightScales.device == device ? weightScales : weightScales.to(device: device)).to(.f32).contiguous()
        if ptr(ws) % 16 != 0 { let a = empty([n], .f32); copy(ws.reshape([n]), into: a); ws = a }  // the readers load 4 at a time
        let raw = empty(Array(x.codes.shape.dropLast()) + [n], .bf16)
        guard ptr(raw) % 16 == 0, ptr(x.scales) % 4 == 0,
              let plan = fp8Plans.plan(blas: blas, m: m, n: n, k: k, outType: CUBLASLt.CUDA_R_16BF, mode: .unscaled) else { return scaledHere() }
        setCurrent()
        note(.unscaledForReaders)
        profiled("cublasLt fp8 linear (unscaled bf16, scaled by its reader)") {
            do {
                try fp8Plans.run(plan, blas: blas, x: ptr(x.codes), xScales: nil, w: ptr(w), wScales: nil, out: ptr(raw), bias: nil, stream: stream)
            } catch { driver.fail("fp8 linear [\(m) x \(k)] x [\(n) x \(k)]^T (unscaled product): \(error)") }
        }
        return ScaledProduct(raw: raw, rowScales: x.scales, columnScales: ws.reshape([n]))
    }

    /// Whether cuBLASLt lacks outer-vector scaling for this bf16 shape (13.1 on sm_90 does).
    func outerVectorUnavailable(m: Int, n: Int, k: Int) -> Bool {
        avoidFP8OuterVectorScaling
            || fp8Plans.plan(blas: blas, m: m, n: n, k: k, outType: CUBLASLt.CUDA_R_16BF, mode: .outerVector(bias: false)) == nil
    }

    /// In place, by the rescale kernel (a `ScaledProduct` is read once).
    public func applyScales(_ p: ScaledProduct) -> Tensor {
        guard let r = p.rowScales, let c = p.columnScales else { return p.raw }
        let n = p.shape.last ?? 0, m = p.raw.count / Swift.max(n, 1)
        guard p.dtype == .bf16, n % 8 == 0, ptr(p.raw) % 16 == 0, ptr(c) % 16 == 0, r.device == device, c.device == device else {
            return p.scaledByTensorOps()
        }
        if m > 0 {
            launch2D("nb_fp8_rescale_bf16_v8", grid: ((n / 8 + 255) / 256, Swift.min(m, 65535)),
                     KernelArgs().ptr(ptr(p.raw)).ptr(ptr(r)).ptr(ptr(c)).ptr(0).i64(m).i64(n))
        }
        return p.raw
    }

    /// Whether the *_sc_bf16 readers take this product: bf16 raw, scales on the device, the column
    /// scales 16-byte aligned (the fp8Product above makes them so).
    func readsUnscaled(_ p: ScaledProduct) -> (rows: Tensor, columns: Tensor)? {
        guard let r = p.rowScales, let c = p.columnScales, p.dtype == .bf16, ptr(p.raw) % 16 == 0, ptr(c) % 16 == 0,
              r.device == device, c.device == device else { return nil }
        return (r, c)
    }

    public func qkvNormRope(_ qkv: ScaledProduct, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        let (b, l) = (qkv.shape[0], qkv.shape[1])
        let d = qkv.shape[2] / (heads + 2 * kvHeads)
        let kn = kNorm.dtype == qNorm.dtype ? kNorm : kNorm.to(qNorm.dtype)
        let warps = b * l * (heads + 2 * kvHeads)
        guard let s = readsUnscaled(qkv), layout == .interleaved, d % 4 == 0, d <= 128, cos.dtype == .f32, sin.dtype == .f32,
              cos.isContiguous, sin.isContiguous, warps > 0, warps < Int(Int32.max) / 32, fastSuffix([qkv.raw, qNorm, kn], rowLength: 8) == "bf16" else {
            return qkvNormRope(qkv.scaled(), heads: heads, kvHeads: kvHeads, qNorm: qNorm, kNorm: kNorm, eps: eps, cos: cos, sin: sin, layout: layout)
        }
        let q = empty([b, l, heads, d], .bf16), k = empty([b, l, kvHeads, d], .bf16), v = empty([b, l, kvHeads, d], .bf16)
        launch("nb_qkv_norm_rope_sc_bf16", grid: (warps + 7) / 8, KernelArgs().ptr(ptr(qkv.raw)).ptr(ptr(qNorm)).ptr(ptr(kn))
            .ptr(ptr(cos)).ptr(ptr(sin)).ptr(ptr(q)).ptr(ptr(k)).ptr(ptr(v)).i32(Int32(l)).i32(Int32(heads)).i32(Int32(kvHeads))
            .i32(Int32(d)).i32(cos.shape[0] == 1 ? 0 : 1).i32(Int32(b * l)).f32(eps).ptr(ptr(s.rows)).ptr(ptr(s.columns)))
        return (q, k, v)
    }

    public func rmsNormGatedResidual(_ x: Tensor, _ y: ScaledProduct, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        guard let s = readsUnscaled(y), rows > 0, fastSuffix([x, y.raw, weight, gate], rowLength: d) == "bf16" else {
            return rmsNormGatedResidual(x, y.scaled(), weight: weight, eps: eps, gate: gate)
        }
        let out = empty(x.shape, x.dtype)
        let (kernel, grid, block) = normLaunch("nb_rmsnorm_gate_res_sc_", "bf16", rows: rows, d: d)
        launch(kernel, grid: grid, block: block, KernelArgs().ptr(ptr(x)).ptr(ptr(y.raw))
            .ptr(ptr(weight)).ptr(gate.map(ptr) ?? 0).ptr(ptr(out)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps)
            .ptr(ptr(s.rows)).ptr(ptr(s.columns)))
        return out
    }

    public func swigluE4M3(_ a: ScaledProduct, _ b: ScaledProduct) -> E4M3Rows {
        let k = a.shape.last ?? 0, rows = a.raw.count / Swift.max(k, 1)
        guard let sa = readsUnscaled(a), let sb = readsUnscaled(b), ptr(sa.rows) == ptr(sb.rows), rows > 0,
              fastSuffix([a.raw, b.raw], rowLength: k, maxRow: Self.heldRowVectors * 8) == "bf16" else {
            return swigluE4M3(a.scaled(), b.scaled())
        }
        let codes = empty(a.shape, .u8), scales = empty([rows], .f32)
        launch("nb_swiglu_e4m3_sc_bf16", grid: rows, block: Self.rowBlock(vectors: k / 8),
               KernelArgs().ptr(ptr(a.raw)).ptr(ptr(b.raw)).ptr(ptr(codes)).ptr(ptr(scales)).i32(Int32(k / 8))
                .ptr(ptr(sa.rows)).ptr(ptr(sa.columns)).ptr(ptr(sb.columns)))
        return E4M3Rows(codes: codes, scales: scales)
    }

    public func fp8Linear(_ x: Tensor, weight: Tensor, weightScales: Tensor, bias: Tensor?) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0]
        // FP8 tensor-core GEMMs need sm_89+ and 16-aligned k and n; elsewhere the weight is widened
        // like int8's and multiplied in 16 bits (weight-only), which keeps the layer running.
        guard takesE4M3Activations, k % 16 == 0, n % 16 == 0 else {
            let ws = weightScales.device == device ? weightScales : weightScales.to(device: device)
            return linear(x.contiguous(), weight: decodeE4M3Rows(weight, scales: ws, dtype: x.dtype), bias: bias)
        }
        return fp8Linear(quantizeRowsE4M3(x), weight: weight, weightScales: weightScales, bias: bias, dtype: x.dtype)
    }

    public func fp8Linear(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, bias: Tensor?, dtype: DType) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0], m = x.rows
        let out = empty(Array(x.codes.shape.dropLast()) + [n], dtype)
        if m == 0 || n == 0 || driver.failed { return out }
        guard let outType = Self.blasType(dtype), let outCode = Self.floatCode(dtype), weight.dtype == .u8, x.rowLength == k else {
            driver.fail("fp8 linear: \(dtype) output of [\(m) x \(x.rowLength)] x [\(n) x \(k)]^T is not supported on CUDA"); return out
        }
        let w = weight.device == device ? weight : weight.to(device: device)
        var ws = (weightScales.device == device ? weightScales : weightScales.to(device: device)).to(.f32)
        // one scale per output channel; a per-tensor scale is broadcast to the vector the GEMM reads
        if ws.count != n { ws = ws.reshape([1]).expand([n]).contiguous() } else { ws = ws.contiguous() }
        let typedBias = bias.map { $0.dtype == dtype ? $0.contiguous() : $0.to(dtype) }
        guard k % 16 == 0, n % 16 == 0 else {
            // the FP8 GEMM's alignment is not met (small layers, tests): the same values in 16 bits
            note(.widened)
            return linear(decodeE4M3Rows(x.codes, scales: x.scales, dtype: dtype), weight: decodeE4M3Rows(w, scales: ws, dtype: dtype),
                          bias: typedBias)
        }
        setCurrent()
        // 1. cuBLASLt applies both scale vectors (and the bias, for 16-bit outputs) itself
        let epilogueBias = dtype == .f32 ? nil : typedBias
        for withBias in avoidFP8OuterVectorScaling ? [] : epilogueBias == nil ? [false] : [true, false] {
            guard let plan = fp8Plans.plan(blas: blas, m: m, n: n, k: k, outType: outType, mode: .outerVector(bias: withBias)) else { continue }
            note(withBias ? .outerVectorBiasEpilogue : .outerVector)
            profiled(withBias ? "cublasLt fp8 linear (outer-vector scales, bias epilogue)" : "cublasLt fp8 linear (outer-vector scales)") {
                do {
                    try fp8Plans.run(plan, blas: blas, x: ptr(x.codes), xScales: ptr(x.scales), w: ptr(w), wScales: ptr(ws),
                                     out: ptr(out), bias: withBias ? epilogueBias.map(ptr) : nil, stream: stream)
                } catch { driver.fail("fp8 linear [\(m) x \(k)] x [\(n) x \(k)]^T (\(dtype)): \(error)") }
            }
            if let b = typedBias, !withBias { return out + b }
            return out
        }
        // 2. no outer-vector scaling in this cuBLASLt (13.1 offers none on sm_90): the unscaled
        //    product, then one pass applies x.scales[r] * ws[o] and the bias. bf16 outputs take the
        //    product in bf16 (|sum| <= 448^2 k fits; one more rounding) and are rescaled in place, 8
        //    columns per thread; f16 (whose range the unscaled sum can exceed) and fp32 go through fp32.
        let inPlace = dtype == .bf16 && ptr(out) % 16 == 0 && ptr(ws) % 16 == 0
        let acc = inPlace ? out : empty([m, n], .f32)
        guard let plan = fp8Plans.plan(blas: blas, m: m, n: n, k: k, outType: inPlace ? outType : CUBLASLt.CUDA_R_32F, mode: .unscaled) else {
            driver.fail("cuBLASLt found no FP8 algorithm for m=\(m) n=\(n) k=\(k); FP8 GEMMs need compute capability 8.9 or later")
            return out
        }
        note(inPlace ? .unscaledThenRescaleInPlace : .unscaledThenRescale)
        profiled(inPlace ? "cublasLt fp8 linear (unscaled bf16, rescaled in place)" : "cublasLt fp8 linear (unscaled fp32, rescale kernel)") {
            do {
                try fp8Plans.run(plan, blas: blas, x: ptr(x.codes), xScales: nil, w: ptr(w), wScales: nil, out: ptr(acc), bias: nil, stream: stream)
            } catch { driver.fail("fp8 linear [\(m) x \(k)] x [\(n) x \(k)]^T (unscaled product): \(error)") }
        }
        if inPlace {
            launch2D("nb_fp8_rescale_bf16_v8", grid: ((n / 8 + 255) / 256, Swift.min(m, 65535)),
                     KernelArgs().ptr(ptr(out)).ptr(ptr(x.scales)).ptr(ptr(ws)).ptr(typedBias.map(ptr) ?? 0).i64(m).i64(n))
            return out
        }
        launch("nb_fp8_rescale", grid: blocks(m * n), KernelArgs().ptr(ptr(acc)).ptr(ptr(x.scales)).ptr(ptr(ws))
            .ptr(typedBias.map(ptr) ?? 0).ptr(ptr(out)).i32(outCode).i64(m).i64(n))
        return out
    }

    /// Which fp8 product ran, said once per process on stderr (and in profile labels), so that a
    /// GPU run shows whether cuBLASLt's outer-vector scaling was available.
    enum FP8Path: String, Sendable {
        case outerVectorBiasEpilogue = "cuBLASLt FP8 GEMM with outer-vector scales, bias in the epilogue"
        case outerVector = "cuBLASLt FP8 GEMM with outer-vector scales, bias added after"
        case unscaledThenRescale = "cuBLASLt FP8 GEMM into fp32 (no outer-vector scaling in this cuBLASLt), scales and bias by nb_fp8_rescale"
        case unscaledThenRescaleInPlace = "cuBLASLt FP8 GEMM into bf16 (no outer-vector scaling in this cuBLASLt), scales and bias in place by nb_fp8_rescale_bf16_v8"
        case widened = "k or n not a multiple of 16: codes widened, 16-bit GEMM"
        case unscaledForReaders = "cuBLASLt FP8 GEMM into bf16 (no outer-vector scaling in this cuBLASLt), scales applied by the kernels that read the product"
    }

    func note(_ path: FP8Path) {
        if fp8Plans.firstUse(of: path.rawValue) { FileHandle.standardError.write(Data("note: fp8 linear: \(path.rawValue)\n".utf8)) }
    }

    /// e4m3 codes [.., k] times their per-row scales (one per row, or a single one) in `dtype`, on the
    /// device (`nb_decode_e4m3_rows`, FloatE4M3.decodeRows): the operands of the 16-bit product
    /// where the FP8 one does not apply.
    func decodeE4M3Rows(_ codes: Tensor, scales: Tensor, dtype: DType) -> Tensor {
        let out = empty(codes.shape, dtype)
        guard let code = Self.floatCode(dtype), codes.dtype == .u8 else {
            driver.fail("e4m3 decode: \(codes.dtype) codes to \(dtype) are not supported on CUDA"); return out
        }
        let n = codes.count, k = Swift.max(codes.shape.last ?? 1, 1)
        if n == 0 || driver.failed { return out }
        let c = (codes.device == device ? codes : codes.to(device: device)).contiguous()
        let s = (scales.device == device ? scales : scales.to(device: device)).to(.f32).contiguous()
        launch("nb_decode_e4m3_rows", grid: blocks(n), KernelArgs().ptr(ptr(c)).ptr(ptr(s)).i64(k).i64(n)
            .i32(s.count == 1 ? 0 : 1).ptr(ptr(out)).i32(code))
        return out
    }
}

/// cuBLASLt plans for FP8 GEMMs: D[m, n] = X[m, k] · W[n, k]^T (X and W e4m3fn, fp32 accumulation),
/// scaled per element by xScales[r] * wScales[o] (outer-vector scaling, CUDA 12.9+) or not at all
/// (the fp32 accumulator for `nb_fp8_rescale`), plus bias[n] in the epilogue when asked. Column-major
/// view as in `CUBLASLt.gemm`: the first operand is W (transposed; cuBLAS's A, M = out channels),
/// the second X (cuBLAS's B, N = tokens): the "TN" layout FP8 kernels require.
final class FP8Plans: @unchecked Sendable {
    static let CUDA_R_8F_E4M3: Int32 = 28
    static let DESC_A_SCALE_POINTER: Int32 = 17, DESC_B_SCALE_POINTER: Int32 = 18
    static let DESC_A_SCALE_MODE: Int32 = 31, DESC_B_SCALE_MODE: Int32 = 32
    static let MATRIX_SCALE_OUTER_VEC_32F: Int32 = 3

    enum Mode: Hashable { case outerVector(bias: Bool), unscaled }

    private var plans: [String: CUBLASLt.Plan?] = [:]
    private var noted: Set<String> = []
    private let lock = NSLock()

    private func ok(_ rc: Int32, _ what: String) throws {
        if rc != 0 { throw CUDAError("cuBLASLt FP8: \(what) failed (status \(rc))") }
    }

    func firstUse(of path: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return noted.insert(path).inserted
    }

    /// The plan for a shape and mode, nil when this cuBLASLt has no algorithm for it (or rejects
    /// the mode's attributes); both answers are kept.
    func plan(blas: CUBLASLt, m: Int, n: Int, k: Int, outType: Int32, mode: Mode) -> CUBLASLt.Plan? {
        lock.lock(); defer { lock.unlock() }
        let key = "\(m),\(n),\(k),\(outType),\(mode)"
        if let p = plans[key] { return p }
        let p = try? makePlan(blas: blas, m: m, n: n, k: k, outType: outType, mode: mode)
        plans[key] = .some(p)
        return p
    }

    func run(_ plan: CUBLASLt.Plan, blas: CUBLASLt, x: CUdeviceptr, xScales: CUdeviceptr?, w: CUdeviceptr, wScales: CUdeviceptr?,
             out: CUdeviceptr, bias: CUdeviceptr?, stream: OpaquePointer?) throws {
        lock.lock(); defer { lock.unlock() }
        // the scales and bias live on the device and change per call: pointers set before each call
        if var wp = wScales, var xp = xScales {
            try ok(blas.descSet(plan.desc, Self.DESC_A_SCALE_POINTER, &wp, 8), "A scale pointer")
            try ok(blas.descSet(plan.desc, Self.DESC_B_SCALE_POINTER, &xp, 8), "B scale pointer")
        }
        if var bp = bias { try ok(blas.descSet(plan.desc, CUBLASLt.DESC_BIAS_POINTER, &bp, 8), "bias pointer") }
        var alpha: Float = 1, beta: Float = 0
        let rc = plan.algo.withUnsafeBytes { algo in
            blas.matmul(blas.handle, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, out, plan.c, out, plan.c,
                        algo.baseAddress, blas.workspace, blas.workspaceBytes, stream)
        }
        try ok(rc, "cublasLtMatmul")
    }

    private func makePlan(blas: CUBLASLt, m: Int, n: Int, k: Int, outType: Int32, mode: Mode) throws -> CUBLASLt.Plan {
        let p = CUBLASLt.Plan()
        try ok(blas.descCreate(&p.desc, CUBLASLt.COMPUTE_32F, CUBLASLt.CUDA_R_32F), "matmul descriptor")
        var ta: Int32 = 1, tb: Int32 = 0
        try ok(blas.descSet(p.desc, CUBLASLt.DESC_TRANSA, &ta, 4), "transa")
        try ok(blas.descSet(p.desc, CUBLASLt.DESC_TRANSB, &tb, 4), "transb")
        if case .outerVector(let hasBias) = mode {
            var vec = Self.MATRIX_SCALE_OUTER_VEC_32F
            try ok(blas.descSet(p.desc, Self.DESC_A_SCALE_MODE, &vec, 4), "A scale mode")
            try ok(blas.descSet(p.desc, Self.DESC_B_SCALE_MODE, &vec, 4), "B scale mode")
            if hasBias {
                var epi = CUBLASLt.EPILOGUE_BIAS
                try ok(blas.descSet(p.desc, CUBLASLt.DESC_EPILOGUE, &epi, 4), "epilogue")
                var bt = outType
                try ok(blas.descSet(p.desc, CUBLASLt.DESC_BIAS_DATA_TYPE, &bt, 4), "bias type")
            }
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
        guard rc == 0, found > 0 else { throw CUDAError("cuBLASLt found no FP8 algorithm for m=\(m) n=\(n) k=\(k) \(mode) (status \(rc))") }
        p.algo = Array(result[0..<64])
        return p
    }
}
