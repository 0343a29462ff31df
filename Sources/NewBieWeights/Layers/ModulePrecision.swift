import NewBieTensor

/// One precision override: every module whose path matches `pattern` (and everything inside it)
/// computes in `dtype`. Patterns are dotted module paths inside one model ("layers.*.attention",
/// "decoder.conv_out"); `*` stands for any text inside one path component; "" is the whole model.
public struct PrecisionRule: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    public let dtype: DType
    public init(pattern: String, dtype: DType) { self.pattern = pattern; self.dtype = dtype }
    public var description: String { (pattern.isEmpty ? "*" : pattern) + "=" + dtype.userName }

    var components: [Substring] { ModulePathPattern.components(pattern) }
    func matchDepth(_ path: [Substring]) -> Int? { ModulePathPattern.matchDepth(components, path) }
}

/// The pattern grammar of the per-module rules (precision and quantization): dotted module paths,
/// `*` for any text inside one component, "" for the whole model.
enum ModulePathPattern {
    static func components(_ pattern: String) -> [Substring] {
        pattern.isEmpty ? [] : pattern.split(separator: ".", omittingEmptySubsequences: false)
    }

    /// How deep a match the module at `path` (or one of its ancestors) makes, or nil when none matches.
    static func matchDepth(_ pattern: [Substring], _ path: [Substring]) -> Int? {
        guard pattern.count <= path.count else { return nil }
        for (a, b) in zip(pattern, path) where !globMatch(a, b) { return nil }
        return pattern.count
    }
}

/// The compute dtype of every module of one model: a base dtype and ordered overrides. A module
/// takes the dtype of the most specific rule that covers it (the rule naming the deepest of its
/// ancestors or itself; among equally deep rules, the later one), else the base.
public struct ModulePrecision: Sendable, Equatable, CustomStringConvertible {
    public var base: DType
    public var rules: [PrecisionRule]
    /// Which linear layers hold int8 weights (`--quantize`); their compute dtype stays the one above.
    public var quantization: ModuleQuantization = .none

    public init(base: DType, rules: [PrecisionRule] = [], quantization: ModuleQuantization = .none) {
        self.base = base; self.rules = rules; self.quantization = quantization
    }
    public static func uniform(_ dtype: DType) -> ModulePrecision { ModulePrecision(base: dtype) }

    /// The dtype of the module at `path` ("" = the model itself).
    public func dtype(for path: String) -> DType {
        guard !rules.isEmpty else { return base }
        let parts = path.isEmpty ? [] : path.split(separator: ".", omittingEmptySubsequences: false)
        var best: (depth: Int, dtype: DType)? = nil
        for r in rules {
            if let d = r.matchDepth(parts), d >= (best?.depth ?? -1) { best = (d, r.dtype) }
        }
        return best?.dtype ?? base
    }

    /// True when every module computes in one dtype.
    public var isUniform: Bool { rules.allSatisfy { $0.dtype == base } }

    /// Rules whose pattern names no module among `modules` (every module path the model built).
    public func unmatchedRules(modules: Set<String>) -> [PrecisionRule] {
        rules.filter { r in
            r.pattern.isEmpty ? false : !modules.contains { m in
                let parts = m.split(separator: ".", omittingEmptySubsequences: false)
                return parts.count == r.components.count && r.matchDepth(parts) != nil
            }
        }
    }

    public var description: String {
        ([base.userName] + rules.map(\.description)).joined(separator: ",")
    }
}

extension DType {
    /// The name users type (`fp32`, `bf16`, `fp16`).
    public var userName: String {
        switch self {
        case .f32: return "fp32"
        case .f16: return "fp16"
        case .bf16: return "bf16"
        case .f64: return "fp64"
        default: return rawValue
        }
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
func globMatch(_ pattern: Substring, _ text: Substring) -> Bool {
    guard pattern.contains("*") else { return pattern == text }
    let p = Array(pattern), t = Array(text)
    var pi = 0, ti = 0, star = -1, mark = 0
    while ti < t.count {
        if pi < p.count && p[pi] != "*" && p[pi] == t[ti] { pi += 1; ti += 1 }
        else if pi < p.count && p[pi] == "*" { star = pi; mark = ti; pi += 1 }
        else if star >= 0 { pi = star + 1; mark += 1; ti = mark }
        else { return false }
    }
    while pi < p.count && p[pi] == "*" { pi += 1 }
    return pi == p.count
}

/// Module paths written with their numbers as `*` ("layers.*.attention"), sorted: what a user can
/// name in a rule, for error messages.
public func modulePathSummary(_ modules: Set<String>) -> [String] {
    Set(modules.map { m in
        m.split(separator: ".", omittingEmptySubsequences: false)
            .map { $0.allSatisfy(\.isNumber) ? "*" : String($0) }.joined(separator: ".")
    }).filter { !$0.isEmpty }.sorted()
}
