import Foundation
import NewBieTensor

/// Several `.safetensors` files read as one checkpoint: either through a Hugging Face index
/// (`*.safetensors.index.json`: `{"metadata": {...}, "weight_map": {"tensor": "shard file"}}`) or,
/// without an index, as the union of the shards (each tensor must then live in exactly one shard).
///
/// Opening checks that every shard the index names exists, is a valid safetensors file (all of
/// `SafeTensorsFile`'s checks), and holds every tensor the index maps to it; errors name the index,
/// the shard and the tensor. Tensors a shard holds but the index does not list are not exposed
/// (the index is the table of contents, as in `transformers`); `unlistedTensorCount` counts them.
public final class ShardedSafeTensors: @unchecked Sendable {
    /// The index file, or nil for shards opened without one.
    public let indexPath: String?
    /// The shards, in index order of first appearance (or the order given).
    public let shards: [SafeTensorsFile]
    /// The index's `metadata` (non-string values, such as `total_size`, rendered as JSON text),
    /// or, without an index, nothing.
    public let metadata: [String: String]
    /// Tensors present in shards but not listed in the index.
    public let unlistedTensorCount: Int
    private let shardOfTensor: [String: Int]
    private let description_: String

    /// Largest index file accepted.
    public static let maxIndexBytes = 100_000_000

    /// Opens a `*.safetensors.index.json`; shard paths are relative to its folder.
    public init(indexPath: String) throws {
        self.indexPath = indexPath
        description_ = indexPath
        let folder = URL(fileURLWithPath: indexPath).deletingLastPathComponent()
        let bytes = try ShardedSafeTensors.readSmallFile(indexPath)
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch let e as JSONSyntaxError {
            throw WeightsError(.invalidIndex, file: indexPath, "index is not valid JSON: \(e.message) at byte \(e.offset)")
        }
        guard case .object(let top) = json else { throw WeightsError(.invalidIndex, file: indexPath, "index is not a JSON object") }
        var meta: [String: String] = [:]
        var weightMap: [(key: String, value: JSONValue)]? = nil
        for (k, v) in top {
            if k == "weight_map" {
                guard case .object(let m) = v else {
                    throw WeightsError(.invalidIndex, file: indexPath, "weight_map is \(v.kindName), not an object")
                }
                weightMap = m
            } else if k == "metadata" {
                switch v {
                case .null: break
                case .object(let m):
                    for (mk, mv) in m {
                        if case .string(let s) = mv { meta[mk] = s } else { meta[mk] = mv.text }
                    }
                default: throw WeightsError(.invalidIndex, file: indexPath, "metadata is \(v.kindName), not an object")
                }
            }
        }
        guard let map = weightMap else { throw WeightsError(.invalidIndex, file: indexPath, "index has no weight_map") }

        // Shard file names, in order of first appearance, with the tensors mapped to each.
        var shardNames: [String] = []
        var shardIndex: [String: Int] = [:]
        var tensorsOfShard: [[String]] = []
        for (tensor, v) in map {
            guard case .string(let file) = v else {
                throw WeightsError(.invalidIndex, file: indexPath, tensor: tensor, "weight_map value is \(v.kindName), not a shard file name")
            }
            try ShardedSafeTensors.checkShardName(file, tensor: tensor, indexPath: indexPath)
            if shardIndex[file] == nil {
                shardIndex[file] = shardNames.count
                shardNames.append(file)
                tensorsOfShard.append([])
            }
            tensorsOfShard[shardIndex[file]!].append(tensor)
        }

        var shards: [SafeTensorsFile] = []
        var owner: [String: Int] = [:]
        var unlisted = 0
        for (i, name) in shardNames.enumerated() {
            let shardPath = folder.appendingPathComponent(name).path
            let claimed = tensorsOfShard[i]
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: shardPath, isDirectory: &isDir), !isDir.boolValue else {
                let others = claimed.count > 1 ? " and \(claimed.count - 1) other tensors" : ""
                throw WeightsError(.missingShard, file: shardPath, tensor: claimed[0],
                                   "shard is missing (the index \(indexPath) maps this tensor\(others) to it)")
            }
            let shard = try SafeTensorsFile(path: shardPath)
            for t in claimed {
                guard shard.info(t) != nil else {
                    throw WeightsError(.shardMismatch, file: shardPath, tensor: t,
                                       "the index \(indexPath) maps this tensor to this shard, which does not hold it")
                }
                owner[t] = i
            }
            unlisted += shard.infos.count - claimed.count
            shards.append(shard)
        }
        self.shards = shards
        self.metadata = meta
        self.shardOfTensor = owner
        self.unlistedTensorCount = unlisted
    }

    /// Opens shards without an index: the checkpoint is their union; a tensor found in two shards
    /// is an error naming both.
    public init(shardPaths: [String], description: String? = nil) throws {
        guard !shardPaths.isEmpty else { throw WeightsError(.invalidArgument, file: description, "no shards given") }
        indexPath = nil
        description_ = description ?? shardPaths.joined(separator: ", ")
        var shards: [SafeTensorsFile] = []
        var owner: [String: Int] = [:]
        for (i, p) in shardPaths.enumerated() {
            let shard = try SafeTensorsFile(path: p)
            for t in shard.namesInFileOrder {
                if let j = owner[t] {
                    throw WeightsError(.shardMismatch, file: p, tensor: t,
                                       "also held by \(shards[j].path); without an index a tensor must live in one shard only")
                }
                owner[t] = i
            }
            shards.append(shard)
        }
        self.shards = shards
        self.metadata = [:]
        self.shardOfTensor = owner
        self.unlistedTensorCount = 0
    }

    /// The shard holding a tensor.
    public func shard(of name: String) -> SafeTensorsFile? { shardOfTensor[name].map { shards[$0] } }

    /// Shard file names must stay inside the index's folder.
    static func checkShardName(_ file: String, tensor: String, indexPath: String) throws {
        let parts = file.split(separator: "/", omittingEmptySubsequences: false)
        guard !file.isEmpty, !file.hasPrefix("/"), !file.contains("\\"), !file.contains("\0"),
              !parts.contains(where: { $0 == ".." || $0.isEmpty }) else {
            throw WeightsError(.invalidIndex, file: indexPath, tensor: tensor,
                               "shard name \(JSONWriter.quote(file)) is not a file name inside the index's folder")
        }
    }

    static func readSmallFile(_ path: String) throws -> [UInt8] {
        let mapped = try MappedFile(path: path)
        guard mapped.size <= maxIndexBytes else {
            throw WeightsError(.invalidIndex, file: path, "index is \(mapped.size) bytes, more than the \(maxIndexBytes) accepted")
        }
        guard let base = mapped.base else { return [] }
        return Array(UnsafeRawBufferPointer(start: base, count: mapped.size))
    }
}

