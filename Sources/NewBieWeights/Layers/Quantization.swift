import NewBieTensor

/// How one linear layer's weight is held (docs/QUANTIZATION.md).
public enum QuantScheme: String, Sendable, Equatable, CaseIterable {
    /// 16/32-bit as the precision policy says (no quantization).
    case none
    /// int8 weight-only, one fp32 scale per output channel (row).
    case int8
    /// int8 weight-only, one fp32 scale per group of 128 input features of each row.
    case int8g128 = "int8-g128"
    /// fp8 e4m3fn weights with one fp32 scale per output channel, and activations quantized to e4m3
    /// with one scale per token at each call (W8A8): cuBLASLt's FP8 GEMM on Hopper and later,
    /// emulated elsewhere.
    case fp8
    /// GGML blocks as a GGUF file stores them (Q8_0 ... Q4_K), held resident and widened per call:
    /// read from a file, or quantized at load by `--quantize` with `newbie quantize`'s writers.
    case q8_0, q6_K = "q6_k", q5_K = "q5_k", q5_0, q4_K = "q4_k", q4_0

    /// Input features per scale (nil: the whole row).
    public var groupSize: Int? { self == .int8g128 ? 128 : nil }

    /// The GGML block format of a block scheme.
    public var blockFormat: BlockFormat? {
        switch self {
        case .q8_0: return .q8_0
        case .q6_K: return .q6_K
        case .q5_K: return .q5_K
        case .q5_0: return .q5_0
        case .q4_K: return .q4_K
        case .q4_0: return .q4_0
        case .none, .int8, .int8g128, .fp8: return nil
        }
    }

    /// The block scheme holding `format`.
    public init(blockFormat format: BlockFormat) {
        switch format {
        case .q8_0: self = .q8_0
        case .q6_K: self = .q6_K
        case .q5_K: self = .q5_K
        case .q5_0: self = .q5_0
        case .q4_K: self = .q4_K
        case .q4_0: self = .q4_0
        }
    }

    /// A scheme users may ask for at load (`--quantize`, precision-report configs), by name.
    public init?(userName: String) {
        guard let s = QuantScheme(rawValue: userName) else { return nil }
        self = s
    }

    /// The names users type.
    public static let userNames = "int8, int8-g128, fp8, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0 or none"

    /// The scheme a linear layer [out, in] at `path` is held in when the rules ask for this one at
    /// load. Block schemes follow `newbie quantize` (so that both give the same layers): a weight
    /// of at most 1024 values stays as it is (city96's convert.py keeps such tensors in F32), and
    /// a row must be whole blocks, else the error names `flag` and the layer.
    public func atLoad(shape: [Int], path: String, flag: String = "--quantize") throws -> QuantScheme {
        guard let f = blockFormat else { return self }
        if shape.reduce(1, *) <= 1024 { return .none }
        guard shape.count == 2, shape[1] % f.blockSize == 0 else {
            let other = f.blockSize == 256 ? "; q8_0, q5_0 and q4_0 take rows of whole 32-value blocks" : ""
            throw WeightsError("\(flag) \(rawValue): the linear layer \(path) has rows of \(shape.last ?? 0) values, not whole \(f.blockSize)-value \(f) blocks\(other); or keep the layer with a path rule (MODEL.\(path)=none, MODEL being dit, gemma or jina)")
        }
        return self
    }
}

/// One quantization override: linear layers whose module path matches `pattern` (or lies inside
/// a module that does) are held as `scheme`. The pattern grammar is the precision rules': dotted
/// module paths, `*` for any text inside one component, "" for the whole model.
public struct QuantRule: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    public let scheme: QuantScheme
    public init(pattern: String, scheme: QuantScheme) { self.pattern = pattern; self.scheme = scheme }
    public var description: String { (pattern.isEmpty ? "*" : pattern) + "=" + scheme.rawValue }

    var components: [Substring] { ModulePathPattern.components(pattern) }
    func matchDepth(_ path: [Substring]) -> Int? { ModulePathPattern.matchDepth(components, path) }
}

