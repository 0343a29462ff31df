import Foundation
import NewBieTensor

/// Quantization of float32 rows into GGML blocks, written to give the same bytes as the `gguf`
/// Python package's `gguf.quants.quantize` (0.19.0; itself bit-exact with ggml's reference
/// quantizers for these types): the same float32 operations in the same order.
///
/// Q8_0, Q5_0, Q4_0 here; the K-quants (Q6_K, Q5_K, Q4_K) in GGUFQuantizeK.swift, ggml's reference
/// quantizers (the gguf package has none; they are checked against ggml itself).
public enum GGUFQuantize {
    public static let supported: [GGMLType] = [.q8_0, .q5_0, .q4_0, .q6_K, .q5_K, .q4_K]

    /// `count` values (whole blocks) from `src` into `type`'s blocks at `dst`. Blocks are
    /// independent, so large tensors are split over the CPU's cores (the K-quants' scale search is
    /// the slow part of `newbie quantize`).
    public static func quantize(_ type: GGMLType, _ src: UnsafePointer<Float>, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(count % type.blockSize == 0 && supported.contains(type))
        let blocks = count / type.blockSize
        let chunkBlocks = 1024
        let chunks = (blocks + chunkBlocks - 1) / chunkBlocks
        let out = UInt(bitPattern: dst)
        let body = { (c: Int) in
            let o = UnsafeMutablePointer<UInt8>(bitPattern: out)!
            for b in (c * chunkBlocks)..<Swift.min(blocks, (c + 1) * chunkBlocks) {
                quantizeBlock(type, src + b * type.blockSize, o + b * type.blockBytes)
            }
        }
        if chunks <= 1 { if chunks == 1 { body(0) } }
        else { DispatchQueue.concurrentPerform(iterations: chunks, execute: body) }
    }

    @inline(__always) static func quantizeBlock(_ type: GGMLType, _ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>) {
        switch type.id {
        case GGMLType.q8_0.id: q8_0(x, o)
        case GGMLType.q5_0.id: q5_0(x, o)
        case GGMLType.q4_0.id: q4_0(x, o)
        case GGMLType.q6_K.id: GGUFQuantizeK.q6K(x, o)
        case GGMLType.q5_K.id: GGUFQuantizeK.q45K(x, o, five: true)
        case GGMLType.q4_K.id: GGUFQuantizeK.q45K(x, o, five: false)
        default: preconditionFailure("GGUFQuantize: \(type.name) is not supported")
        }
    }

    @inline(__always) static func storeF16(_ v: Float, _ o: UnsafeMutablePointer<UInt8>) {
        let h = Half.f16Bits(v)
        o[0] = UInt8(h & 0xFF); o[1] = UInt8(h >> 8)
    }

    /// The value of largest magnitude, the first such in the block when two tie (numpy's argmax).
    @inline(__always) static func signedMax(_ x: UnsafePointer<Float>) -> Float {
        var best: Float = 0, bestAbs: Float = -1
        for j in 0..<32 where abs(x[j]) > bestAbs { bestAbs = abs(x[j]); best = x[j] }
        return best
    }

    /// d = max|x| / 127, q = round-half-away(x * (1 / d)).
    static func q8_0(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d == 0 ? 0 : 1 / d
        storeF16(d, o)
        for j in 0..<32 { o[2 + j] = UInt8(bitPattern: Int8((x[j] * id).rounded(.toNearestOrAwayFromZero))) }
    }

    /// d = max / -8 (max: the signed value of largest magnitude), q = trunc(x * (1 / d) + 8.5) in 0...15.
    static func q4_0(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>) {
        let d = signedMax(x) / -8
        let id: Float = d == 0 ? 0 : 1 / d
        storeF16(d, o)
        for j in 0..<16 {
            let a = UInt8(min(15, (x[j] * id + 8.5).rounded(.towardZero)))
            let b = UInt8(min(15, (x[j + 16] * id + 8.5).rounded(.towardZero)))
            o[2 + j] = a | (b << 4)
        }
    }

    /// d = max / -16, q = trunc(x * (1 / d) + 16.5) in 0...31, the fifth bits packed in a u32.
    static func q5_0(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>) {
        let d = signedMax(x) / -16
        let id: Float = d == 0 ? 0 : 1 / d
        storeF16(d, o)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let a = UInt8(min(31, (x[j] * id + 16.5).rounded(.towardZero)))
            let b = UInt8(min(31, (x[j + 16] * id + 16.5).rounded(.towardZero)))
            o[6 + j] = (a & 0x0F) | ((b & 0x0F) << 4)
            qh |= UInt32(a >> 4) << UInt32(j) | UInt32(b >> 4) << UInt32(j + 16)
        }
        for k in 0..<4 { o[2 + k] = UInt8((qh >> UInt32(8 * k)) & 0xFF) }
    }
}