extension ShardedSafeTensors: WeightSource {
    public var sourceDescription: String { description_ }
    public var tensorNames: [String] { shardOfTensor.keys.sorted() }
    public func tensorInfo(_ name: String) -> TensorInfo? { shard(of: name)?.info(name) }
    public func loadTensor(_ name: String) throws -> Tensor {
        guard let s = shard(of: name) else {
            throw WeightsError(.tensorNotFound, file: description_, tensor: name, "no such tensor in this checkpoint")
        }
        return try s.tensor(name)
    }
}

/// Opens weights from a path that is
/// - a `.safetensors` file,
/// - a `*.safetensors.index.json` (sharded checkpoint), or
/// - a folder (e.g. a Hugging Face component folder such as `transformer/`) holding one index, or a
///   single `.safetensors` file, or several shards without an index.
///
/// - a `.gguf` file (recognised by its magic), or a folder holding one `.gguf` and no safetensors.
///
/// Further formats plug in at the marked place.
public func openWeights(path: String) throws -> WeightSource {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw WeightsError(.io, file: path, "no such file or folder")
    }
    if isDir.boolValue { return try openWeightsFolder(path) }
    if path.hasSuffix(".json") { return try ShardedSafeTensors(indexPath: path) }
    // Formats chosen by magic bytes; further formats plug in here.
    let magic = (try? firstBytes(path, 4)) ?? []
    if magic == Array("GGUF".utf8) {
        return try GGUFFile(path: path)
    }
    if path.lowercased().hasSuffix(".gguf") {
        let shown = magic.map { String(format: "%02x", $0) }.joined(separator: " ")
        throw WeightsError(.unsupportedFormat, file: path, "not a GGUF file: it does not start with the GGUF magic (first bytes: \(shown.isEmpty ? "none, the file is shorter than 4 bytes" : shown))")
    }
    return try openSafeTensorsFile(path)
}

