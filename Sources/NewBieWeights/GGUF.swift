import Foundation
import NewBieTensor

/// A metadata value of a GGUF file.
public enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case uint(UInt64)
    case int(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int(let v): return Int(v)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .float(let v): return v
        case .uint(let v): return Double(v)
        case .int(let v): return Double(v)
        default: return nil
        }
    }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var array: [GGUFValue]? { if case .array(let a) = self { return a }; return nil }

    public var description: String {
        switch self {
        case .uint(let v): return "\(v)"
        case .int(let v): return "\(v)"
        case .float(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let s): return "\"\(s)\""
        case .array(let a): return "[\(a.count) values]"
        }
    }
}

/// Where one tensor lies in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: GGMLType
    /// ggml's dimensions, fastest-varying first (`ne`).
    public let ne: [Int]
    /// Row-major (PyTorch) shape: `ne` reversed. A linear weight stored with ne [in, out] is [out, in].
    public var shape: [Int] { ne.reversed() }
    public var count: Int { ne.reduce(1, *) }
    /// Byte range inside the file.
    public let fileBegin: Int
    public let fileEnd: Int
}

/// One `.gguf` file, memory-mapped.
///
/// Layout (little-endian): magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count
/// u64; the metadata key/value pairs; the tensor infos (name, n_dims u32, ne u64[n_dims], type u32,
/// offset u64 relative to the data section); padding to `general.alignment` (default 32); the data.
/// Everything is validated when the file is opened; errors name the file and the tensor at fault.
///
/// As a `WeightSource` it hands out F32, F16 and BF16 tensors as they are stored (zero-copy) and
/// dequantises block formats to Float32 (or to `quantizedOutput`).
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [String: GGUFTensorInfo]
    /// Tensor names in file order.
    public let tensorOrder: [String]
    public let alignment: Int
    public let dataStart: Int
    /// The dtype quantised tensors are dequantised to (f32, or bf16/f16 to halve memory).
    public var quantizedOutput: DType = .f32
    /// Whether linear layers hold this file's block-quantized weights as they are stored (widened
    /// per layer at each call, `quantizedWeight`) rather than dequantised once at load. On by
    /// default: the blocks are what saves device memory. Off gives the widened-at-load layers
    /// (same values; more memory, no per-call widening).
    public var keepsBlocksResident = true
    private let file: MappedFile

    static let maxCount = 1 << 24
    static let maxDims = 4

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var r = Reader(file: file, path: path)
        let magic = try r.bytes(4, what: "magic")
        guard magic == Array("GGUF".utf8) else {
            throw WeightsError("\(path): not a GGUF file (magic \(magic.map { String(format: "%02x", $0) }.joined()), expected \"GGUF\")")
        }
        let v = try r.u32("version")
        if v.byteSwapped == 2 || v.byteSwapped == 3 {
            throw WeightsError("\(path): big-endian GGUF files are not supported")
        }
        guard v == 2 || v == 3 else {
            throw WeightsError("\(path): GGUF version \(v) is not supported (only 2 and 3)")
        }
        version = Int(v)
        let nTensors = try r.u64("tensor count"), nKV = try r.u64("metadata count")
        guard nTensors <= UInt64(GGUFFile.maxCount), nKV <= UInt64(GGUFFile.maxCount) else {
            throw WeightsError("\(path): implausible header (\(nTensors) tensors, \(nKV) metadata entries)")
        }
        var meta: [String: GGUFValue] = [:], keys: [String] = []
        for _ in 0..<Int(nKV) {
            let key = try r.string("metadata key")
            let type = try r.u32("type of metadata \"\(key)\"")
            let value = try r.value(type: type, key: key, depth: 0)
            guard meta[key] == nil else { throw WeightsError("\(path): metadata key \"\(key)\" appears twice") }
            meta[key] = value
            keys.append(key)
        }
        metadata = meta
        metadataKeys = keys

        var align = 32
        if let a = meta["general.alignment"] {
            guard let n = a.int, n > 0, n & (n - 1) == 0 else {
                throw WeightsError("\(path): general.alignment \(a) is not a power of two")
            }
            align = n
        }
        alignment = align

        struct Raw { let name: String; let type: GGMLType; let ne: [Int]; let offset: Int }
        var raws: [Raw] = []
        var seen = Set<String>()
        for _ in 0..<Int(nTensors) {
            let name = try r.string("tensor name")
            guard seen.insert(name).inserted else { throw WeightsError("\(path): tensor \"\(name)\" appears twice") }
            let nd = try r.u32("dimension count of tensor \"\(name)\"")
            guard nd >= 1 && nd <= UInt32(GGUFFile.maxDims) else {
                throw WeightsError("\(path): tensor \"\(name)\" has \(nd) dimensions (1 to \(GGUFFile.maxDims) allowed)")
            }
            var ne: [Int] = []
            var count = 1
            for _ in 0..<Int(nd) {
                let d = try r.u64("dimensions of tensor \"\(name)\"")
                guard d <= UInt64(Int32.max) else { throw WeightsError("\(path): tensor \"\(name)\" has a dimension of \(d)") }
                let (c, o) = count.multipliedReportingOverflow(by: Int(d))
                guard !o, c <= 1 << 40 else { throw WeightsError("\(path): tensor \"\(name)\" is too large") }
                count = c
                ne.append(Int(d))
            }
            let typeID = try r.u32("type of tensor \"\(name)\"")
            guard let type = GGMLType.byId(typeID) else {
                throw WeightsError("\(path): tensor \"\(name)\" has unknown GGML type \(typeID)")
            }
            guard ne[0] % type.blockSize == 0 else {
                throw WeightsError("\(path): tensor \"\(name)\": first dimension \(ne[0]) is not a multiple of the \(type.name) block size \(type.blockSize)")
            }
            let off = try r.u64("offset of tensor \"\(name)\"")
            guard off <= UInt64(Int.max / 2) else { throw WeightsError("\(path): tensor \"\(name)\" has offset \(off)") }
            guard Int(off) % align == 0 else {
                throw WeightsError("\(path): tensor \"\(name)\": offset \(off) is not a multiple of the alignment \(align)")
            }
            raws.append(Raw(name: name, type: type, ne: ne, offset: Int(off)))
        }
        let start = (r.pos + align - 1) / align * align
        dataStart = start
        var infos: [String: GGUFTensorInfo] = [:]
        for raw in raws {
            let bytes = raw.ne.reduce(1, *) / raw.type.blockSize * raw.type.blockBytes
            let begin = start + raw.offset, end = begin + bytes
            guard end <= file.size else {
                throw WeightsError("\(path): tensor \"\(raw.name)\" (\(raw.type.name), ne \(raw.ne)) needs bytes \(begin)..<\(end) but the file has \(file.size) (truncated?)")
            }
            infos[raw.name] = GGUFTensorInfo(name: raw.name, type: raw.type, ne: raw.ne, fileBegin: begin, fileEnd: end)
        }
        let sorted = infos.values.sorted { ($0.fileBegin, $0.fileEnd) < ($1.fileBegin, $1.fileEnd) }
        for i in sorted.indices.dropFirst() where sorted[i].fileBegin < sorted[i - 1].fileEnd {
            throw WeightsError("\(path): tensor \"\(sorted[i].name)\" overlaps \"\(sorted[i - 1].name)\"")
        }
        tensors = infos
        tensorOrder = raws.map(\.name)
    }

    public convenience init(url: URL) throws { try self.init(path: url.path) }

    // MARK: metadata helpers

    /// The architecture (`general.architecture`), e.g. "gemma3".
    public var architecture: String? { metadata["general.architecture"]?.string }

    /// A metadata value that must be present, with a clear error otherwise.
    public func required(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw WeightsError("\(path): metadata \"\(key)\" is missing") }
        return v
    }
    public func requiredInt(_ key: String) throws -> Int {
        guard let v = try required(key).int else { throw WeightsError("\(path): metadata \"\(key)\" is not an integer") }
        return v
    }
    public func stringArray(_ key: String) throws -> [String] {
        guard let a = try required(key).array else { throw WeightsError("\(path): metadata \"\(key)\" is not an array") }
        return try a.map { v in
            guard let s = v.string else { throw WeightsError("\(path): metadata \"\(key)\" holds a non-string") }
            return s
        }
    }
    public func numberArray(_ key: String) throws -> [Double] {
        guard let a = try required(key).array else { throw WeightsError("\(path): metadata \"\(key)\" is not an array") }
        return try a.map { v in
            guard let d = v.double else { throw WeightsError("\(path): metadata \"\(key)\" holds a non-number") }
            return d
        }
    }

    // MARK: tensors

    /// The tensor with the dtype it is stored in (F32/F16/BF16, zero-copy) or dequantised.
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = tensors[name] else { throw WeightsError("\(path): no tensor named \"\(name)\"") }
        let p = file.base! + info.fileBegin
        switch info.type.id {
        case GGMLType.f32.id:
            return Tensor.borrowing(host: p, byteCount: info.count * 4, dtype: .f32, shape: info.shape, owner: file)
        case GGMLType.f16.id:
            return Tensor.borrowing(host: p, byteCount: info.count * 2, dtype: .f16, shape: info.shape, owner: file)
        case GGMLType.bf16.id:
            return Tensor.borrowing(host: p, byteCount: info.count * 2, dtype: .bf16, shape: info.shape, owner: file)
        default:
            guard info.type.isDequantizable else {
                throw WeightsError("\(path): tensor \"\(name)\" is stored as \(info.type.name), which this reader cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K)")
            }
            let out = Tensor.empty(info.shape, dtype: .f32)
            try GGUFQuant.dequantize(info.type, UnsafeRawPointer(p), count: info.count,
                                     into: out.hostPointer.assumingMemoryBound(to: Float.self))
            return quantizedOutput == .f32 ? out : out.to(quantizedOutput)
        }
    }

    /// Rows `rows` of a 2-D tensor (e.g. an embedding table), dequantised to Float32 without
    /// touching the other rows. Result [rows.count, ne[0]].
    public func rows(_ name: String, _ rows: [Int]) throws -> Tensor {
        guard let info = tensors[name] else { throw WeightsError("\(path): no tensor named \"\(name)\"") }
        guard info.ne.count == 2 else { throw WeightsError("\(path): tensor \"\(name)\" is not 2-D (ne \(info.ne))") }
        guard info.type.isDequantizable else {
            throw WeightsError("\(path): tensor \"\(name)\" is stored as \(info.type.name), which this reader cannot dequantize")
        }
        let width = info.ne[0], n = info.ne[1]
        let rowBytes = width / info.type.blockSize * info.type.blockBytes
        let out = Tensor.empty([rows.count, width], dtype: .f32)
        let o = out.hostPointer.assumingMemoryBound(to: Float.self)
        for (i, r) in rows.enumerated() {
            guard r >= 0 && r < n else { throw WeightsError("\(path): row \(r) is outside tensor \"\(name)\" (\(n) rows)") }
            GGUFQuant.dequantizeBlocks(info.type, UnsafeRawPointer(file.base! + info.fileBegin + r * rowBytes),
                                       blocks: width / info.type.blockSize, into: o + i * width)
        }
        return out
    }

    // MARK: - parsing

    struct Reader {
        let file: MappedFile
        let path: String
        var pos = 0

        mutating func need(_ n: Int, _ what: String) throws -> UnsafeRawPointer {
            guard n >= 0, n <= file.size - pos, let base = file.base else {
                throw WeightsError("\(path): file ends inside \(what) (offset \(pos), \(file.size) bytes)")
            }
            defer { pos += n }
            return UnsafeRawPointer(base + pos)
        }
        mutating func bytes(_ n: Int, what: String) throws -> [UInt8] {
            let p = try need(n, what)
            return Array(UnsafeRawBufferPointer(start: p, count: n))
        }
        mutating func u8(_ w: String) throws -> UInt8 { try need(1, w).load(as: UInt8.self) }
        mutating func u16(_ w: String) throws -> UInt16 { UInt16(littleEndian: try need(2, w).loadUnaligned(as: UInt16.self)) }
        mutating func u32(_ w: String) throws -> UInt32 { UInt32(littleEndian: try need(4, w).loadUnaligned(as: UInt32.self)) }
        mutating func u64(_ w: String) throws -> UInt64 { UInt64(littleEndian: try need(8, w).loadUnaligned(as: UInt64.self)) }

        mutating func string(_ what: String) throws -> String {
            let n = try u64("length of \(what)")
            guard n <= UInt64(file.size - pos) else {
                throw WeightsError("\(path): file ends inside \(what) at offset \(pos) (it claims \(n) bytes, the file has \(file.size))")
            }
            let p = try need(Int(n), what)
            let buf = UnsafeRawBufferPointer(start: p, count: Int(n))
            guard let s = String(validating: buf, as: UTF8.self) else {
                throw WeightsError("\(path): \(what) at offset \(pos - Int(n)) is not valid UTF-8")
            }
            return s
        }

        mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
            let w = "value of metadata \"\(key)\""
            switch type {
            case 0: return .uint(UInt64(try u8(w)))
            case 1: return .int(Int64(Int8(bitPattern: try u8(w))))
            case 2: return .uint(UInt64(try u16(w)))
            case 3: return .int(Int64(Int16(bitPattern: try u16(w))))
            case 4: return .uint(UInt64(try u32(w)))
            case 5: return .int(Int64(Int32(bitPattern: try u32(w))))
            case 6: return .float(Double(Float(bitPattern: try u32(w))))
            case 7:
                let b = try u8(w)
                guard b <= 1 else { throw WeightsError("\(path): metadata \"\(key)\": bool value \(b)") }
                return .bool(b == 1)
            case 8: return .string(try string(w))
            case 9:
                guard depth < 4 else { throw WeightsError("\(path): metadata \"\(key)\": arrays nested too deep") }
                let et = try u32("element type of metadata \"\(key)\"")
                let n = try u64("length of metadata \"\(key)\"")
                // every element takes at least one byte
                guard n <= UInt64(file.size - pos) else {
                    throw WeightsError("\(path): metadata \"\(key)\" claims \(n) elements, more than the file holds")
                }
                var a: [GGUFValue] = []
                a.reserveCapacity(Int(n))
                for _ in 0..<Int(n) { a.append(try value(type: et, key: key, depth: depth + 1)) }
                return .array(a)
            case 10: return .uint(try u64(w))
            case 11: return .int(Int64(bitPattern: try u64(w)))
            case 12: return .float(Double(bitPattern: try u64(w)))
            default: throw WeightsError("\(path): metadata \"\(key)\" has unknown value type \(type)")
            }
        }
    }
}

