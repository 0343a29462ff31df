import Foundation
import NewBieTensor

/// Writes a GGUF v3 file (little-endian): header, string/uint32 metadata, tensor infos with dims
/// innermost first, then the data, each tensor aligned to 32 bytes (GGUF's default alignment).
/// Written through `OutputFile.write`: a temporary file renamed into place, so the destination
/// is either the old file or the whole new one.
public enum GGUFWriter {
    public struct Entry {
        public let name: String
        public let type: GGMLType
        /// Row-major (PyTorch) shape; the file stores it reversed.
        public let shape: [Int]
        /// The stored bytes (count / blockSize * blockBytes of them).
        public let data: [UInt8]
        public init(name: String, type: GGMLType, shape: [Int], data: [UInt8]) {
            self.name = name; self.type = type; self.shape = shape; self.data = data
        }
    }

    public enum Value { case string(String), uint32(UInt32) }

    static let alignment = 32

    public static func write(_ entries: [Entry], metadata: [(String, Value)], toPath path: String) throws {
        var head: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { head += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { head += $0 } }
        func str(_ s: String) { let b = Array(s.utf8); u64(UInt64(b.count)); head += b }
        head += Array("GGUF".utf8)
        u32(3)
        u64(UInt64(entries.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata {
            str(k)
            switch v {
            case .string(let s): u32(8); str(s)
            case .uint32(let n): u32(4); u32(n)
            }
        }
        var offset = 0
        var offsets: [Int] = []
        for e in entries {
            let count = e.shape.reduce(1, *)
            guard e.shape.count >= 1 && e.shape.count <= 4, (e.shape.last ?? 0) % e.type.blockSize == 0,
                  e.data.count == count / e.type.blockSize * e.type.blockBytes else {
                throw WeightsError(.invalidArgument, file: path, tensor: e.name, "cannot write \(e.type.name) \(e.shape) from \(e.data.count) bytes")
            }
            str(e.name)
            u32(UInt32(e.shape.count))
            for d in e.shape.reversed() { u64(UInt64(d)) }
            u32(e.type.id)
            u64(UInt64(offset))
            offsets.append(offset)
            offset = (offset + e.data.count + alignment - 1) / alignment * alignment
        }
        while head.count % alignment != 0 { head.append(0) }
        do {
            try OutputFile.write(path) { fd in
                try head.withUnsafeBytes { try OutputFile.writeAll(fd, $0.baseAddress, $0.count, path: path) }
                let zeros = [UInt8](repeating: 0, count: alignment)
                for e in entries {
                    try e.data.withUnsafeBytes { try OutputFile.writeAll(fd, $0.baseAddress, $0.count, path: path) }
                    let pad = (alignment - e.data.count % alignment) % alignment
                    if pad > 0 { try zeros.withUnsafeBytes { try OutputFile.writeAll(fd, $0.baseAddress, pad, path: path) } }
                }
            }
        } catch let e as OutputError {
            throw WeightsError(kind: .io, file: path, tensor: nil, message: e.description)
        }
    }
}