/// One safetensors file; an int8 one from `newbie quantize` or a ComfyUI scaled-fp8 one is seen
/// through its scales (`Int8ScaledWeights`, `ComfyFP8Weights`).
private func openSafeTensorsFile(_ path: String) throws -> WeightSource {
    let file = try SafeTensorsFile(path: path)
    if Int8ScaledWeights.applies(to: file) { return try Int8ScaledWeights(file) }
    return ComfyFP8Weights.applies(to: file) ? try ComfyFP8Weights(file) : file
}

private func firstBytes(_ path: String, _ n: Int) throws -> [UInt8] {
    let f = try MappedFile(path: path)
    guard let b = f.base, f.size >= n else { return [] }
    return Array(UnsafeRawBufferPointer(start: b, count: n))
}

private func openWeightsFolder(_ folder: String) throws -> WeightSource {
    let entries: [String]
    do { entries = try FileManager.default.contentsOfDirectory(atPath: folder) } catch {
        throw WeightsError(.io, file: folder, "cannot list the folder (\(error.localizedDescription))")
    }
    let base = URL(fileURLWithPath: folder)
    func isFile(_ name: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: base.appendingPathComponent(name).path, isDirectory: &d) && !d.boolValue
    }
    let indexes = entries.filter { $0.hasSuffix(".safetensors.index.json") && isFile($0) }.sorted()
    if indexes.count == 1 { return try ShardedSafeTensors(indexPath: base.appendingPathComponent(indexes[0]).path) }
    if indexes.count > 1 {
        throw WeightsError(.invalidArgument, file: folder,
                           "the folder holds several shard indexes (\(indexes.joined(separator: ", "))); name the one to use")
    }
    let files = entries.filter { $0.hasSuffix(".safetensors") && !$0.hasPrefix(".") && isFile($0) }
        .sorted(by: naturalLess)
    if files.isEmpty {
        let ggufs = entries.filter { $0.hasSuffix(".gguf") && !$0.hasPrefix(".") && isFile($0) }.sorted()
        if ggufs.count == 1 { return try GGUFFile(path: base.appendingPathComponent(ggufs[0]).path) }
        if ggufs.count > 1 {
            throw WeightsError(.invalidArgument, file: folder, "the folder holds several .gguf files (\(ggufs.joined(separator: ", "))); name the one to use")
        }
        throw WeightsError(.io, file: folder, "the folder holds no .safetensors file, no *.safetensors.index.json and no .gguf file")
    }
    if files.count == 1 { return try openSafeTensorsFile(base.appendingPathComponent(files[0]).path) }
    return try ShardedSafeTensors(shardPaths: files.map { base.appendingPathComponent($0).path }, description: folder)
}

/// Orders strings with digit runs compared by value: `layers.2` < `layers.10`,
/// `model-00002-of-00010` < `model-00010-of-00010`.
public func naturalLess(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    var i = 0, j = 0
    func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
    while i < x.count && j < y.count {
        if isDigit(x[i]) && isDigit(y[j]) {
            var i2 = i, j2 = j
            while i2 < x.count && isDigit(x[i2]) { i2 += 1 }
            while j2 < y.count && isDigit(y[j2]) { j2 += 1 }
            // compare digit runs by value: strip leading zeros, then length, then digits
            var a0 = i, b0 = j
            while a0 < i2 - 1 && x[a0] == 48 { a0 += 1 }
            while b0 < j2 - 1 && y[b0] == 48 { b0 += 1 }
            let la = i2 - a0, lb = j2 - b0
            if la != lb { return la < lb }
            for k in 0..<la where x[a0 + k] != y[b0 + k] { return x[a0 + k] < y[b0 + k] }
            if (i2 - i) != (j2 - j) { return (i2 - i) < (j2 - j) }
            i = i2; j = j2
        } else {
            if x[i] != y[j] { return x[i] < y[j] }
            i += 1; j += 1
        }
    }
    return (x.count - i) < (y.count - j)
}