/// Which linear layers of one model are quantized. The most specific rule covering a layer wins
/// (deepest match; the later among equals). A whole-model rule ("" pattern, `dit=int8`) skips the
/// layers kept in 16 bits by default (`keptByDefault`); a rule naming a path inside the model
/// quantizes what it names, those included.
public struct ModuleQuantization: Sendable, Equatable, CustomStringConvertible {
    public var rules: [QuantRule]
    public init(rules: [QuantRule] = []) { self.rules = rules }
    public static let none = ModuleQuantization()

    public var isEmpty: Bool { rules.isEmpty }

    /// Path components of the layers a whole-model rule leaves in 16 bits: the embedders and input
    /// projections (DiT x/t/caption embedders, time_text_embed, clip_text_pooled_proj: small, and
    /// they set the scale of everything after), adaLN modulation (its output scales and gates every
    /// block's activations), the final layer (writes the velocity directly), any norm, and the DiT's
    /// noise and context refiners (the blocks before the main stack). Measured on NewBie-mini with
    /// precision-report (docs/QUANTIZATION.md): quantizing the embedders costs 2.7 dB of PSNR
    /// against fp32 with fp8, the final layer 1.2 dB, the refiners 2.8 dB (fp8) and 0.95 dB (int8);
    /// adaLN made no measurable difference and stays kept on reasoning alone.
    public static let keptByDefault = ["*embed*", "clip_text_pooled_proj", "adaLN_modulation*", "final_layer", "*norm*",
                                       "noise_refiner", "context_refiner"]

    public static func isKeptByDefault(_ path: String) -> Bool {
        path.split(separator: ".").contains { c in keptByDefault.contains { globMatch(Substring($0), c) } }
    }

    /// The scheme of the linear layer at `path`.
    public func scheme(for path: String) -> QuantScheme {
        guard !rules.isEmpty else { return .none }
        let parts = path.isEmpty ? [] : path.split(separator: ".", omittingEmptySubsequences: false)
        var best: (depth: Int, rule: QuantRule)? = nil
        for r in rules {
            if let d = r.matchDepth(parts), d >= (best?.depth ?? -1) { best = (d, r) }
        }
        guard let b = best else { return .none }
        if b.rule.pattern.isEmpty && ModuleQuantization.isKeptByDefault(path) { return .none }
        return b.rule.scheme
    }

    /// Path rules that name no module among `modules` (every module path the model built).
    public func unmatchedRules(modules: Set<String>) -> [QuantRule] {
        rules.filter { r in
            r.pattern.isEmpty ? false : !modules.contains { m in
                let parts = m.split(separator: ".", omittingEmptySubsequences: false)
                return parts.count == r.components.count && r.matchDepth(parts) != nil
            }
        }
    }

    public var description: String { rules.map(\.description).joined(separator: ",") }
}

/// A quantized weight with fp32 scales. int8: `w[o, i] ≈ q[o, i] * scale[o, i / group]` (group =
/// the row when per channel). fp8: `w[o, i] ≈ e4m3(q[o, i]) * scale[o]` (one scale per row; a
/// single scale broadcasts). GGML blocks:
/// `q` holds each row's blocks as the GGUF file stores them, scales inside. Held on the layer's
/// device (`on(_:)`); int8 and blocks are widened to a float weight one layer at a time, just
/// before its matrix product; fp8 goes to the FP8 product as it is.
public struct QuantizedWeight: @unchecked Sendable {
    public let scheme: QuantScheme
    /// [out, in]: int8 in [-127, 127], or (fp8) u8 e4m3fn codes; blocks: u8 [out, rowBytes(in)].
    public let q: Tensor
    /// [out, groups] fp32 (groups = 1 per channel, as fp8's [out, 1]; an empty
    /// host tensor for blocks, whose scales are inside them).
    public let scales: Tensor
    /// The float weight's shape [out, in].
    public let shape: [Int]
    public init(scheme: QuantScheme, q: Tensor, scales: Tensor) {
        precondition(scheme.blockFormat == nil, "block weights: use init(blocks:format:shape:)")
        self.scheme = scheme; self.q = q; self.scales = scales; shape = q.shape
    }
    /// A weight [out, in] held as GGML blocks: `blocks` u8 [out, format.rowBytes(in)] (`in` whole blocks).
    public init(blocks: Tensor, format: BlockFormat, shape: [Int]) {
        precondition(shape.count == 2 && shape[1] % format.blockSize == 0
                     && blocks.shape == [shape[0], format.rowBytes(shape[1])] && blocks.dtype == .u8)
        scheme = QuantScheme(blockFormat: format); q = blocks; scales = Tensor.empty([0], dtype: .f32); self.shape = shape
    }
    private init(scheme: QuantScheme, q: Tensor, scales: Tensor, shape: [Int]) {
        self.scheme = scheme; self.q = q; self.scales = scales; self.shape = shape
    }
    /// Bytes held (int8 values plus scales).
    public var byteCount: Int { q.byteCount + scales.byteCount }

