import Foundation
import NewBieTensor

/// What `newbie quantize` writes (docs/QUANTIZATION.md, "Quantized files").
public enum QuantizedFileTarget: String, Sendable, CaseIterable {
    case int8, int8g128 = "int8-g128", fp8, q8_0, q6_K = "q6_k", q5_K = "q5_k", q5_0, q4_K = "q4_k", q4_0

    public static var choices: String { allCases.map(\.rawValue).joined(separator: ", ") }

    public var isGGUF: Bool { ggmlType != nil }
    var ggmlType: GGMLType? {
        switch self {
        case .q8_0: return .q8_0
        case .q5_0: return .q5_0
        case .q4_0: return .q4_0
        case .q6_K: return .q6_K
        case .q5_K: return .q5_K
        case .q4_K: return .q4_K
        default: return nil
        }
    }

    public init(parsing s: String) throws {
        if let t = QuantizedFileTarget(rawValue: s.lowercased()) { self = t; return }
        throw WeightsError(.invalidArgument, file: nil, tensor: nil, "--to \(s) is not a quantization NewBie writes; choose one of: \(QuantizedFileTarget.choices)")
    }
}

/// Writes a copy of a checkpoint with its linear weights quantized. A tensor is quantized when it
/// is a 2-D `*.weight` of a float type whose module path (the name without `.weight`) is neither
/// kept in 16 bits by default (`ModuleQuantization.keptByDefault`: embedders, adaLN, final layer,
/// norms) nor matched by a `keep` pattern; everything else is copied as stored. GGUF targets
/// follow city96's ComfyUI-GGUF convert.py: 1-D tensors and tensors of at most 1024 values in
/// F32, a row length that is not whole blocks in F16, kept 2-D tensors in F16 or BF16 as stored.
public struct QuantizedFileWriter {
    public let target: QuantizedFileTarget
    /// Module path patterns (the precision rules' grammar) kept unquantized, besides the defaults.
    public let keep: [String]
    /// `general.architecture` for GGUF output (e.g. "lumina2" for the DiT).
    public let architecture: String

    public struct Report: Sendable {
        public var quantized: [String] = []
        public var kept: [String] = []
        public var bytesWritten = 0
    }

    public init(target: QuantizedFileTarget, keep: [String] = [], architecture: String) {
        self.target = target; self.keep = keep; self.architecture = architecture
    }

    public func shouldQuantize(_ name: String, _ info: TensorInfo) -> Bool {
        guard name.hasSuffix(".weight"), info.shape.count == 2, info.dtype.isFloatingPoint else { return false }
        return !ModuleQuantization.isKeptByDefault(String(name.dropLast(".weight".count))) && !keeps(name)
    }

    /// Whether a `keep` pattern covers the module of the weight `name`.
    public func keeps(_ name: String) -> Bool {
        let module = name.hasSuffix(".weight") ? String(name.dropLast(".weight".count)) : name
        let path = module.split(separator: ".", omittingEmptySubsequences: false)
        return keep.contains { ModulePathPattern.matchDepth(ModulePathPattern.components($0), path) != nil }
    }

    /// The keep patterns that cover no weight this writer would otherwise quantize.
    public func unusedKeepPatterns(_ source: WeightSource) -> [String] {
        let candidates = source.tensorNames.filter { n in
            source.tensorInfo(n).map { QuantizedFileWriter(target: target, architecture: architecture).shouldQuantize(n, $0) } ?? false
        }
        return keep.filter { p in
            let one = QuantizedFileWriter(target: target, keep: [p], architecture: architecture)
            return !candidates.contains { one.keeps($0) }
        }
    }

