import Foundation
import NewBieTensor
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error reading or writing weights. The message names the file and, where one is at fault,
/// the tensor; `kind`, `file` and `tensor` carry the same facts for code (and tests) to check.
public struct WeightsError: Error, CustomStringConvertible, LocalizedError {
    public enum Kind: String, Sendable {
        /// Anything not classified below (e.g. a summary of several problems).
        case other
        /// The file or folder cannot be opened, read, mapped or written.
        case io
        /// The file ends before its header does (fewer than 8 bytes, or header length past the end).
        case truncated
        /// The declared header length is larger than the 100 MB safetensors allows.
        case headerTooLarge
        /// The header is not UTF-8, not JSON, not an object, does not start with `{`, or has a
        /// duplicate key.
        case invalidHeader
        /// A tensor entry is malformed (not an object, missing or ill-typed dtype/shape/data_offsets).
        case invalidEntry
        /// The dtype is not a safetensors dtype at all.
        case unknownDType
        /// A valid safetensors dtype (e.g. F8_E4M3, U16) that NewBie has no type for.
        case unsupportedDType
        /// The shape's element count (or its byte size) overflows.
        case shapeOverflow
        /// shape x dtype size differs from the byte length given by data_offsets.
        case sizeMismatch
        /// data_offsets overlap, leave a hole, are reversed, run past the end of the file, or leave
        /// bytes at the end of the file that no tensor covers.
        case invalidOffsets
        /// `__metadata__` is not an object of strings.
        case invalidMetadata
        /// A requested tensor is not in the checkpoint.
        case tensorNotFound
        /// A shard index is malformed.
        case invalidIndex
        /// A shard named by an index does not exist.
        case missingShard
        /// A shard does not hold a tensor its index maps to it, or two shards hold the same tensor.
        case shardMismatch
        /// A writer was given something it cannot write.
        case invalidArgument
        /// Not a format NewBie reads (yet).
        case unsupportedFormat
    }

    public let kind: Kind
    /// The file at fault, where there is one.
    public let file: String?
    /// The tensor at fault, where there is one.
    public let tensor: String?
    public let message: String

    public init(_ message: String) {
        self.kind = .other; self.file = nil; self.tensor = nil; self.message = message
    }

    /// Message: `FILE: tensor "NAME": DETAIL` (parts present only when given).
    public init(_ kind: Kind, file: String?, tensor: String? = nil, _ detail: String) {
        self.kind = kind
        self.file = file
        self.tensor = tensor
        var m = ""
        if let file = file { m += "\(file): " }
        if let tensor = tensor { m += "tensor \(JSONWriter.quote(tensor)): " }
        self.message = m + detail
    }

    /// All fields as given (the message is not composed).
    init(kind: Kind, file: String?, tensor: String?, message: String) {
        self.kind = kind; self.file = file; self.tensor = tensor; self.message = message
    }

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
    /// Stored as float8 e4m3fn (safetensors `F8_E4M3`, one byte per value); `dtype` is then
    /// `.f32`, what `SafeTensorsFile.tensor` decodes it to.
    public var storedAsFP8E4M3: Bool = false
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataEnd - dataBegin }
}

/// A read-only memory mapping of a whole file; unmapped when the last tensor borrowing it is gone.
/// Every read is bounded by the size seen when the file was opened; a file shrunk by another
/// process while mapped can still fault (SIGBUS) on access, as with any mmap reader.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeMutableRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw WeightsError(.io, file: path, "cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw WeightsError(.io, file: path, "cannot stat (\(String(cString: strerror(errno))))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw WeightsError(.io, file: path, "not a regular file") }
        size = Int(st.st_size)
        if size == 0 { base = nil; return }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p = p, p != MAP_FAILED else { throw WeightsError(.io, file: path, "cannot map (\(String(cString: strerror(errno))))") }
        base = p
    }

    deinit { if let b = base { munmap(b, size) } }
}

/// The dtypes the safetensors format defines, with their sizes in bits. Only those with a
/// `DType` can be loaded; the others are recognised so that the error says "unsupported", not
/// "unknown".
enum SafeTensorsDTypeTable {
    static let bits: [String: Int] = [
        "BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64, "U64": 64,
        "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64,
        "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
        "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    ]
}

/// One `.safetensors` file, memory-mapped; tensors are zero-copy views of the mapping.
///
/// Format: 8-byte little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data section. Everything in the header is checked when the file is opened, with the
/// rules of the reference implementation (the `safetensors` crate and its format notes):
/// - N <= 100,000,000 and 8 + N <= file size;
/// - the header is UTF-8, starts with `{`, is one JSON object (trailing whitespace padding allowed),
///   with no duplicate keys;
/// - `__metadata__` (optional, may be null) maps strings to strings;
/// - every other entry is an object with a known `dtype`, a `shape` of non-negative integers and
///   `data_offsets` of two non-negative integers, begin <= end (other fields are ignored);
/// - product(shape) x dtype size = end - begin, without overflow (empty and rank-0 tensors are fine);
/// - sorted by offsets, the tensors cover the data section exactly: the first begins at 0, each
///   begins where the previous ends (no overlap, no hole) and the last ends at the end of the file.
///
/// Where the reference crate (safetensors 0.8.0) is more lenient than its own format notes, this
/// reader follows the notes: a header not starting with `{` (e.g. a leading space) and duplicate
/// keys (serde keeps one) are rejected. Nesting is limited to 128 levels, as serde_json does.
/// Valid safetensors dtypes without a NewBie `DType` (F8_*, U16/U32/U64, C64, F4/F6) are reported
/// as unsupported.
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    public let metadata: [String: String]
    public let infos: [String: TensorInfo]
    /// Tensor names in the order of their data in the file.
    public let namesInFileOrder: [String]
    private let file: MappedFile
    /// File offset of the data section (8 + header length).
    public let dataStart: Int

