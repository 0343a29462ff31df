import Foundation
import NewBieTensor

/// GGML tensor types as numbered in the GGUF format, with their block geometry.
///
/// Every type known to the format is listed so that a file is validated (sizes, offsets) even when
/// a tensor's type cannot be dequantized here; `isDequantizable` says which ones can.
public struct GGMLType: Hashable, Sendable, CustomStringConvertible {
    public let id: UInt32
    public let name: String
    /// Logical values per block (1 for plain types).
    public let blockSize: Int
    /// Bytes per block.
    public let blockBytes: Int

    public var description: String { name }

    /// Types this reader turns into tensors: plain F32/F16/BF16 and the quantised formats below.
    public var isDequantizable: Bool { GGMLType.dequantizable.contains(id) }

    static let dequantizable: Set<UInt32> = [0, 1, 30, 2, 6, 8, 12, 13, 14]

    public static let f32 = GGMLType(id: 0, name: "F32", blockSize: 1, blockBytes: 4)
    public static let f16 = GGMLType(id: 1, name: "F16", blockSize: 1, blockBytes: 2)
    public static let q4_0 = GGMLType(id: 2, name: "Q4_0", blockSize: 32, blockBytes: 18)
    public static let q5_0 = GGMLType(id: 6, name: "Q5_0", blockSize: 32, blockBytes: 22)
    public static let q8_0 = GGMLType(id: 8, name: "Q8_0", blockSize: 32, blockBytes: 34)
    public static let q4_K = GGMLType(id: 12, name: "Q4_K", blockSize: 256, blockBytes: 144)
    public static let q5_K = GGMLType(id: 13, name: "Q5_K", blockSize: 256, blockBytes: 176)
    public static let q6_K = GGMLType(id: 14, name: "Q6_K", blockSize: 256, blockBytes: 210)
    public static let bf16 = GGMLType(id: 30, name: "BF16", blockSize: 1, blockBytes: 2)

    /// All types the GGUF format defines (ggml's numbering; gaps are retired ids).
    public static let all: [GGMLType] = [
        f32, f16, q4_0,
        GGMLType(id: 3, name: "Q4_1", blockSize: 32, blockBytes: 20),
        q5_0,
        GGMLType(id: 7, name: "Q5_1", blockSize: 32, blockBytes: 24),
        q8_0,
        GGMLType(id: 9, name: "Q8_1", blockSize: 32, blockBytes: 40),
        GGMLType(id: 10, name: "Q2_K", blockSize: 256, blockBytes: 84),
        GGMLType(id: 11, name: "Q3_K", blockSize: 256, blockBytes: 110),
        q4_K, q5_K, q6_K,
        GGMLType(id: 15, name: "Q8_K", blockSize: 256, blockBytes: 292),
        GGMLType(id: 16, name: "IQ2_XXS", blockSize: 256, blockBytes: 66),
        GGMLType(id: 17, name: "IQ2_XS", blockSize: 256, blockBytes: 74),
        GGMLType(id: 18, name: "IQ3_XXS", blockSize: 256, blockBytes: 98),
        GGMLType(id: 19, name: "IQ1_S", blockSize: 256, blockBytes: 50),
        GGMLType(id: 20, name: "IQ4_NL", blockSize: 32, blockBytes: 18),
        GGMLType(id: 21, name: "IQ3_S", blockSize: 256, blockBytes: 110),
        GGMLType(id: 22, name: "IQ2_S", blockSize: 256, blockBytes: 82),
        GGMLType(id: 23, name: "IQ4_XS", blockSize: 256, blockBytes: 136),
        GGMLType(id: 24, name: "I8", blockSize: 1, blockBytes: 1),
        GGMLType(id: 25, name: "I16", blockSize: 1, blockBytes: 2),
        GGMLType(id: 26, name: "I32", blockSize: 1, blockBytes: 4),
        GGMLType(id: 27, name: "I64", blockSize: 1, blockBytes: 8),
        GGMLType(id: 28, name: "F64", blockSize: 1, blockBytes: 8),
        GGMLType(id: 29, name: "IQ1_M", blockSize: 256, blockBytes: 56),
        bf16,
        GGMLType(id: 34, name: "TQ1_0", blockSize: 256, blockBytes: 54),
        GGMLType(id: 35, name: "TQ2_0", blockSize: 256, blockBytes: 66),
        GGMLType(id: 39, name: "MXFP4", blockSize: 32, blockBytes: 17),
        GGMLType(id: 40, name: "NVFP4", blockSize: 64, blockBytes: 36),
        GGMLType(id: 41, name: "Q1_0", blockSize: 128, blockBytes: 18),
    ]

    static let byID: [UInt32: GGMLType] = Dictionary(uniqueKeysWithValues: all.map { ($0.id, $0) })

    public init(id: UInt32, name: String, blockSize: Int, blockBytes: Int) {
        self.id = id; self.name = name; self.blockSize = blockSize; self.blockBytes = blockBytes
    }

    /// The type with this GGUF id, or nil for an id the format does not define.
    public static func byId(_ id: UInt32) -> GGMLType? { byID[id] }

    /// The block format a linear layer can hold resident (nil: a plain or unsupported type).
    public var blockFormat: BlockFormat? { BlockFormat(rawValue: id) }
}

/// Dequantisation of GGUF tensors to Float32: the plain types here, the block formats by
/// `BlockFormat.decode` (NewBieTensor), bit for bit the `gguf` Python package's values.
public enum GGUFQuant {
    /// Dequantises `count` values (a multiple of the type's block size) from `src` into `dst`.
    /// Splits the work over the CPU's cores for large tensors.
    public static func dequantize(_ type: GGMLType, _ src: UnsafeRawPointer, count: Int,
                                  into dst: UnsafeMutablePointer<Float>) throws {
        guard type.isDequantizable else {
            throw WeightsError("GGML type \(type.name) cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K)")
        }
        precondition(count % type.blockSize == 0, "\(count) values are not whole \(type.name) blocks")
        let blocks = count / type.blockSize
        let chunkBlocks = Swift.max(1, (1 << 16) / type.blockSize)
        let chunks = (blocks + chunkBlocks - 1) / chunkBlocks
        let body = { (c: Int) in
            let b0 = c * chunkBlocks, b1 = Swift.min(blocks, b0 + chunkBlocks)
            dequantizeBlocks(type, src + b0 * type.blockBytes, blocks: b1 - b0, into: dst + b0 * type.blockSize)
        }
        if chunks <= 1 { if chunks == 1 { body(0) } }
        else { DispatchQueue.concurrentPerform(iterations: chunks, execute: body) }
    }

    static func dequantizeBlocks(_ type: GGMLType, _ src: UnsafeRawPointer, blocks: Int, into y: UnsafeMutablePointer<Float>) {
        switch type.id {
        case GGMLType.f32.id:
            for i in 0..<blocks { y[i] = Float(bitPattern: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
        case GGMLType.f16.id:
            for i in 0..<blocks { y[i] = Half.f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
        case GGMLType.bf16.id:
            for i in 0..<blocks { y[i] = Half.bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) }
        default:
            if let f = type.blockFormat { f.decode(src, blocks: blocks, into: y); return }
            preconditionFailure("dequantizeBlocks: \(type.name) is not dequantizable")
        }
    }
}
