import Foundation
import NewBieTensor
#if canImport(Glibc)
import Glibc
#endif

/// An error reading or writing weights. The message names the file and, where one is at fault,
/// the tensor.
public struct WeightsError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Where one tensor lies in a safetensors file.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range inside the data section (after the header).
    public let dataBegin: Int
    public let dataEnd: Int
    public var count: Int { shape.reduce(1, *) }
}

/// A read-only memory mapping of a whole file; unmapped when the last tensor borrowing it is gone.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeMutableRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw WeightsError("\(path): cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw WeightsError("\(path): cannot stat (\(String(cString: strerror(errno))))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw WeightsError("\(path): not a regular file") }
        size = Int(st.st_size)
        if size == 0 { base = nil; return }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p = p, p != MAP_FAILED else { throw WeightsError("\(path): cannot map (\(String(cString: strerror(errno))))") }
        base = p
    }

    deinit { if let b = base { munmap(b, size) } }
}

/// One `.safetensors` file, memory-mapped; tensors are zero-copy views of the mapping.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data section. Everything in the header is checked when the file is opened.
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    public let metadata: [String: String]
    public let infos: [String: TensorInfo]
    private let file: MappedFile
    private let dataStart: Int

    /// Largest header accepted (the format's own limit is 100 MB).
    public static let maxHeaderBytes = 100_000_000

    public var names: [String] { infos.keys.sorted() }

    public convenience init(url: URL) throws { try self.init(path: url.path) }

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        guard file.size >= 8, let base = file.base else {
            throw WeightsError("\(path): truncated safetensors file (\(file.size) bytes, the header length alone needs 8)")
        }
        let n = Int(UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)))
        guard n <= SafeTensorsFile.maxHeaderBytes else {
            throw WeightsError("\(path): header length \(n) is larger than the \(SafeTensorsFile.maxHeaderBytes) bytes safetensors allows")
        }
        guard n <= file.size - 8 else {
            throw WeightsError("\(path): header length \(n) runs past the end of the file (\(file.size) bytes)")
        }
        dataStart = 8 + n
        let headerData = Data(bytes: base + 8, count: n)
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerData) }
        catch { throw WeightsError("\(path): header is not valid JSON") }
        guard let dict = json as? [String: Any] else { throw WeightsError("\(path): header is not a JSON object") }
        var meta: [String: String] = [:]
        var infos: [String: TensorInfo] = [:]
        let dataSize = file.size - dataStart
        for (name, value) in dict {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw WeightsError("\(path): __metadata__ is not an object") }
                for (k, v) in m {
                    guard let s = v as? String else { throw WeightsError("\(path): __metadata__ value for \"\(k)\" is not a string") }
                    meta[k] = s
                }
                continue
            }
            infos[name] = try SafeTensorsFile.parseEntry(name: name, value: value, path: path, dataSize: dataSize)
        }
        // data_offsets may not overlap (they need not be sorted in the header)
        let sorted = infos.values.sorted { ($0.dataBegin, $0.dataEnd) < ($1.dataBegin, $1.dataEnd) }
        for i in sorted.indices.dropFirst() where sorted[i].dataBegin < sorted[i - 1].dataEnd {
            throw WeightsError("\(path): tensor \"\(sorted[i].name)\" overlaps \"\(sorted[i - 1].name)\" (bytes \(sorted[i].dataBegin)..<\(sorted[i].dataEnd) and \(sorted[i - 1].dataBegin)..<\(sorted[i - 1].dataEnd))")
        }
        self.metadata = meta
        self.infos = infos
    }

    static func parseEntry(name: String, value: Any, path: String, dataSize: Int) throws -> TensorInfo {
        guard let e = value as? [String: Any] else { throw WeightsError("\(path): tensor \"\(name)\": entry is not an object") }
        guard let dt = e["dtype"] as? String else { throw WeightsError("\(path): tensor \"\(name)\": missing dtype") }
        guard let dtype = DType(safetensorsName: dt) else { throw WeightsError("\(path): tensor \"\(name)\": unknown dtype \"\(dt)\"") }
        guard let shapeAny = e["shape"] as? [Any] else { throw WeightsError("\(path): tensor \"\(name)\": missing shape") }
        var shape: [Int] = []
        var count = 1
        for s in shapeAny {
            guard let n = jsonInt(s), n >= 0 else {
                throw WeightsError("\(path): tensor \"\(name)\": shape \(shapeAny) is not a list of non-negative integers")
            }
            let (c, overflow) = count.multipliedReportingOverflow(by: n)
            guard !overflow else { throw WeightsError("\(path): tensor \"\(name)\": shape \(shapeAny) is too large") }
            count = c
            shape.append(n)
        }
        guard let offs = e["data_offsets"] as? [Any], offs.count == 2,
              let begin = jsonInt(offs[0]), let end = jsonInt(offs[1]) else {
            throw WeightsError("\(path): tensor \"\(name)\": data_offsets must be two integers")
        }
        guard begin >= 0, end >= begin else { throw WeightsError("\(path): tensor \"\(name)\": data_offsets [\(begin), \(end)] are reversed or negative") }
        guard end <= dataSize else {
            throw WeightsError("\(path): tensor \"\(name)\": data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes; file truncated?)")
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow, bytes == end - begin else {
            throw WeightsError("\(path): tensor \"\(name)\": shape \(shape) of \(dtype.safetensorsName) needs \(count * dtype.byteSize) bytes but data_offsets hold \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataBegin: begin, dataEnd: end)
    }

    /// An integer JSON value (not a fraction, not a bool).
    static func jsonInt(_ v: Any) -> Int? {
        if v is Bool { return nil }
        if let d = v as? Double, d != d.rounded() { return nil }
        return v as? Int
    }

    public func info(_ name: String) -> TensorInfo? { infos[name] }

    /// A zero-copy CPU tensor over the mapped bytes.
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = infos[name] else { throw WeightsError("\(path): no tensor named \"\(name)\"") }
        let n = info.dataEnd - info.dataBegin
        let p = (file.base ?? UnsafeMutableRawPointer(bitPattern: 0x40)!) + dataStart + info.dataBegin
        return Tensor.borrowing(host: p, byteCount: n, dtype: info.dtype, shape: info.shape, owner: file)
    }
}
