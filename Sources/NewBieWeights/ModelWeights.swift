import NewBieTensor

/// One tensor a model expects, under the model's internal name.
public struct TensorSpec: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public init(_ name: String, _ shape: [Int]) { self.name = name; self.shape = shape }
}

/// How to build one internal tensor from a checkpoint's published tensors.
public enum WeightRecipe: Sendable, Equatable {
    /// The published tensor of this name, as is.
    case tensor(String)
    /// Published tensors joined along `axis` (e.g. diffusers' to_q/to_k/to_v into a fused qkv).
    case concat([String], axis: Int)
    /// A published tensor reshaped (e.g. a 1x1 conv weight [o, i, 1, 1] used as a linear [o, i]).
    case reshaped(String, [Int])

    public var sources: [String] {
        switch self {
        case .tensor(let n), .reshaped(let n, _): return [n]
        case .concat(let ns, _): return ns
        }
    }
}

/// A published naming of a model (official, diffusers, ComfyUI, GGUF ...): data that maps each
/// internal tensor name to a recipe over published names. The loader checks every recipe against
/// the checkpoint before any compute.
public struct Naming: Sendable {
    public let name: String
    /// Internal name -> recipe over published names (without any file-level prefix).
    public let recipe: @Sendable (String) -> WeightRecipe
    /// Published names present in checkpoints of this naming that the model does not use.
    public let ignored: @Sendable (String) -> Bool

    public init(name: String, recipe: @escaping @Sendable (String) -> WeightRecipe,
                ignored: @escaping @Sendable (String) -> Bool = { _ in false }) {
        self.name = name; self.recipe = recipe; self.ignored = ignored
    }

    /// The naming whose recipes use the names verbatim.
    public static func identity(ignoring ignored: @escaping @Sendable (String) -> Bool = { _ in false }) -> Naming {
        Naming(name: "internal", recipe: { .tensor($0) }, ignored: ignored)
    }
}

/// A model's weights, checked against its expected tensors and ready to hand out by internal name.
///
/// Construction validates everything at once and throws one `WeightsError` that lists every
/// missing, mis-shaped and unexpected tensor, naming the source file and the naming used.
public final class ModelWeights: @unchecked Sendable {
    public let source: WeightSource
    public let naming: Naming
    /// Prefix stripped from published names (e.g. "model.diffusion_model.").
    public let prefix: String
    public let specs: [String: TensorSpec]

    /// - Parameters:
    ///   - prefixes: candidate file-level prefixes; the first one under which the recipe sources
    ///     of `anchor` exist is used ("" is always tried first).
    public init(source: WeightSource, expected: [TensorSpec], naming: Naming,
                prefixes: [String] = [], anchor: String? = nil) throws {
        self.source = source
        self.naming = naming
        var specs: [String: TensorSpec] = [:]
        for s in expected { specs[s.name] = s }
        self.specs = specs

        let names = Set(source.tensorNames)
        let anchorName = anchor ?? expected.first?.name ?? ""
        let anchorSources = naming.recipe(anchorName).sources
        let candidates = [""] + prefixes
        prefix = candidates.first { p in anchorSources.allSatisfy { names.contains(p + $0) } } ?? ""

        var missing: [String] = [], misshaped: [String] = [], used = Set<String>()
        for spec in expected {
            let r = naming.recipe(spec.name)
            var parts: [[Int]] = []
            var ok = true
            for src in r.sources {
                let full = prefix + src
                used.insert(full)
                guard let info = source.tensorInfo(full) else { missing.append(full); ok = false; continue }
                parts.append(info.shape)
            }
            guard ok else { continue }
            let shape: [Int]
            switch r {
            case .tensor: shape = parts[0]
            case .reshaped(_, let s): shape = parts[0].reduce(1, *) == s.reduce(1, *) ? s : parts[0]
            case .concat(_, let axis):
                var s = parts[0]
                let same = parts.allSatisfy { $0.count == s.count && $0.enumerated().allSatisfy { $0.offset == axis || $0.element == s[$0.offset] } }
                s[axis] = parts.map { $0[axis] }.reduce(0, +)
                shape = same ? s : parts.flatMap { $0 }
            }
            if shape != spec.shape {
                let what = r.sources.map { prefix + $0 }.joined(separator: " + ")
                misshaped.append("\(what): shape \(parts.map { "\($0)" }.joined(separator: " + ")), expected \(spec.shape) for \(spec.name)")
            }
        }
        let unexpected = names.filter { n in
            !used.contains(n) && !(n.hasPrefix(prefix) && naming.ignored(String(n.dropFirst(prefix.count))))
        }.sorted()
        if !missing.isEmpty || !misshaped.isEmpty || !unexpected.isEmpty {
            var lines = ["\(source.sourceDescription): does not match the expected \(naming.name) naming" + (prefix.isEmpty ? "" : " (prefix \"\(prefix)\")") + ":"]
            func add(_ title: String, _ items: [String]) {
                guard !items.isEmpty else { return }
                lines.append("  \(title) (\(items.count)):")
                for i in items.prefix(20) { lines.append("    \(i)") }
                if items.count > 20 { lines.append("    ... and \(items.count - 20) more") }
            }
            add("missing", missing.sorted())
            add("wrong shape", misshaped)
            add("unexpected", unexpected)
            throw WeightsError(lines.joined(separator: "\n"))
        }
    }

    /// The tensor for an internal name, built by the naming's recipe (CPU, checkpoint dtype).
    public func tensor(_ internalName: String) throws -> Tensor {
        guard specs[internalName] != nil else {
            throw WeightsError("\(source.sourceDescription): the model asked for \"\(internalName)\", which is not among its expected tensors")
        }
        switch naming.recipe(internalName) {
        case .tensor(let n): return try source.loadTensor(prefix + n)
        case .reshaped(let n, let s): return try source.loadTensor(prefix + n).reshape(s)
        case .concat(let ns, let axis): return Tensor.concat(try ns.map { try source.loadTensor(prefix + $0) }, axis: axis)
        }
    }

    /// The int8 values and scales of an internal tensor stored quantized ahead of time (a
    /// published tensor used as is), or nil.
    public func quantizedWeight(_ internalName: String) throws -> QuantizedWeight? {
        guard specs[internalName] != nil, case .tensor(let n) = naming.recipe(internalName) else { return nil }
        return try source.quantizedWeight(prefix + n)
    }

    public func scope(_ path: String) -> ScopedWeights { ScopedWeights(weights: self, path: path) }
}

/// Weights under a dotted path (`weights.scope("layers.3").tensor("attention.qkv.weight")`).
public struct ScopedWeights: Sendable {
    public let weights: ModelWeights
    public let path: String

    public func scope(_ sub: String) -> ScopedWeights {
        ScopedWeights(weights: weights, path: path.isEmpty ? sub : "\(path).\(sub)")
    }

    public func tensor(_ name: String) throws -> Tensor {
        try weights.tensor(path.isEmpty ? name : "\(path).\(name)")
    }

    /// The tensor, or nil when the model does not expect it (optional biases, affine-free norms).
    public func optional(_ name: String) throws -> Tensor? {
        let full = path.isEmpty ? name : "\(path).\(name)"
        return weights.specs[full] == nil ? nil : try weights.tensor(full)
    }
}