    /// Reads every tensor of `source` (all checked finite before a byte is written) and writes
    /// `output` atomically.
    public func write(_ source: WeightSource, to output: String) throws -> Report {
        var report = Report()
        let names = source.tensorNames.sorted(by: naturalLess)
        func floats(_ name: String, _ t: Tensor) throws -> [Float] {
            let v = t.to(.f32).contiguous().toFloats()
            if let bad = v.first(where: { !$0.isFinite }) {
                throw WeightsError(.invalidArgument, file: source.sourceDescription, tensor: name, "holds \(bad); only finite weights can be quantized")
            }
            return v
        }
        if let qtype = target.ggmlType {
            var entries: [GGUFWriter.Entry] = []
            for name in names {
                guard let info = source.tensorInfo(name) else { continue }
                let t = try source.loadTensor(name)
                let count = info.count
                let quantize = shouldQuantize(name, info) && count > 1024 && info.shape[1] % qtype.blockSize == 0
                if quantize {
                    let v = try floats(name, t)
                    var bytes = [UInt8](repeating: 0, count: count / qtype.blockSize * qtype.blockBytes)
                    v.withUnsafeBufferPointer { src in
                        bytes.withUnsafeMutableBytes { GGUFQuantize.quantize(qtype, src.baseAddress!, count: count, into: $0.baseAddress!) }
                    }
                    entries.append(.init(name: name, type: qtype, shape: info.shape, data: bytes))
                    report.quantized.append(name)
                    continue
                }
                let small = info.shape.count <= 1 || count <= 1024
                let (type, stored): (GGMLType, Tensor) =
                    small || !(t.dtype == .f16 || t.dtype == .bf16) ? (.f32, t.to(.f32)) : (t.dtype == .f16 ? .f16 : .bf16, t)
                guard t.dtype.isFloatingPoint else {
                    throw WeightsError(.invalidArgument, file: source.sourceDescription, tensor: name, "a \(t.dtype.safetensorsName) tensor has no GGUF float type to be copied as")
                }
                let c = stored.contiguous()
                let bytes = Array(UnsafeRawBufferPointer(start: c.hostPointer, count: c.byteCount))
                entries.append(.init(name: name, type: type, shape: info.shape.isEmpty ? [1] : info.shape, data: bytes))
                report.kept.append(name)
            }
            try GGUFWriter.write(entries, metadata: [("general.architecture", .string(architecture)),
                                                     ("general.quantization_version", .uint32(2)),
                                                     ("newbie.quantized_by", .string("newbie quantize --to \(target.rawValue)"))],
                                 toPath: output)
        } else {
            var tensors: [(String, Tensor)] = []
            var storedAs: [String: String] = [:]
            for name in names {
                guard let info = source.tensorInfo(name) else { continue }
                let t = try source.loadTensor(name)
                guard shouldQuantize(name, info) else { tensors.append((name, t)); report.kept.append(name); continue }
                let v = try floats(name, t)
                switch target {
                case .int8, .int8g128:
                    let q = QuantizedWeight.quantize(Tensor(v, shape: info.shape), scheme: target == .int8 ? .int8 : .int8g128)
                    tensors.append((name, q.q))
                    tensors.append((name + "_scale", target == .int8 ? q.scales.reshape([info.shape[0]]) : q.scales))
                case .fp8:
                    // per tensor, as ComfyUI's scaled fp8: w8 = fp8(w / scale), scale = max|w| / 448
                    var amax: Float = 0
                    for x in v { amax = max(amax, abs(x)) }
                    let scale = amax == 0 ? 1 : amax / FP8E4M3.maxFinite
                    let w8 = Tensor.empty(info.shape, dtype: .u8)
                    let p = w8.hostPointer.assumingMemoryBound(to: UInt8.self)
                    for i in v.indices { p[i] = FP8E4M3.fromFloat(v[i] / scale) }
                    tensors.append((name, w8))
                    storedAs[name] = "F8_E4M3"
                    tensors.append((String(name.dropLast(".weight".count)) + ".scale_weight", Tensor([scale], shape: [])))
                default:
                    preconditionFailure("GGUF target in the safetensors branch")
                }
                report.quantized.append(name)
            }
            if target == .fp8 {
                tensors.append(("scaled_fp8", Tensor.empty([0], dtype: .u8)))
                storedAs["scaled_fp8"] = "F8_E4M3"
            }
            try SafeTensorsWriter.write(tensors, metadata: ["newbie.quantization": target.rawValue,
                                                            "newbie.quantized_by": "newbie quantize --to \(target.rawValue)"],
                                        storedAs: storedAs, toPath: output)
        }
        report.bytesWritten = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        return report
    }
}
