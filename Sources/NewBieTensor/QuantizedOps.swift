import CNewBieCPU

/// Quantized linear layers' backend ops (docs/QUANTIZATION.md). The defaults here are the CPU's
/// and the reference definitions: plain loops in fp32 on the host. A device backend replaces them
/// with kernels that keep the quantized weight resident and agree with these.

/// float8 e4m3fn ("fn": finite, no infinities; 0x7f/0xff are NaN; largest finite 448), converted
/// exactly as torch 2.15's `tensor.to(torch.float8_e4m3fn)` does: round to nearest even, and
/// saturating: anything past 448, infinities included, becomes ±448; NaN stays NaN.
public enum FloatE4M3 {
    public static let maxFinite: Float = 448

    /// The code of `f`: round to nearest even, saturating at ±448; NaN gives NaN (0x7f, sign kept).
    @inline(__always)
    public static func encode(_ f: Float) -> UInt8 {
        var bits = f.bitPattern
        let sign = bits & 0x8000_0000
        bits ^= sign
        let r: UInt32
        if bits > 0x7f80_0000 {
            r = 0x7f
        } else if bits >= 1087 << 20 {
            r = 0x7e
        } else if bits < 121 << 23 {
            // below e4m3's smallest normal (2^-6): in |f| + 2^14 the last fp32 mantissa bit weighs
            // 2^-9, the subnormal step, so the fp32 add rounds |f| to it (nearest even)
            let magic = Float(bitPattern: 141 << 23)
            r = (Float(bitPattern: bits) + magic).bitPattern &- magic.bitPattern
        } else {
            let odd = (bits >> 20) & 1
            // magnitudes in (464, 480) round up to 0x7f, the NaN code: saturate them to 448
            r = Swift.min((bits &+ (UInt32(bitPattern: Int32(7 - 127)) << 23) &+ 0x7ffff &+ odd) >> 20, 0x7e)
        }
        return UInt8(truncatingIfNeeded: r | (sign >> 24))
    }

    /// decode(codes[r, i]) * scales[r] in fp32 on the host: codes u8 [..., k] on any device, scales
    /// one per row (rows = codes.count / k) or a single one for all.
    public static func decodeRows(_ codes: Tensor, scales: Tensor) -> Tensor {
        let c = codes.contiguous().to(device: .cpu), s = scales.to(.f32).to(device: .cpu).toFloats()
        let cp = c.hostPointer.assumingMemoryBound(to: UInt8.self)
        let k = Swift.max(codes.shape.last ?? 1, 1)
        return Tensor((0..<c.count).map { decode(cp[$0]) * s[s.count == 1 ? 0 : $0 / k] }, shape: codes.shape)
    }