    /// Quantizes a [out, in] float weight (any float dtype, any device; read in fp32):
    /// scale = max|w| / 127 over the row (or group), q = round-half-to-even(w / scale) (torch.round),
    /// clamped to ±127; an all-zero row or group has scale 0 and q 0.
    ///
    /// fp8: per output channel, `FloatE4M3.quantizeRow`: scale = max|w| / 448 over the row (1 for
    /// an all-zero row), q = e4m3fn(w / scale) as torch's cast (`FloatE4M3.encode`).
    ///
    /// Block schemes: ggml's quantizers on the fp32 values, row after row (`newbie quantize`'s, the
    /// same bytes as the file it writes); rows must be whole blocks (`QuantScheme.atLoad` checks).
    public static func quantize(_ w: Tensor, scheme: QuantScheme) -> QuantizedWeight {
        precondition(w.rank == 2 && scheme != .none)
        let host = w.device == .cpu ? w : w.to(device: .cpu)
        if let f = scheme.blockFormat {
            precondition(w.shape[1] % f.blockSize == 0, "\(scheme): rows of \(w.shape[1]) values are not whole blocks")
            let values = host.to(.f32).contiguous()
            let blocks = Tensor.empty([w.shape[0], f.rowBytes(w.shape[1])], dtype: .u8)
            guard let type = GGMLType.byId(f.rawValue) else { preconditionFailure("no GGML type for \(f)") }
            GGUFQuantize.quantize(type, values.hostPointer.assumingMemoryBound(to: Float.self), count: values.count, into: blocks.hostPointer)
            return QuantizedWeight(blocks: blocks, format: f, shape: w.shape)
        }
        if scheme == .fp8 {
            let (q, s) = WeightQuantizer.e4m3(host)
            return QuantizedWeight(scheme: .fp8, q: q, scales: s)
        }
        let (q, scales) = WeightQuantizer.int8(host, group: scheme.groupSize ?? w.shape[1])
        return QuantizedWeight(scheme: scheme, q: q, scales: scales)
    }

    /// The same quantization over other storage (the device copies of `q` and `scales` that
    /// `--offload` streams in); block schemes keep their logical shape, which `q` does not carry.
    public func replacing(q: Tensor, scales: Tensor) -> QuantizedWeight {
        precondition(q.shape == self.q.shape && q.dtype == self.q.dtype && scales.shape == self.scales.shape)
        return QuantizedWeight(scheme: scheme, q: q, scales: scales, shape: shape)
    }

    /// The same weight held on `device` (the values and scales copied there once, at load).
    public func on(_ device: Device) -> QuantizedWeight {
        QuantizedWeight(scheme: scheme, q: q.to(device: device),
                        scales: scheme.blockFormat == nil ? scales.to(device: device) : scales, shape: shape)
    }

    /// The float weight q * scale, computed in fp32, then cast to `dtype` on `device`.
    public func dequantized(_ dtype: DType = .f32, device: Device = .cpu) -> Tensor {
        if let f = scheme.blockFormat {
            return Backends.backend(for: device).dequantizeBlocks(q, format: f, rows: shape[0], cols: shape[1], dtype: dtype)
        }
        if scheme == .fp8 {
            let w = FloatE4M3.decodeRows(q, scales: scales)
            return dtype == .f32 && device == .cpu ? w : w.to(dtype, device: device)
        }
        // the scheme's group width (the last group of a row may be shorter); in / groups would
        // misplace every value past the first group when `in` is not a multiple of 128
        let inF = q.shape[1], groups = scales.shape[1]
        let g = groups == 1 ? max(inF, 1) : (scheme.groupSize ?? (inF + groups - 1) / groups)
        let w = Backends.backend(for: device).dequantizeInt8(q, scales: scales, group: g, dtype: dtype)
        return w
    }
}
