import Foundation
import NewBieTensor

/// What a checkpoint holds, as `newbie inspect` prints it: format, files, counts, dtypes, and one
/// row per tensor. Built from any `WeightSource`; model detection (which model and config a
/// checkpoint is) is a separate later step that can take this summary as its input.
public struct WeightsSummary: Codable, Equatable, Sendable {
    public struct Entry: Codable, Equatable, Sendable {
        public let name: String
        /// The storage type: a safetensors dtype (`bf16`), or a GGUF type (`q4_k`).
        public let dtype: String
        public let shape: [Int]
        public let parameters: Int
        public let bytes: Int
        /// The shard file (last path component) for sharded checkpoints.
        public let file: String?
        /// How a quantized tensor is stored: block or group size and scale layout (nil: plain).
        public var quantization: String? = nil
    }

    public struct DTypeCount: Codable, Equatable, Sendable {
        public let dtype: String
        public let tensors: Int
        public let parameters: Int
        public let bytes: Int
    }

    /// The path given.
    public let path: String
    /// `safetensors`, `safetensors-sharded` or `gguf`.
    public let format: String
    /// The files read (the single file, or the index followed by the shards).
    public let files: [String]
    /// File-level metadata (`__metadata__`, the index's `metadata`, or GGUF key/values with arrays
    /// shown as their length).
    public let metadata: [String: String]
    /// The substring tensors were filtered by, if any; the counts below then cover only the matches.
    public let filter: String?
    public let tensorCount: Int
    public let parameterCount: Int
    public let totalBytes: Int
    /// Per dtype, sorted by bytes (largest first).
    public let dtypes: [DTypeCount]
    /// Sorted by name, with digit runs compared by value (`layers.2` before `layers.10`).
    public let tensors: [Entry]
    /// Totals over the quantized tensors (`Entry.quantization` set); 0 when none.
    public var quantizedTensors = 0, quantizedParameters = 0, quantizedBytes = 0

    public init(path: String, source: WeightSource, filter: String? = nil) {
        self.path = path
        self.filter = filter
        var shardOf: (String) -> String? = { _ in nil }
        var storageType: (String, TensorInfo) -> String = { $1.dtype.rawValue }
        var quantization: (String, TensorInfo) -> String? = { _, _ in nil }
        var source = source
        if let fp8 = source as? ComfyFP8Weights {
            source = fp8.file
            storageType = { $1.storedAsFP8E4M3 ? "f8_e4m3" : $1.dtype.rawValue }
            quantization = { n, info in
                guard info.storedAsFP8E4M3 else { return nil }
                guard let scaleName = ComfyFP8Weights.scaleName(n), let s = fp8.file.info(scaleName) else { return "fp8 e4m3, no scale" }
                return s.count == 1 ? "fp8 e4m3, one fp32 scale per tensor (\(scaleName))" : "fp8 e4m3, one scale per row \(s.shape) (\(scaleName))"
            }
        } else if let int8 = source as? Int8ScaledWeights {
            source = int8.file
            quantization = { n, info in
                guard info.dtype == .i8, let s = int8.file.info(n + Int8ScaledWeights.suffix) else { return nil }
                if s.shape.count == 1 { return "int8, one fp32 scale per row \(s.shape) (\(n + Int8ScaledWeights.suffix))" }
                let width = s.shape[1] == 1 ? info.shape[1] : 128
                return "int8, one fp32 scale per \(width) inputs of each row \(s.shape) (\(n + Int8ScaledWeights.suffix))"
            }
        }
        if let sharded = source as? ShardedSafeTensors {
            format = "safetensors-sharded"
            files = (sharded.indexPath.map { [$0] } ?? []) + sharded.shards.map(\.path)
            metadata = sharded.metadata
            shardOf = { sharded.shard(of: $0).map { URL(fileURLWithPath: $0.path).lastPathComponent } }
        } else if let single = source as? SafeTensorsFile {
            format = "safetensors"
            files = [single.path]
            metadata = single.metadata
        } else if let gguf = source as? GGUFFile {
            format = "gguf"
            files = [gguf.path]
            metadata = gguf.metadata.mapValues { $0.string ?? $0.description }
            storageType = { gguf.tensors[$0]?.type.name.lowercased() ?? $1.dtype.rawValue }
            quantization = { n, _ in gguf.tensors[n].flatMap { WeightsSummary.ggmlLayout($0.type) } }
        } else {
            format = String(describing: type(of: source))
            files = [source.sourceDescription]
            metadata = [:]
        }
        var names = source.tensorNames
        if let f = filter, !f.isEmpty { names = names.filter { $0.contains(f) } }
        names.sort(by: naturalLess)
        var entries: [Entry] = []
        var byType: [String: (Int, Int, Int)] = [:]
        var params = 0, bytes = 0
        var qCounts = (0, 0, 0)
        for n in names {
            guard let info = source.tensorInfo(n) else { continue }
            // Bytes as stored (for block-quantised GGUF tensors, less than count x dtype size).
            let e = Entry(name: n, dtype: storageType(n, info), shape: info.shape, parameters: info.count,
                          bytes: info.byteCount, file: shardOf(n), quantization: quantization(n, info))
            if e.quantization != nil { qCounts.0 += 1; qCounts.1 += e.parameters; qCounts.2 += e.bytes }
            entries.append(e)
            params += e.parameters
            bytes += e.bytes
            let c = byType[e.dtype, default: (0, 0, 0)]
            byType[e.dtype] = (c.0 + 1, c.1 + e.parameters, c.2 + e.bytes)
        }
        tensors = entries
        (quantizedTensors, quantizedParameters, quantizedBytes) = qCounts
        tensorCount = entries.count
        parameterCount = params
        totalBytes = bytes
        dtypes = byType.map { DTypeCount(dtype: $0.key, tensors: $0.value.0, parameters: $0.value.1, bytes: $0.value.2) }
            .sorted { ($0.bytes, $1.dtype) > ($1.bytes, $0.dtype) }
    }