    /// The value of a code (exact in fp32).
    @inline(__always)
    public static func decode(_ c: UInt8) -> Float {
        let sign: Float = c & 0x80 != 0 ? -1 : 1
        let e = Int((c >> 3) & 0xf), m = Float(c & 7)
        if e == 15 && c & 7 == 7 { return .nan }
        if e == 0 { return sign * m * 0x1p-9 }
        return sign * (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
    }

    /// The scale of values whose largest magnitude is `amax` (a weight's output channel, an
    /// activation's token): amax / 448, or 1 when amax is 0 (a zero row quantizes to zeros with any
    /// scale) or NaN (as torch.where(amax > 0, amax / 448, 1); the NaN's code stays NaN).
    @inline(__always)
    public static func scale(amax: Float) -> Float { amax > 0 ? amax / maxFinite : 1 }

    /// THE per-row quantization of fp8 W8A8 (docs/QUANTIZATION.md, "fp8 definition"), for weight
    /// rows and activation rows alike: scale = `scale(amax: max |row|)`, codes = encode(v / scale).
    /// Every device kernel (quant.cu `q_rows`, the fused producers) computes exactly this.
    @inline(__always)
    public static func quantizeRow(_ row: UnsafePointer<Float>, count: Int, into codes: UnsafeMutablePointer<UInt8>) -> Float {
        var amax: Float = 0
        for i in 0..<count {
            let a = Swift.abs(row[i])
            // a NaN wins the maximum, as its float bits (above infinity's) do in the kernels
            if a.isNaN || a > amax { amax = a }
        }
        let s = scale(amax: amax)
        for i in 0..<count { codes[i] = encode(row[i] / s) }
        return s
    }
}

/// e4m3fn codes of activations with one fp32 scale per row (per token): what the fp8 linear layers
/// multiply. `codes` u8 [..., k]; `scales` f32 [rows] (rows = codes.count / k); value[r, i] =
/// decode(codes[r, i]) * scales[r]. Made by `Tensor.quantizedRowsE4M3()` or by a producer that writes
/// codes instead of 16-bit values (`rmsNormModulateE4M3`, `swigluE4M3`); read only by fp8 linear
/// layers (`Linear.callAsFunction(_: E4M3Rows)`).
public struct E4M3Rows: @unchecked Sendable {
    public let codes: Tensor
    public let scales: Tensor
    public init(codes: Tensor, scales: Tensor) {
        precondition(codes.dtype == .u8 && scales.dtype == .f32 && codes.rank >= 1
                     && scales.count * codes.shape[codes.rank - 1] == codes.count, "E4M3Rows: codes \(codes.shape) \(codes.dtype), scales \(scales.shape) \(scales.dtype)")
        self.codes = codes; self.scales = scales
    }
    public var rowLength: Int { codes.shape[codes.rank - 1] }
    public var rows: Int { scales.count }
    public var device: Device { codes.device }

    /// The values the codes stand for, decode(code) * scale in fp32 on the host (for checks and the
    /// fallback products).
    public func decoded() -> Tensor { FloatE4M3.decodeRows(codes, scales: scales) }
}

/// An fp8 layer's output whose two scale vectors are still to be applied:
///     value[r, o] = round(raw[r, o] * (rowScales[r] * columnScales[o]))   (in raw's dtype)
/// where raw is the unscaled product of the codes, already rounded to that dtype. A backend whose
/// FP8 GEMM cannot scale per row and per column itself (cuBLASLt without outer-vector scaling)
/// hands this to the ops that read the product (`qkvNormRope`, `rmsNormGatedResidual`,
/// `swigluE4M3`), which apply the scales as they load each value, with the rounding above, instead
/// of a separate rescale pass over the whole product. Without scales, `raw` is the final value.
/// Read once: `scaled()` may scale `raw` in place.
public struct ScaledProduct: @unchecked Sendable {
    public let raw: Tensor
    public let rowScales: Tensor?, columnScales: Tensor?
    /// A value that needs no scaling.
    public init(_ value: Tensor) { raw = value; rowScales = nil; columnScales = nil }
    /// raw [..., n] (contiguous), rowScales f32 [rows], columnScales f32 [n].
    public init(raw: Tensor, rowScales: Tensor, columnScales: Tensor) {
        let n = raw.shape.last ?? 0
        precondition(raw.isContiguous && rowScales.dtype == .f32 && columnScales.dtype == .f32 && columnScales.count == n
                      && rowScales.count * n == raw.count, "ScaledProduct: raw \(raw.shape), row scales \(rowScales.shape), column scales \(columnScales.shape)")
        self.raw = raw; self.rowScales = rowScales; self.columnScales = columnScales
    }
    /// Whether `raw` is already the final value (no scales pending).
    public var isScaled: Bool { rowScales == nil }
    public var shape: [Int] { raw.shape }
    public var dtype: DType { raw.dtype }
    public var device: Device { raw.device }
    /// The final value.
    public func scaled() -> Tensor { isScaled ? raw : raw.backend.applyScales(self) }
    /// The final value composed of tensor ops on raw's device (the definition above, in fp32).
    public func scaledByTensorOps() -> Tensor {
        guard let r = rowScales, let c = columnScales else { return raw }
        let n = shape.last ?? 0, rows = raw.count / Swift.max(n, 1)
        let s = r.to(.f32, device: device).reshape([rows, 1]) * c.to(.f32, device: device).reshape([1, n])
        return (raw.to(.f32).reshape([rows, n]) * s).to(dtype).reshape(shape)
    }
}

extension ScaledProduct {
    /// `Tensor.qkvNormRope` of the product (q and k normalised and rotated, v split off).
    public func qkvNormRope(heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        if isScaled { return raw.qkvNormRope(heads: heads, kvHeads: kvHeads, qNorm: qNorm, kNorm: kNorm, eps: eps, cos: cos, sin: sin, layout: layout) }
        precondition(raw.rank == 3 && shape[2] % (heads + 2 * kvHeads) == 0, "qkvNormRope: \(shape) does not split into \(heads)+2x\(kvHeads) heads")
        let d = shape[2] / (heads + 2 * kvHeads)
        precondition(qNorm.shape == [d] && kNorm.shape == [d], "qkvNormRope: q/k norm weights \(qNorm.shape), \(kNorm.shape) for head dim \(d)")
        return raw.backend.qkvNormRope(self, heads: heads, kvHeads: kvHeads, qNorm: qNorm.contiguous(), kNorm: kNorm.contiguous(), eps: eps,
                                       cos: cos.to(.f32, device: device), sin: sin.to(.f32, device: device), layout: layout)
    }