    /// Largest header accepted (the format's own limit is 100 MB).
    public static let maxHeaderBytes = 100_000_000

    public var names: [String] { infos.keys.sorted() }
    /// Size of the whole file in bytes.
    public var fileSize: Int { file.size }

    public convenience init(url: URL) throws { try self.init(path: url.path) }

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        guard file.size >= 8, let base = file.base else {
            throw WeightsError(.truncated, file: path, "truncated safetensors file (\(file.size) bytes; the header length alone needs 8)")
        }
        let n64 = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard n64 <= UInt64(SafeTensorsFile.maxHeaderBytes) else {
            throw WeightsError(.headerTooLarge, file: path, "header length \(n64) is larger than the \(SafeTensorsFile.maxHeaderBytes) bytes safetensors allows (not a safetensors file, or corrupt)")
        }
        let n = Int(n64)
        guard n <= file.size - 8 else {
            throw WeightsError(.truncated, file: path, "header length \(n) runs past the end of the file (\(file.size) bytes; truncated?)")
        }
        dataStart = 8 + n
        let dataSize = file.size - dataStart
        let header = UnsafeRawBufferPointer(start: base + 8, count: n)
        let parsed = try SafeTensorsFile.parseHeader(header, path: path, dataSize: dataSize)
        metadata = parsed.metadata
        namesInFileOrder = parsed.ordered.map(\.name)
        var infos: [String: TensorInfo] = [:]
        infos.reserveCapacity(parsed.ordered.count)
        for info in parsed.ordered { infos[info.name] = info }
        self.infos = infos
    }

    /// Validates a header (the N bytes after the length) against a data section of `dataSize` bytes.
    /// Returns the metadata and the tensors sorted by their offsets.
    static func parseHeader(_ header: UnsafeRawBufferPointer, path: String, dataSize: Int) throws
        -> (metadata: [String: String], ordered: [TensorInfo]) {
        guard let first = header.first, first == UInt8(ascii: "{") else {
            let what = header.isEmpty ? "is empty" : "does not start with '{'"
            throw WeightsError(.invalidHeader, file: path, "header \(what) (not a safetensors file, or corrupt)")
        }
        guard isValidUTF8(header) else {
            throw WeightsError(.invalidHeader, file: path, "header is not valid UTF-8")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(header) } catch let e as JSONSyntaxError {
            throw WeightsError(.invalidHeader, file: path, "header is not valid JSON: \(e.message) at header byte \(e.offset)")
        }
        guard case .object(let entries) = json else {
            throw WeightsError(.invalidHeader, file: path, "header is not a JSON object")
        }
        var meta: [String: String] = [:]
        var infos: [TensorInfo] = []
        infos.reserveCapacity(entries.count)
        for (name, value) in entries {
            if name == "__metadata__" {
                switch value {
                case .null: break
                case .object(let m):
                    for (k, v) in m {
                        guard case .string(let s) = v else {
                            throw WeightsError(.invalidMetadata, file: path, "__metadata__ value for \(JSONWriter.quote(k)) is \(v.kindName), not a string")
                        }
                        meta[k] = s
                    }
                default:
                    throw WeightsError(.invalidMetadata, file: path, "__metadata__ is \(value.kindName), not an object of strings")
                }
                continue
            }
            infos.append(try parseEntry(name: name, value: value, path: path, dataSize: dataSize))
        }
        // The data section must be covered exactly, in offset order (the header's own order is free).
        infos.sort { ($0.dataBegin, $0.dataEnd, $0.name) < ($1.dataBegin, $1.dataEnd, $1.name) }
        var expected = 0
        var previous: TensorInfo? = nil
        for info in infos {
            if info.dataBegin < expected, let p = previous {
                throw WeightsError(.invalidOffsets, file: path, tensor: info.name,
                                   "data_offsets [\(info.dataBegin), \(info.dataEnd)] overlap tensor \(JSONWriter.quote(p.name)) at [\(p.dataBegin), \(p.dataEnd)]")
            }
            if info.dataBegin > expected {
                let after = previous.map { "tensor \(JSONWriter.quote($0.name)) ends at \($0.dataEnd)" } ?? "the data section starts at 0"
                throw WeightsError(.invalidOffsets, file: path, tensor: info.name,
                                   "data_offsets [\(info.dataBegin), \(info.dataEnd)] leave a hole of \(info.dataBegin - expected) bytes (\(after)); safetensors data must be contiguous")
            }
            expected = info.dataEnd
            previous = info
        }
        if expected != dataSize {
            let last = previous.map { "the last tensor, \(JSONWriter.quote($0.name)), ends at \($0.dataEnd)" } ?? "there are no tensors"
            throw WeightsError(.invalidOffsets, file: path,
                               "\(dataSize - expected) bytes at the end of the file belong to no tensor (\(last), the data section holds \(dataSize) bytes)")
        }
        return (meta, infos)
    }

    static func parseEntry(name: String, value: JSONValue, path: String, dataSize: Int) throws -> TensorInfo {
        func bad(_ kind: WeightsError.Kind, _ detail: String) -> WeightsError {
            WeightsError(kind, file: path, tensor: name, detail)
        }
        guard case .object(let fields) = value else { throw bad(.invalidEntry, "entry is \(value.kindName), not an object") }
        func field(_ key: String) -> JSONValue? { fields.first(where: { $0.key == key })?.value }

        guard let dtValue = field("dtype") else { throw bad(.invalidEntry, "missing dtype") }
        guard case .string(let dt) = dtValue else { throw bad(.invalidEntry, "dtype is \(dtValue.kindName), not a string") }
        guard let bits = SafeTensorsDTypeTable.bits[dt] else { throw bad(.unknownDType, "unknown dtype \(JSONWriter.quote(dt))") }
        let fp8 = dt == "F8_E4M3"
        guard let dtype = fp8 ? .f32 : DType(safetensorsName: dt) else {
            throw bad(.unsupportedDType, "dtype \(dt) (\(bits)-bit) is a safetensors dtype NewBie does not support")
        }

        guard let shapeValue = field("shape") else { throw bad(.invalidEntry, "missing shape") }
        guard case .array(let dims) = shapeValue else { throw bad(.invalidEntry, "shape is \(shapeValue.kindName), not an array") }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        var count = 1
        for d in dims {
            guard case .integer(let n) = d, n >= 0 else {
                throw bad(.invalidEntry, "shape \(shapeValue.text) is not a list of non-negative integers")
            }
            shape.append(n)
        }
        for n in shape {
            let (c, overflow) = count.multipliedReportingOverflow(by: n)
            guard !overflow else { throw bad(.shapeOverflow, "shape \(shape) has too many elements (overflow)") }
            count = c
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: fp8 ? 1 : dtype.byteSize)
        guard !overflow else { throw bad(.shapeOverflow, "shape \(shape) of \(dt) needs more bytes than can be counted (overflow)") }

        guard let offValue = field("data_offsets") else { throw bad(.invalidEntry, "missing data_offsets") }
        guard case .array(let offs) = offValue, offs.count == 2,
              case .integer(let begin) = offs[0], case .integer(let end) = offs[1], begin >= 0, end >= 0 else {
            throw bad(.invalidEntry, "data_offsets \(offValue.text) are not two non-negative integers")
        }
        guard end >= begin else { throw bad(.invalidOffsets, "data_offsets [\(begin), \(end)] are reversed") }
        guard end <= dataSize else {
            throw bad(.invalidOffsets, "data_offsets [\(begin), \(end)] run past the end of the data section (\(dataSize) bytes; file truncated?)")
        }
        guard bytes == end - begin else {
            throw bad(.sizeMismatch, "shape \(shape) of \(dt) needs \(bytes) bytes but data_offsets [\(begin), \(end)] hold \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataBegin: begin, dataEnd: end, storedAsFP8E4M3: fp8)
    }

    public func info(_ name: String) -> TensorInfo? { infos[name] }

    /// The tensor's bytes in the mapping (valid while this file is alive).
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        guard let info = infos[name] else {
            throw WeightsError(.tensorNotFound, file: path, tensor: name, "no such tensor in this file")
        }
        return UnsafeRawBufferPointer(start: file.base.map { UnsafeRawPointer($0) + dataStart + info.dataBegin },
                                      count: info.byteCount)
    }

    /// A CPU tensor over the mapped bytes: zero-copy when the data is aligned for its dtype (always,
    /// for files whose header is padded to 8 bytes as every writer does); a copy otherwise.
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = infos[name] else {
            throw WeightsError(.tensorNotFound, file: path, tensor: name, "no such tensor in this file")
        }
        // base is non-nil: the file has at least 8 bytes (checked in init).
        let p = file.base! + dataStart + info.dataBegin
        let n = info.byteCount
        if info.storedAsFP8E4M3 {
            let t = Tensor.empty(info.shape, dtype: .f32)
            FP8E4M3.decode(p, count: info.count, into: t.hostPointer.assumingMemoryBound(to: Float.self))
            return t
        }
        if Int(bitPattern: p) % info.dtype.byteSize == 0 {
            return Tensor.borrowing(host: p, byteCount: n, dtype: info.dtype, shape: info.shape, owner: file)
        }
        let t = Tensor.empty(info.shape, dtype: info.dtype)
        if n > 0 { t.hostPointer.copyMemory(from: p, byteCount: n) }
        return t
    }
}
