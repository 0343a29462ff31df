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
/// The file is written to a temporary file in the destination folder, flushed to disk, and then
/// renamed over the destination: an interrupted write never leaves a half-written file under the
/// destination name, and an existing file is replaced only once the new one is complete.
public enum SafeTensorsWriter {
    /// The header bytes (JSON plus padding, without the 8-byte length) and the data size for
    /// tensors of the given names, dtypes and shapes.
    static func header(_ entries: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]?)
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
            parts.append("\(JSONWriter.quote(e.name)):{\"dtype\":\"\(e.dtype.safetensorsName)\",\"shape\":\(shape),\"data_offsets\":[\(offset),\(offset + n)]}")
            offset += n
        }
        var bytes = Array(("{" + parts.joined(separator: ",") + "}").utf8)
        while bytes.count % 8 != 0 { bytes.append(UInt8(ascii: " ")) }
        return (bytes, offset)
    }

    /// Writes `tensors` (any dtype, any device, any layout: each is made contiguous on the CPU)
    /// and optional string metadata to `url`, atomically.
    public static func write(_ tensors: [(String, Tensor)], metadata: [String: String]? = nil, to url: URL) throws {
        let path = url.path
        let header: [UInt8], dataSize: Int
        do {
            (header, dataSize) = try Self.header(tensors.map { ($0.0, $0.1.dtype, $0.1.shape) }, metadata: metadata)
        } catch let e as WeightsError {
            throw e.withFile(path)
        }

        let dir = url.deletingLastPathComponent().path
        var template = Array((dir.isEmpty ? "." : dir).utf8CString.dropLast())
        template += Array("/.\(url.lastPathComponent).tmp-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw WeightsError(.io, file: path, "cannot create a temporary file in \(dir.isEmpty ? "." : dir) (\(String(cString: strerror(errno))))")
        }
        let tempPath = String(cString: template)
        var done = false
        defer {
            if !done { close(fd); unlink(tempPath) }
        }
        fchmod(fd, 0o644)

        func writeAll(_ p: UnsafeRawPointer?, _ n: Int) throws {
            var written = 0
            while written < n {
                let r = systemWrite(fd, p! + written, Swift.min(n - written, 1 << 30))
                if r < 0 {
                    if errno == EINTR { continue }
                    throw WeightsError(.io, file: path, "write failed (\(String(cString: strerror(errno))))")
                }
                written += r
            }
        }

        var length = UInt64(header.count).littleEndian
        try withUnsafeBytes(of: &length) { try writeAll($0.baseAddress, 8) }
        try header.withUnsafeBytes { try writeAll($0.baseAddress, $0.count) }
        var total = 0
        for (name, t) in tensors {
            let c = t.contiguous().to(device: .cpu)
            let n = c.byteCount
            if n > 0 {
                do { try writeAll(UnsafeRawPointer(c.hostPointer), n) } catch let e as WeightsError {
                    throw WeightsError(.io, file: path, tensor: name, e.message)
                }
            }
            total += n
        }
        precondition(total == dataSize, "tensor sizes changed while writing")
        guard fsync(fd) == 0 else { throw WeightsError(.io, file: path, "fsync failed (\(String(cString: strerror(errno))))") }
        guard close(fd) == 0 else {
            done = true; unlink(tempPath)
            throw WeightsError(.io, file: path, "close failed (\(String(cString: strerror(errno))))")
        }
        done = true
        guard rename(tempPath, path) == 0 else {
            let msg = String(cString: strerror(errno))
            unlink(tempPath)
            throw WeightsError(.io, file: path, "cannot move the finished file into place (\(msg))")
        }
        // Make the rename itself durable.
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}

extension WeightsError {
    /// The same error with the destination file filled in (the message says which file).
    func withFile(_ path: String) -> WeightsError {
        guard file == nil else { return self }
        return WeightsError(kind: kind, file: path, tensor: tensor, message: "\(path): \(message)")
    }
}

/// write(2), named apart from `SafeTensorsWriter.write`.
private func systemWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}