    /// `Tensor.swigluE4M3` of two products (the gate self, the up projection b).
    public func swigluE4M3(_ b: ScaledProduct) -> E4M3Rows {
        precondition(shape == b.shape, "swigluE4M3: shapes \(shape) and \(b.shape) differ")
        if isScaled && b.isScaled { return raw.swigluE4M3(b.raw) }
        return raw.backend.swigluE4M3(self, b)
    }
}

/// Quantizing a float weight on the host, split over the cores by rows (a 4B-parameter text
/// encoder quantized at load on one thread took 37-39 s). Each row is read in fp32 from the
/// tensor's own storage (f32, bf16 or f16), so no fp32 copy of the whole weight is made.
public enum WeightQuantizer {
    /// int8 per row or per group of `group` inputs: scale = max|w| / 127, q = round-half-to-even(w /
    /// scale) clamped to ±127 (torch.round); an all-zero group has scale 0 and q 0. `w` is [out, in]
    /// on the host; returns q [out, in] (i8) and scales [out, groups] (f32).
    public static func int8(_ w: Tensor, group: Int) -> (q: Tensor, scales: Tensor) {
        precondition(w.rank == 2 && w.device == .cpu)
        let src = rowReadable(w)
        let out = src.shape[0], inF = src.shape[1]
        let g = Swift.min(Swift.max(group, 1), Swift.max(inF, 1))
        let groups = (inF + g - 1) / g
        let q = Tensor.empty([out, inF], dtype: .i8), scales = Tensor.empty([out, groups], dtype: .f32)
        let qp = q.hostPointer.assumingMemoryBound(to: Int8.self)
        let sp = scales.hostPointer.assumingMemoryBound(to: Float.self)
        Parallel.forEach(out, grain: Swift.max(1, 65536 / Swift.max(inF, 1))) { rows in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inF, 1))
            defer { row.deallocate() }
            for o in rows {
                readRow(src, o, into: row)
                for k in 0..<groups {
                    let lo = k * g, hi = Swift.min((k + 1) * g, inF)
                    var amax: Float = 0
                    for i in lo..<hi { amax = Swift.max(amax, Swift.abs(row[i])) }
                    let s = amax / 127
                    sp[o * groups + k] = s
                    for i in lo..<hi {
                        qp[o * inF + i] = s == 0 ? 0 : Int8(Swift.max(-127, Swift.min(127, (row[i] / s).rounded(.toNearestOrEven))))
                    }
                }
            }
        }
        return (q, scales)
    }

    /// fp8 e4m3fn with one scale per output channel (row), `FloatE4M3.quantizeRow`. Returns codes
    /// [out, in] (u8) and scales [out, 1] (f32).
    public static func e4m3(_ w: Tensor) -> (q: Tensor, scales: Tensor) {
        precondition(w.rank == 2 && w.device == .cpu)
        let src = rowReadable(w)
        let out = src.shape[0], inF = src.shape[1]
        let q = Tensor.empty([out, inF], dtype: .u8), scales = Tensor.empty([out, 1], dtype: .f32)
        let qp = q.hostPointer.assumingMemoryBound(to: UInt8.self)
        let sp = scales.hostPointer.assumingMemoryBound(to: Float.self)
        Parallel.forEach(out, grain: Swift.max(1, 65536 / Swift.max(inF, 1))) { rows in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inF, 1))
            defer { row.deallocate() }
            for o in rows {
                readRow(src, o, into: row)
                sp[o] = FloatE4M3.quantizeRow(row, count: inF, into: qp + o * inF)
            }
        }
        return (q, scales)
    }

    /// `w` contiguous in a dtype `readRow` reads directly (f32, bf16, f16), else converted to fp32
    /// once here (not once per row).
    private static func rowReadable(_ w: Tensor) -> Tensor {
        [.f32, .bf16, .f16].contains(w.dtype) ? w.contiguous() : w.to(.f32)
    }

    /// Row `o` of a contiguous [out, in] host tensor from `rowReadable`, in fp32.
    private static func readRow(_ t: Tensor, _ o: Int, into row: UnsafeMutablePointer<Float>) {
        let inF = t.shape[1], base = t.hostPointer
        switch t.dtype {
        case .bf16: nb_bf16_to_f32(base.assumingMemoryBound(to: UInt16.self) + o * inF, row, inF)
        case .f16: nb_f16_to_f32(base.assumingMemoryBound(to: UInt16.self) + o * inF, row, inF)
        default: row.update(from: base.assumingMemoryBound(to: Float.self) + o * inF, count: inF)
        }
    }
}