extension GGUFFile: WeightSource {
    public var sourceDescription: String { path }
    public var tensorNames: [String] { tensorOrder }
    public func tensorInfo(_ name: String) -> TensorInfo? {
        guard let t = tensors[name] else { return nil }
        let dtype: DType
        switch t.type.id {
        case GGMLType.f16.id: dtype = .f16
        case GGMLType.bf16.id: dtype = .bf16
        case GGMLType.f32.id: dtype = .f32
        default: dtype = quantizedOutput
        }
        return TensorInfo(name: name, dtype: dtype, shape: t.shape, dataBegin: t.fileBegin - dataStart, dataEnd: t.fileEnd - dataStart)
    }
    public func loadTensor(_ name: String) throws -> Tensor { try tensor(name) }

    /// A 2-D tensor of a block format as its raw blocks (zero-copy from the mapped file), for a
    /// linear layer to hold resident; nil for plain types, other shapes, or when
    /// `keepsBlocksResident` is off.
    public func quantizedWeight(_ name: String) throws -> QuantizedWeight? {
        guard keepsBlocksResident, let info = tensors[name], let format = info.type.blockFormat, info.ne.count == 2 else { return nil }
        let cols = info.ne[0], rows = info.ne[1]
        let rowBytes = format.rowBytes(cols)
        let blocks = Tensor.borrowing(host: file.base! + info.fileBegin, byteCount: rows * rowBytes, dtype: .u8,
                                      shape: [rows, rowBytes], owner: file)
        return QuantizedWeight(blocks: blocks, format: format, shape: [rows, cols])
    }
}
