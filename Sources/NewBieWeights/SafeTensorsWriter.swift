import Foundation
import NewBieTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes `.safetensors` files.
///
/// Layout: tensors are stored contiguously in the order given (no sorting, no holes), the JSON
/// header lists them in that order after `__metadata__` (keys sorted), and is padded with spaces
/// to a multiple of 8 bytes so that the data section starts 8-byte aligned.
///
/// The file is written through `OutputFile`: `-` is standard output; otherwise a temporary file in
/// the destination folder is flushed to disk and then renamed over the destination (symbolic links
/// followed, anything but a regular file refused): an interrupted write never leaves a half-written
/// file under the destination name, and an existing file is replaced only once the new one is complete.
public enum SafeTensorsWriter {
    /// The header bytes (JSON plus padding, without the 8-byte length) and the data size for
    /// tensors of the given names, dtypes and shapes.
    static func header(_ entries: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]?,
                       storedAs: [String: String] = [:])
        throws -> (bytes: [UInt8], dataSize: Int) {
        var seen = Set<String>()
        var parts: [String] = []
        if let metadata = metadata {
            let kv = metadata.keys.sorted().map { "\(JSONWriter.quote($0)):\(JSONWriter.quote(metadata[$0]!))" }
            parts.append("\"__metadata__\":{" + kv.joined(separator: ",") + "}")
        }
        var offset = 0
        for e in entries {
            guard e.name != "__metadata__" else {
                throw WeightsError(.invalidArgument, file: nil, tensor: e.name, "the name __metadata__ is reserved by safetensors")
            }
            guard seen.insert(e.name).inserted else {
                throw WeightsError(.invalidArgument, file: nil, tensor: e.name, "given twice")
            }
            var count = 1
            for d in e.shape {
                guard d >= 0 else { throw WeightsError(.invalidArgument, file: nil, tensor: e.name, "negative dimension in shape \(e.shape)") }
                count *= d
            }
            let n = count * e.dtype.byteSize
            let shape = "[" + e.shape.map(String.init).joined(separator: ",") + "]"
            parts.append("\(JSONWriter.quote(e.name)):{\"dtype\":\"\(storedAs[e.name] ?? e.dtype.safetensorsName)\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + n)]}")
            offset += n
        }
        var bytes = Array(("{" + parts.joined(separator: ",") + "}").utf8)
        while bytes.count % 8 != 0 { bytes.append(UInt8(ascii: " ")) }
        return (bytes, offset)
    }

    /// Writes `tensors` (any dtype, any device, any layout: each is made contiguous on the CPU)
    /// and optional string metadata to `url`, atomically.
    public static func write(_ tensors: [(String, Tensor)], metadata: [String: String]? = nil, to url: URL) throws {
        try write(tensors, metadata: metadata, toPath: url.path)
    }

    /// The same to a path given as text, where `-` is standard output.
    /// `storedAs` names a safetensors dtype for tensors whose bytes are held in a one-byte
    /// container (e.g. "F8_E4M3" for fp8 bytes in a `.u8` tensor).
    public static func write(_ tensors: [(String, Tensor)], metadata: [String: String]? = nil, storedAs: [String: String] = [:],
                             toPath path: String) throws {
        let header: [UInt8], dataSize: Int
        do {
            (header, dataSize) = try Self.header(tensors.map { ($0.0, $0.1.dtype, $0.1.shape) }, metadata: metadata, storedAs: storedAs)
        } catch let e as WeightsError {
            throw e.withFile(path)
        }

        do {
            try OutputFile.write(path) { fd in
                func writeAll(_ p: UnsafeRawPointer?, _ n: Int) throws { try OutputFile.writeAll(fd, p, n, path: path) }
                var length = UInt64(header.count).littleEndian
                try withUnsafeBytes(of: &length) { try writeAll($0.baseAddress, 8) }
                try header.withUnsafeBytes { try writeAll($0.baseAddress, $0.count) }
                var total = 0
                for (name, t) in tensors {
                    let c = t.contiguous().to(device: .cpu)
                    let n = c.byteCount
                    if n > 0 {
                        do { try writeAll(UnsafeRawPointer(c.hostPointer), n) } catch let e as OutputError {
                            throw WeightsError(.io, file: path, tensor: name, e.message)
                        }
                    }
                    total += n
                }
                precondition(total == dataSize, "tensor sizes changed while writing")
            }
        } catch let e as OutputError {
            throw WeightsError(kind: .io, file: path, tensor: nil, message: e.description)
        }
    }
}

extension WeightsError {
    /// The same error with the destination file filled in (the message says which file).
    func withFile(_ path: String) -> WeightsError {
        guard file == nil else { return self }
        return WeightsError(kind: kind, file: path, tensor: tensor, message: "\(path): \(message)")
    }
}
