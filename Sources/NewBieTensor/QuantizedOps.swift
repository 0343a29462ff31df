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

    /// The value of a code (exact in fp32).
    @inline(__always)
    public static func decode(_ c: UInt8) -> Float {
        let sign: Float = c & 0x80 != 0 ? -1 : 1
        let e = Int((c >> 3) & 0xf), m = Float(c & 7)
        if e == 15 && c & 7 == 7 { return .nan }
        if e == 0 { return sign * m * 0x1p-9 }
        return sign * (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
    }

    /// Per-tensor scale for values whose largest magnitude is `amax`: amax / 448, or 1 when amax
    /// is 0 (an all-zero tensor quantizes to zeros with any scale).
    @inline(__always)
    public static func scale(amax: Float) -> Float { amax > 0 ? amax / maxFinite : 1 }
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

    /// fp8 e4m3fn with one scale for the tensor: scale = max|w| / 448 (1 for an all-zero tensor),
    /// codes e4m3(w / scale) as torch's cast. Returns codes [out, in] (u8) and the scale.
    public static func e4m3(_ w: Tensor) -> (q: Tensor, scale: Float) {
        precondition(w.rank == 2 && w.device == .cpu)
        let src = rowReadable(w)
        let out = src.shape[0], inF = src.shape[1]
        let grain = Swift.max(1, 65536 / Swift.max(inF, 1))
        // pass 1: the largest magnitude, one partial maximum per chunk of rows
        let partial = PartialMaxima(count: out)
        Parallel.forEach(out, grain: grain) { rows in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inF, 1))
            defer { row.deallocate() }
            var m: Float = 0
            for o in rows {
                readRow(src, o, into: row)
                for i in 0..<inF { m = Swift.max(m, Swift.abs(row[i])) }
            }
            partial.set(rows.lowerBound, m)
        }
        let s = FloatE4M3.scale(amax: partial.maximum)
        let q = Tensor.empty([out, inF], dtype: .u8)
        let qp = q.hostPointer.assumingMemoryBound(to: UInt8.self)
        Parallel.forEach(out, grain: grain) { rows in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inF, 1))
            defer { row.deallocate() }
            for o in rows {
                readRow(src, o, into: row)
                for i in 0..<inF { qp[o * inF + i] = FloatE4M3.encode(row[i] / s) }
            }
        }
        return (q, s)
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

    /// One slot per possible chunk start (chunks never share a first row), so threads never write
    /// the same slot.
    private final class PartialMaxima: @unchecked Sendable {
        private let slots: UnsafeMutableBufferPointer<Float>
        init(count: Int) { slots = .allocate(capacity: Swift.max(count, 1)); slots.initialize(repeating: 0) }
        deinit { slots.deallocate() }
        func set(_ i: Int, _ v: Float) { slots[i] = v }
        var maximum: Float { slots.max() ?? 0 }
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

    /// fp8 W8A8 linear: `weight` [out, in] holds e4m3fn codes (u8) with one fp32 scale
    /// (`weightScale`, one element); x [..., in] is quantized per tensor (scale amax/448, codes
    /// e4m3(x / scale)), the codes multiplied with fp32 accumulation, the product scaled by both
    /// scales, the bias added in fp32, and the result rounded once to x's dtype. Reference: the
    /// emulation on the host (what the CPU runs and the GPU's FP8 GEMM is checked against).
    public func fp8Linear(_ x: Tensor, weight: Tensor, weightScale: Tensor, bias: Tensor?) -> Tensor {
        let inF = weight.shape[1], outF = weight.shape[0]
        let xs = x.to(.f32).to(device: .cpu).contiguous().toFloats()
        var amax: Float = 0
        for v in xs { amax = Swift.max(amax, Swift.abs(v)) }
        if xs.contains(where: { $0.isNaN }) { amax = .nan }
        let sx = FloatE4M3.scale(amax: amax)
        let xq = xs.map { FloatE4M3.decode(FloatE4M3.encode($0 / sx)) }
        let hw = weight.contiguous().to(device: .cpu)
        let wp = hw.hostPointer.assumingMemoryBound(to: UInt8.self)
        let wq = (0..<(outF * inF)).map { FloatE4M3.decode(wp[$0]) }
        let sw = weightScale.toFloats()[0]
        var y = Tensor(xq, shape: [xs.count / Swift.max(inF, 1), inF])
            .linear(Tensor(wq, shape: [outF, inF])) * (sx * sw)
        if let b = bias { y = y + b.to(.f32).to(device: .cpu) }
        let r = y.reshape(Array(x.shape.dropLast()) + [outF]).to(x.dtype)
        return device == .cpu ? r : r.to(device: device)
    }
}