    /// The block layout of a quantized GGML type (nil for plain F32/F16/BF16 and integers).
    static func ggmlLayout(_ t: GGMLType) -> String? {
        switch t.id {
        case GGMLType.f32.id, GGMLType.f16.id, GGMLType.bf16.id, 24, 25, 26, 27, 28: return nil
        case GGMLType.q8_0.id, GGMLType.q4_0.id, GGMLType.q5_0.id: return "blocks of 32, one fp16 scale each"
        case GGMLType.q4_K.id, GGMLType.q5_K.id:
            return "super-blocks of 256: fp16 scale and min, 6-bit scale and min per 32"
        case GGMLType.q6_K.id: return "super-blocks of 256: fp16 scale, 8-bit scale per 16"
        default: return "GGML blocks of \(t.blockSize) values in \(t.blockBytes) bytes"
        }
    }

    /// The summary as pretty-printed JSON with sorted keys.
    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try enc.encode(self), as: UTF8.self)
    }

    /// Plain-text report: a header block, the dtype histogram, then a table of tensors.
    public func text() -> String {
        var out: [String] = []
        out.append("path:        \(path)")
        let formatLine: String
        if format == "safetensors-sharded" {
            let shardCount = files.count - (files.first?.hasSuffix(".json") == true ? 1 : 0)
            let how = files.first?.hasSuffix(".json") == true ? "with index \(files[0])" : "without index"
            formatLine = "safetensors, sharded (\(shardCount) files, \(how))"
        } else if format == "safetensors" {
            formatLine = "safetensors, single file"
        } else if format == "gguf" {
            formatLine = "GGUF" + (metadata["general.architecture"].map { " (architecture \($0))" } ?? "")
        } else {
            formatLine = format
        }
        out.append("format:      \(formatLine)")
        if let f = filter { out.append("filter:      \"\(f)\" (counts below cover matching tensors only)") }
        out.append("tensors:     \(tensorCount)")
        out.append("parameters:  \(Self.grouped(parameterCount))" + (parameterCount >= 1000 ? " (\(Self.short(Double(parameterCount), unit: "")))" : ""))
        out.append("bytes:       \(Self.grouped(totalBytes)) (\(Self.short(Double(totalBytes), unit: "B")))")
        if quantizedTensors > 0 {
            out.append("quantized:   \(quantizedTensors) tensors, \(Self.grouped(quantizedParameters)) parameters in \(Self.short(Double(quantizedBytes), unit: "B")) (scales of int8/fp8 files not counted)")
        }
        for (i, d) in dtypes.enumerated() {
            let label = i == 0 ? "dtypes:      " : "             "
            let typeWidth = max(5, dtypes.map(\.dtype.count).max() ?? 0)
            out.append(label + "\(d.dtype.padding(toLength: typeWidth, withPad: " ", startingAt: 0)) \(d.tensors) tensor\(d.tensors == 1 ? "" : "s"), \(Self.grouped(d.parameters)) parameters, \(Self.short(Double(d.bytes), unit: "B"))")
        }
        for (i, k) in metadata.keys.sorted().enumerated() {
            var v = metadata[k]!
            if v.count > 100 { v = String(v.prefix(97)) + "..." }
            v = v.replacingOccurrences(of: "\n", with: "\\n")
            out.append((i == 0 ? "metadata:    " : "             ") + "\(k) = \(v)")
        }
        out.append("")
        let showFile = tensors.contains { $0.file != nil }
        let nameWidth = max(4, tensors.map(\.name.count).max() ?? 0)
        let shapes = tensors.map { "[" + $0.shape.map(String.init).joined(separator: ", ") + "]" }
        let shapeWidth = max(5, shapes.map(\.count).max() ?? 0)
        let typeWidth = max(5, tensors.map(\.dtype.count).max() ?? 0)
        func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
        let showQuant = tensors.contains { $0.quantization != nil }
        var headerRow = pad("name", nameWidth) + "  " + pad("dtype", typeWidth) + "  " + pad("shape", shapeWidth)
        if showFile { headerRow += "  file" }
        if showQuant { headerRow += "  quantization" }
        out.append(headerRow.trimmingTrailingSpaces())
        for (t, shape) in zip(tensors, shapes) {
            var row = pad(t.name, nameWidth) + "  " + pad(t.dtype, typeWidth) + "  " + pad(shape, shapeWidth)
            if showFile { row += "  " + (t.file ?? "") }
            if showQuant { row += "  " + (t.quantization ?? "") }
            out.append(row.trimmingTrailingSpaces())
        }
        return out.joined(separator: "\n") + "\n"
    }

    /// 1234567 -> "1,234,567".
    static func grouped(_ n: Int) -> String {
        let s = String(n.magnitude)
        var out = ""
        for (i, c) in s.enumerated() {
            if i > 0 && (s.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (n < 0 ? "-" : "") + out
    }

    /// 3.51e9 -> "3.51 G" (decimal prefixes).
    static func short(_ v: Double, unit: String) -> String {
        let prefixes = ["", "K", "M", "G", "T", "P"]
        var x = v, i = 0
        while x >= 1000 && i < prefixes.count - 1 { x /= 1000; i += 1 }
        let num = i == 0 ? String(Int(x)) : String(format: "%.2f", x)
        let sep = (prefixes[i].isEmpty && unit.isEmpty) ? "" : " "
        return num + sep + prefixes[i] + unit
    }
}

private extension String {
    func trimmingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