extension Backend {
    /// The int8 weight q [out, in] times its fp32 scales [out, groups] (each scale covering
    /// `group` consecutive inputs, the last group possibly shorter), rounded once to `dtype`,
    /// on this backend's device. Reference: a host loop.
    public func dequantizeInt8(_ q: Tensor, scales: Tensor, group: Int, dtype: DType) -> Tensor {
        let hq = q.contiguous().to(device: .cpu), hs = scales.to(.f32).to(device: .cpu)
        let out = q.shape[0], inF = q.shape[1], groups = hs.shape[1]
        let g = Swift.max(group, 1)
        let qp = hq.hostPointer.assumingMemoryBound(to: Int8.self)
        let sp = hs.hostPointer.assumingMemoryBound(to: Float.self)
        let w = Tensor.empty([out, inF], dtype: .f32)
        let wp = w.hostPointer.assumingMemoryBound(to: Float.self)
        Parallel.forEach(out, grain: Swift.max(1, 65536 / Swift.max(inF, 1))) { rows in
            for o in rows {
                for i in 0..<inF { wp[o * inF + i] = Float(qp[o * inF + i]) * sp[o * groups + i / g] }
            }
        }
        let d = w.to(dtype)
        return device == .cpu ? d : d.to(device: device)
    }

    /// Per-row e4m3 quantization of x [..., k] (any float dtype, read in fp32): `FloatE4M3.quantizeRow`
    /// on each row. Reference: a host loop.
    public func quantizeRowsE4M3(_ x: Tensor) -> E4M3Rows {
        let k = x.shape.last ?? 0, rows = x.count / Swift.max(k, 1)
        let v = x.to(.f32).to(device: .cpu).contiguous()
        let codes = Tensor.empty(x.shape, dtype: .u8), scales = Tensor.empty([rows], dtype: .f32)
        let vp = UnsafePointer(v.hostPointer.assumingMemoryBound(to: Float.self))
        let cp = codes.hostPointer.assumingMemoryBound(to: UInt8.self)
        let sp = scales.hostPointer.assumingMemoryBound(to: Float.self)
        Parallel.forEach(rows, grain: Swift.max(1, 65536 / Swift.max(k, 1))) { r in
            for i in r { sp[i] = FloatE4M3.quantizeRow(vp + i * k, count: k, into: cp + i * k) }
        }
        return device == .cpu ? E4M3Rows(codes: codes, scales: scales)
            : E4M3Rows(codes: codes.to(device: device), scales: scales.to(device: device))
    }

