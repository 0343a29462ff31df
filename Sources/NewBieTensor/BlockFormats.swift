import Foundation

/// GGML block formats a quantized linear layer can hold as they are stored (docs/QUANTIZATION.md):
/// each row of `cols` values is cut into blocks of `blockSize` values, `blockBytes` bytes each, and
/// a backend widens the blocks to a float weight just before the matrix product.
///
/// The raw values are the GGUF type ids. The layouts are ggml's `block_q8_0`, `block_q5_0`,
/// `block_q4_0`, `block_q4_K`, `block_q5_K`, `block_q6_K`.
public enum BlockFormat: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case q4_0 = 2, q5_0 = 6, q8_0 = 8, q4_K = 12, q5_K = 13, q6_K = 14

    public var blockSize: Int {
        switch self {
        case .q4_0, .q5_0, .q8_0: return 32
        case .q4_K, .q5_K, .q6_K: return 256
        }
    }

    public var blockBytes: Int {
        switch self {
        case .q4_0: return 18
        case .q5_0: return 22
        case .q8_0: return 34
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        }
    }

    public var description: String {
        switch self {
        case .q4_0: return "Q4_0"
        case .q5_0: return "Q5_0"
        case .q8_0: return "Q8_0"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of `blockSize`).
    public func rowBytes(_ cols: Int) -> Int { cols / blockSize * blockBytes }

    @inline(__always) static func f16(_ p: UnsafeRawPointer, _ off: Int) -> Float {
        Half.f16ToFloat(p.loadUnaligned(fromByteOffset: off, as: UInt16.self).littleEndian)
    }

    /// Scale and min of sub-block j (0..<8) of a Q4_K/Q5_K block's 12 packed scale bytes.
    @inline(__always) public static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (sc, m)
    }

    /// Widens `blocks` blocks at `src` to `blocks * blockSize` floats at `y`. The arithmetic is
    /// fp32 in the order of the `gguf` Python package (`gguf.quants`; e.g. Q4_K
    /// `(d * sc) * q - (dmin * m)`), so the values are its values bit for bit; the CUDA kernels
    /// (Kernels/gguf.cu) repeat the same operations without fused multiply-adds.
    public func decode(_ src: UnsafeRawPointer, blocks: Int, into y: UnsafeMutablePointer<Float>) {
        let bytes = src.assumingMemoryBound(to: UInt8.self)
        let f16 = BlockFormat.f16, scaleMinK4 = BlockFormat.scaleMinK4
        switch self {
        case .q8_0:
            for b in 0..<blocks {
                let p = bytes + b * 34, o = y + b * 32
                let d = f16(p, 0)
                for j in 0..<32 { o[j] = Float(Int8(bitPattern: p[2 + j])) * d }
            }
        case .q4_0:
            for b in 0..<blocks {
                let p = bytes + b * 18, o = y + b * 32
                let d = f16(p, 0)
                let qs = p + 2
                for j in 0..<16 {
                    o[j] = d * Float(Int(qs[j] & 0x0F) - 8)
                    o[j + 16] = d * Float(Int(qs[j] >> 4) - 8)
                }
            }
        case .q5_0:
            for b in 0..<blocks {
                let p = bytes + b * 22, o = y + b * 32
                let d = f16(p, 0)
                let qh = UInt32(littleEndian: UnsafeRawPointer(p + 2).loadUnaligned(as: UInt32.self))
                let qs = p + 6
                for j in 0..<16 {
                    let h0 = Int((qh >> UInt32(j)) & 1) << 4
                    let h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
                    o[j] = d * Float((Int(qs[j] & 0x0F) | h0) - 16)
                    o[j + 16] = d * Float((Int(qs[j] >> 4) | h1) - 16)
                }
            }
        case .q4_K:
            for b in 0..<blocks {
                let p = bytes + b * 144, o = y + b * 256
                let d = f16(p, 0), dmin = f16(p, 2)
                let scales = UnsafePointer(p + 4)
                var q = UnsafePointer(p + 16)
                for chunk in 0..<4 {
                    let (sc1, m1) = scaleMinK4(2 * chunk, scales)
                    let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
                    let d1 = d * Float(sc1), dm1 = dmin * Float(m1)
                    let d2 = d * Float(sc2), dm2 = dmin * Float(m2)
                    let oo = o + chunk * 64
                    for l in 0..<32 {
                        oo[l] = d1 * Float(q[l] & 0x0F) - dm1
                        oo[l + 32] = d2 * Float(q[l] >> 4) - dm2
                    }
                    q += 32
                }
            }
        case .q5_K:
            for b in 0..<blocks {
                let p = bytes + b * 176, o = y + b * 256
                let d = f16(p, 0), dmin = f16(p, 2)
                let scales = UnsafePointer(p + 4)
                let qh = UnsafePointer(p + 16)
                var ql = UnsafePointer(p + 48)
                for chunk in 0..<4 {
                    let (sc1, m1) = scaleMinK4(2 * chunk, scales)
                    let (sc2, m2) = scaleMinK4(2 * chunk + 1, scales)
                    let d1 = d * Float(sc1), dm1 = dmin * Float(m1)
                    let d2 = d * Float(sc2), dm2 = dmin * Float(m2)
                    let u1 = UInt8(1) << UInt8(2 * chunk), u2 = UInt8(2) << UInt8(2 * chunk)
                    let oo = o + chunk * 64
                    for l in 0..<32 {
                        let lo = (ql[l] & 0x0F) | ((qh[l] & u1) != 0 ? 16 : 0)
                        let hi = (ql[l] >> 4) | ((qh[l] & u2) != 0 ? 16 : 0)
                        oo[l] = d1 * Float(lo) - dm1
                        oo[l + 32] = d2 * Float(hi) - dm2
                    }
                    ql += 32
                }
            }
        case .q6_K:
            for b in 0..<blocks {
                let p = bytes + b * 210, o = y + b * 256
                let d = f16(p, 208)
                for half in 0..<2 {
                    let ql = p + half * 64, qh = p + 128 + half * 32
                    let sc = UnsafeRawPointer(p + 192 + half * 8)
                    let oo = o + half * 128
                    for l in 0..<32 {
                        let s = l / 16
                        let q1 = Int((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                        let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                        let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                        let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                        let s1 = Float(sc.load(fromByteOffset: s, as: Int8.self))
                        let s2 = Float(sc.load(fromByteOffset: s + 2, as: Int8.self))
                        let s3 = Float(sc.load(fromByteOffset: s + 4, as: Int8.self))
                        let s4 = Float(sc.load(fromByteOffset: s + 6, as: Int8.self))
                        oo[l] = (d * s1) * Float(q1)
                        oo[l + 32] = (d * s2) * Float(q2)
                        oo[l + 64] = (d * s3) * Float(q3)
                        oo[l + 96] = (d * s4) * Float(q4)
                    }
                }
            }
        }
    }
}

extension Backend {
    /// A weight [rows, cols] held as `format` blocks (`blocks`: u8 [rows, format.rowBytes(cols)],
    /// row-major), widened in fp32 and rounded once to `dtype`, on this backend's device.
    /// Reference: the host decoder (`BlockFormat.decode`).
    public func dequantizeBlocks(_ blocks: Tensor, format: BlockFormat, rows: Int, cols: Int, dtype: DType) -> Tensor {
        let host = blocks.contiguous().to(device: .cpu)
        let w = Tensor.empty([rows, cols], dtype: .f32)
        // blocks are independent: chunks of 64 Ki values over the cores (a layer is widened per call)
        let blocks = rows * cols / format.blockSize, chunk = Swift.max(1, (1 << 16) / format.blockSize)
        let src = UnsafeRawPointer(host.hostPointer), dst = w.hostPointer.assumingMemoryBound(to: Float.self)
        let chunks = (blocks + chunk - 1) / chunk
        let body = { (c: Int) in
            let b0 = c * chunk, n = Swift.min(blocks, b0 + chunk) - b0
            format.decode(src + b0 * format.blockBytes, blocks: n, into: dst + b0 * format.blockSize)
        }
        if chunks == 1 { body(0) } else if chunks > 1 { DispatchQueue.concurrentPerform(iterations: chunks, execute: body) }
        let d = w.to(dtype)
        return device == .cpu ? d : d.to(device: device)
    }
}