    /// `rmsNormModulate` then `quantizeRowsE4M3`: the value rounded to x's dtype, then quantized.
    public func rmsNormModulateE4M3(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> E4M3Rows {
        quantizeRowsE4M3(rmsNormModulate(x, weight: weight, eps: eps, scale: scale))
    }

    /// `swiglu` then `quantizeRowsE4M3`: the value rounded to a's dtype, then quantized.
    public func swigluE4M3(_ a: Tensor, _ b: Tensor) -> E4M3Rows { quantizeRowsE4M3(swiglu(a, b)) }

    /// The fp8 product before its scales, where this backend leaves them to the reader (see
    /// `ScaledProduct`); the default scales at once (the emulation: `fp8Linear`, no bias).
    public func fp8Product(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, dtype: DType) -> ScaledProduct {
        ScaledProduct(fp8Linear(x, weight: weight, weightScales: weightScales, bias: nil, dtype: dtype))
    }

    /// `ScaledProduct`'s value: raw * (rowScales[r] * columnScales[o]) in fp32, rounded once to raw's dtype.
    public func applyScales(_ p: ScaledProduct) -> Tensor { p.scaledByTensorOps() }

    // The readers of a `ScaledProduct`: the default scales it, then runs the plain op.
    public func qkvNormRope(_ qkv: ScaledProduct, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        qkvNormRope(qkv.scaled(), heads: heads, kvHeads: kvHeads, qNorm: qNorm, kNorm: kNorm, eps: eps, cos: cos, sin: sin, layout: layout)
    }

    public func rmsNormGatedResidual(_ x: Tensor, _ y: ScaledProduct, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        rmsNormGatedResidual(x, y.scaled(), weight: weight, eps: eps, gate: gate)
    }

    public func swigluE4M3(_ a: ScaledProduct, _ b: ScaledProduct) -> E4M3Rows { swigluE4M3(a.scaled(), b.scaled()) }

    /// Whether fp8 layers here take activations as `E4M3Rows` (the emulation does).
    public var takesE4M3Activations: Bool { true }

    /// fp8 W8A8 linear on activations quantized per row: `weight` [out, in] holds e4m3fn codes (u8),
    /// `weightScales` one fp32 scale per output channel ([out, 1]; a single scale broadcasts).
    ///     y[r, o] = (sum_i decode(x.codes[r, i]) * decode(weight[o, i])) * (x.scales[r] * weightScales[o]) + bias[o]
    /// with fp32 accumulation, rounded once to `dtype`. Reference: the emulation on the host (what
    /// the CPU runs and the GPU's FP8 GEMM is checked against).
    public func fp8Linear(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, bias: Tensor?, dtype: DType) -> Tensor {
        let inF = weight.shape[1], outF = weight.shape[0], rows = x.rows
        let hc = x.codes.contiguous().to(device: .cpu)
        let xp = hc.hostPointer.assumingMemoryBound(to: UInt8.self)
        let hw = weight.contiguous().to(device: .cpu)
        let wp = hw.hostPointer.assumingMemoryBound(to: UInt8.self)
        let xq = Tensor((0..<(rows * inF)).map { FloatE4M3.decode(xp[$0]) }, shape: [rows, inF])
        let wq = Tensor((0..<(outF * inF)).map { FloatE4M3.decode(wp[$0]) }, shape: [outF, inF])
        let sx = x.scales.to(device: .cpu).reshape([rows, 1])
        let sw = weightScales.to(.f32).to(device: .cpu).reshape([1, weightScales.count])
        var y = xq.linear(wq) * (sx * sw)
        if let b = bias { y = y + b.to(.f32).to(device: .cpu) }
        let r = y.reshape(Array(x.codes.shape.dropLast()) + [outF]).to(dtype)
        return device == .cpu ? r : r.to(device: device)
    }

    /// fp8 W8A8 linear on float activations x [..., in]: quantized per row, then the product above,
    /// in x's dtype.
    public func fp8Linear(_ x: Tensor, weight: Tensor, weightScales: Tensor, bias: Tensor?) -> Tensor {
        fp8Linear(quantizeRowsE4M3(x), weight: weight, weightScales: weightScales, bias: bias, dtype: x.dtype)
    }
}
