import Foundation
import NewBieTensor

// LoRA and LoKr adapters on the layer kit's linear layers (docs/LORA.md).
//
// An adapter file is read into per-module terms (the low-rank factors and the scale
// strength x alpha / rank), matched against the linear layers a model's plan lists (every key must
// name one, or the whole set fails with one error listing the keys that do not), and handed to the
// `WeightLoader` in the model's `ModelPlacement`. The loader then either merges each term into the
// weight (fp32 on the device, then cast to the module's dtype) or attaches it to the `Linear` as a
// side product computed beside the base weight (`--lora-mode unmerged`).

/// How adapters reach the weights.
public enum AdapterMode: String, Sendable, CaseIterable {
    /// Added into the weights at load (fp32, then cast to the module's dtype): no cost per step.
    case merged
    /// Kept as low-rank side products in the linear layers' forward: the base weights stay as
    /// they are (quantised ones included), strengths can change without reloading them.
    case unmerged
}

/// One `--lora FILE[:STRENGTH]`.
public struct AdapterSpec: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var strength: Float
    public init(path: String, strength: Float = 1) { self.path = path; self.strength = strength }

    /// `FILE` or `FILE:STRENGTH` (the strength is what follows the last colon when it parses as a
    /// number, so paths with colons still work).
    public static func parse(_ text: String) throws -> AdapterSpec {
        if let colon = text.lastIndex(of: ":") {
            let tail = String(text[text.index(after: colon)...])
            if let s = Float(tail) {
                guard s.isFinite else { throw WeightsError(kind: .invalidArgument, file: nil, tensor: nil, message: "--lora \(text): the strength must be a finite number") }
                let p = String(text[..<colon])
                guard !p.isEmpty else { throw WeightsError(kind: .invalidArgument, file: nil, tensor: nil, message: "--lora \(text): no file before the strength") }
                return AdapterSpec(path: p, strength: s)
            }
        }
        guard !text.isEmpty else { throw WeightsError(kind: .invalidArgument, file: nil, tensor: nil, message: "--lora: empty file name") }
        return AdapterSpec(path: text, strength: 1)
    }

    public var description: String { strength == 1 ? path : "\(path):\(strength)" }
}

/// The file layouts read.
public enum AdapterFormat: String, Sendable {
    /// PEFT `save_pretrained` output (the official NewBie trainer's LoRA): `base_model.model.<module>.lora_A.weight` /
    /// `lora_B.weight`, rank and alpha in `adapter_config.json` beside the file.
    case peft
    /// kohya / ComfyUI: `lora_unet_<module_with_underscores>` or `diffusion_model.<module>` with
    /// `lora_down` / `lora_up` (or `lora_A` / `lora_B`) and an optional `alpha` per module.
    case kohya
    /// LyCORIS LoKr: `lycoris_<module_with_underscores>.lokr_w1` / `lokr_w2` (or their `_a` / `_b`
    /// factors) and `alpha`.
    case lokr
}

/// The strength of one adapter file, shared by all its terms: unmerged side products read it at
/// every forward, so a server can change it (0 turns the adapter off) without reloading anything.
/// (A CUDA-graph recording keeps the value it was recorded with.)
public final class AdapterStrength: @unchecked Sendable {
    public var value: Float
    public init(_ value: Float) { self.value = value }
}

/// One module's change from one adapter file: delta W = scale * (up @ down) for LoRA, scale *
/// kron(w1, w2) for LoKr. Factors are Float32 on the CPU.
public struct AdapterTerm: @unchecked Sendable {
    public enum Factors {
        /// down [rank, in], up [out, rank].
        case lora(down: Tensor, up: Tensor)
        /// w1 [a, c], w2 [b, d]: out = a * b, in = c * d.
        case lokr(w1: Tensor, w2: Tensor)
    }
    public let module: String
    public let factors: Factors
    /// alpha / rank (LoKr with both factors full: 1).
    public init(module: String, factors: Factors, alphaOverRank: Float, strength: AdapterStrength, file: String) {
        self.module = module; self.factors = factors; self.alphaOverRank = alphaOverRank; self.strength = strength; self.file = file
    }
    public let alphaOverRank: Float
    /// The file's strength (shared by its terms).
    public let strength: AdapterStrength
    /// The file it came from (for messages).
    public let file: String

    /// strength x alpha / rank, as it is now.
    public var scale: Float { strength.value * alphaOverRank }

    /// delta W [out, in] in Float32 on `device`, scale included.
    public func delta(on device: Device) -> Tensor {
        switch factors {
        case .lora(let down, let up):
            return up.to(.f32, device: device).matmul(down.to(.f32, device: device)) * scale
        case .lokr(let w1, let w2):
            return AdapterTerm.kron(w1.to(.f32, device: device), w2.to(.f32, device: device)) * scale
        }
    }

    /// kron(A [a, c], B [b, d]) = [a*b, c*d] with element (i*b + j, k*d + l) = A[i, k] B[j, l].
    static func kron(_ a: Tensor, _ b: Tensor) -> Tensor {
        let (ra, ca, rb, cb) = (a.shape[0], a.shape[1], b.shape[0], b.shape[1])
        return (a.reshape([ra, 1, ca, 1]) * b.reshape([1, rb, 1, cb])).reshape([ra * rb, ca * cb])
    }

    /// The side product for the unmerged forward, in `dtype` on `device`.
    func side(dtype: DType, device: Device) -> LinearAdapter {
        switch factors {
        case .lora(let down, let up):
            return LinearAdapter(kind: .lora(down: down.to(dtype, device: device), up: up.to(dtype, device: device)),
                                 alphaOverRank: alphaOverRank, strength: strength)
        case .lokr(let w1, let w2):
            return LinearAdapter(kind: .lokr(w1: w1.to(dtype, device: device), w2: w2.to(dtype, device: device)),
                                 alphaOverRank: alphaOverRank, strength: strength)
        }
    }
}

/// A low-rank side product of a `Linear` (unmerged adapters): y += scale * f(x).
public struct LinearAdapter {
    public enum Kind {
        case lora(down: Tensor, up: Tensor)
        case lokr(w1: Tensor, w2: Tensor)
    }
    public let kind: Kind
    public let alphaOverRank: Float
    /// Read at every call (see `AdapterStrength`).
    public let strength: AdapterStrength
    public init(kind: Kind, alphaOverRank: Float, strength: AdapterStrength) {
        self.kind = kind; self.alphaOverRank = alphaOverRank; self.strength = strength
    }
    public var scale: Float { strength.value * alphaOverRank }

    /// scale * x delta W^T, x [..., in] -> [..., out], in x's dtype.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let scale = self.scale
        switch kind {
        case .lora(let down, let up):
            // as PEFT: lora_B(lora_A(x)) * scaling
            return x.linear(down).linear(up) * scale
        case .lokr(let w1, let w2):
            // x (c*d) viewed as X [c, d]: y = w1 X w2^T, [a, b] flattened (kron(w1, w2) x)
            let (a, c, b, d) = (w1.shape[0], w1.shape[1], w2.shape[0], w2.shape[1])
            let lead = Array(x.shape.dropLast())
            let n = lead.reduce(1, *)
            let t = x.contiguous().reshape([n * c, d]).linear(w2)                 // [n*c, b]
                .reshape([n, c, b]).permute([0, 2, 1]).contiguous().reshape([n * b, c])
                .linear(w1)                                                       // [n*b, a]
                .reshape([n, b, a]).permute([0, 2, 1]).contiguous().reshape(lead + [a * b])
            return t * scale
        }
    }
}

/// Another name a model's linear layer (or rows of it) goes by in adapter files: diffusers'
/// `layers.N.attn.to_q` is the first rows of the fused `layers.N.attention.qkv`.
public struct AdapterAlias: Sendable, Equatable {
    public var module: String
    /// The rows of the module's output this name covers.
    public var rows: Range<Int>
    public init(module: String, rows: Range<Int>) { self.module = module; self.rows = rows }
}

/// Adapters read and matched against one model's linear layers: what `ModelPlacement` carries to
/// the loader. A reference type compared by identity (the tensors are not compared).
public final class ModelAdapters: @unchecked Sendable, Equatable {
    public let specs: [AdapterSpec]
    /// One per spec, shared by its terms: in unmerged mode, setting `value` changes that adapter's
    /// strength for the next forward pass (0 turns it off); in merged mode it was read at load.
    public let strengths: [AdapterStrength]
    public let mode: AdapterMode
    /// Module path -> its terms, in `--lora` order.
    public let terms: [String: [AdapterTerm]]
    /// What the user should know: defaults taken (alpha), keys skipped with `--lora-lenient`.
    public let notes: [String]

    public init(specs: [AdapterSpec], strengths: [AdapterStrength], mode: AdapterMode, terms: [String: [AdapterTerm]], notes: [String]) {
        self.specs = specs; self.strengths = strengths; self.mode = mode; self.terms = terms; self.notes = notes
    }

    public static func == (a: ModelAdapters, b: ModelAdapters) -> Bool { a === b }

    /// Reads every file and matches its keys against `linears` (module path -> [out, in], from the
    /// model's plan). Keys naming no linear layer are one error listing them (with `lenient`, a note
    /// and they are skipped). `model` names the slot in messages.
    public static func load(_ specs: [AdapterSpec], mode: AdapterMode, lenient: Bool, linears: [String: [Int]],
                            aliases: [String: AdapterAlias] = [:], model: String = "dit") throws -> ModelAdapters {
        var terms: [String: [AdapterTerm]] = [:]
        var notes: [String] = []
        let strengths = specs.map { AdapterStrength($0.strength) }
        for (spec, strength) in zip(specs, strengths) {
            let file = try AdapterFile.read(spec, strength: strength)
            notes += file.notes
            let (matched, unmatched) = try file.match(linears: linears, aliases: aliases)
            if !unmatched.isEmpty {
                let shown = unmatched.prefix(20).joined(separator: ", ") + (unmatched.count > 20 ? ", ... (\(unmatched.count) in all)" : "")
                let examples = linears.keys.sorted().prefix(8).joined(separator: ", ")
                let msg = "\(file.path): \(unmatched.count) adapter key\(unmatched.count == 1 ? "" : "s") (\(file.format.rawValue) format) match no linear layer of the \(model) model: \(shown); its linear layers are e.g. \(examples) (\(linears.count) in all)"
                if lenient { notes.append("warning: \(msg); skipped (--lora-lenient)") } else {
                    throw WeightsError(.invalidArgument, file: file.path, msg + " (--lora-lenient skips them with a warning)")
                }
            }
            for t in matched { terms[t.module, default: []].append(t) }
            let modules = Set(matched.map(\.module)).count
            notes.append("\(file.path): \(file.format.rawValue), \(modules) module\(modules == 1 ? "" : "s"), strength \(spec.strength), \(file.scaleSummary)")
        }
        return ModelAdapters(specs: specs, strengths: strengths, mode: mode, terms: terms, notes: notes)
    }

    /// The `--lora` arguments as recorded in PNGs (`file:strength; ...`) with the mode.
    public var summary: String { specs.map { "\($0.path):\($0.strength)" }.joined(separator: ";") }
}

/// One adapter file parsed (keys grouped per module, not yet matched to a model).
struct AdapterFile {
    let path: String
    let format: AdapterFormat
    let strength: AdapterStrength
    /// Module key as written in the file (prefix stripped; dotted for PEFT / `diffusion_model.`,
    /// underscored for `lora_unet_` / `lycoris_`) -> the term's parts.
    var entries: [(key: String, underscored: Bool, build: (String) throws -> AdapterTerm, tensors: [String])] = []
    var notes: [String] = []
    var scaleSummary = ""

    static let dottedPrefixes = ["base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer."]
    static let underscoredPrefixes = ["lora_unet_", "lycoris_"]
    static let loraSuffixes: [(down: String, up: String)] = [("lora_A.weight", "lora_B.weight"), ("lora_A.default.weight", "lora_B.default.weight"),
                                                              ("lora_down.weight", "lora_up.weight")]
    static let lokrParts = ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"]

    /// `spec.path` may be a PEFT folder (adapter_model.safetensors inside).
    static func read(_ spec: AdapterSpec, strength: AdapterStrength) throws -> AdapterFile {
        var path = spec.path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw WeightsError(kind: .io, file: path, tensor: nil, message: "--lora \(path): no such file or folder")
        }
        if isDir.boolValue {
            let inner = (path as NSString).appendingPathComponent("adapter_model.safetensors")
            guard FileManager.default.fileExists(atPath: inner) else {
                throw WeightsError(kind: .io, file: path, tensor: nil, message: "--lora \(path): a folder without adapter_model.safetensors (expected a PEFT adapter folder or a .safetensors file)")
            }
            path = inner
        }
        let st: SafeTensorsFile
        do { st = try SafeTensorsFile(path: path) } catch {
            throw WeightsError(kind: .unsupportedFormat, file: path, tensor: nil, message: "--lora \(path): not a readable safetensors file (\(error))")
        }
        guard !st.names.isEmpty else { throw WeightsError(kind: .invalidArgument, file: path, tensor: nil, message: "--lora \(path): the file holds no tensors") }
        return try AdapterFile(file: st, path: path, strength: strength)
    }

    init(file st: SafeTensorsFile, path: String, strength: AdapterStrength) throws {
        self.path = path; self.strength = strength
        let names = Set(st.names)
        func tensor(_ n: String) throws -> Tensor {
            let t: Tensor
            do { t = try st.tensor(n) } catch { throw WeightsError(kind: .invalidEntry, file: path, tensor: n, message: "\(path): tensor \(n) cannot be read: \(error)") }
            guard t.dtype.isFloatingPoint else {
                throw WeightsError(kind: .unsupportedDType, file: path, tensor: n, message: "\(path): tensor \(n) is \(t.dtype), expected a float type")
            }
            let f = t.to(.f32)
            if f.toFloats().contains(where: { !$0.isFinite }) {
                throw WeightsError(kind: .invalidEntry, file: path, tensor: n, message: "\(path): tensor \(n) holds NaN or infinite values")
            }
            return f
        }
        func scalar(_ n: String) throws -> Float {
            let t = try tensor(n)
            guard t.count == 1 else { throw WeightsError(kind: .invalidEntry, file: path, tensor: n, message: "\(path): \(n) should be one number (alpha), has shape \(t.shape)") }
            return t.toFloats()[0]
        }
        // split every key into (prefix kind, module key, part)
        var groups: [String: (underscored: Bool, parts: [String: String])] = [:]   // module key -> part -> tensor name
        var stray: [String] = []
        for n in st.names {
            var rest = n, underscored = false, matchedPrefix = false
            for p in AdapterFile.dottedPrefixes where rest.hasPrefix(p) { rest = String(rest.dropFirst(p.count)); matchedPrefix = true; break }
            if !matchedPrefix {
                for p in AdapterFile.underscoredPrefixes where rest.hasPrefix(p) { rest = String(rest.dropFirst(p.count)); underscored = true; matchedPrefix = true; break }
            }
            // the part: what follows the module key
            var part: String? = nil
            let candidates = AdapterFile.loraSuffixes.flatMap { [$0.down, $0.up] } + AdapterFile.lokrParts + ["alpha"]
            for c in candidates.sorted(by: { $0.count > $1.count }) where rest.hasSuffix("." + c) {
                part = c; rest = String(rest.dropLast(c.count + 1)); break
            }
            guard let p = part, !rest.isEmpty else { stray.append(n); continue }
            groups[rest, default: (underscored, [:])].parts[p] = n
        }
        if !stray.isEmpty {
            let shown = stray.sorted().prefix(12).joined(separator: ", ")
            throw WeightsError(kind: .invalidArgument, file: path, tensor: nil, message: "\(path): \(stray.count) tensor\(stray.count == 1 ? "" : "s") of no adapter layout read here (LoRA lora_A/lora_B or lora_down/lora_up with alpha, LoKr lokr_w1/lokr_w2 or their _a/_b factors): \(shown)\(stray.count > 12 ? ", ..." : "") (DoRA, LoHa, Tucker, conv and full-diff adapters are not supported)")
        }
        let isLoKr = groups.values.contains { g in g.parts.keys.contains { $0.hasPrefix("lokr_") } }
        let isPEFT = st.names.contains { $0.hasPrefix("base_model.model.") }
        format = isLoKr ? .lokr : (isPEFT ? .peft : .kohya)

        // alpha: per-module tensor, else (PEFT) adapter_config.json, else a stated default
        var peftConfig: PEFTConfig? = nil
        if format == .peft {
            let cfg = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("adapter_config.json")
            if FileManager.default.fileExists(atPath: cfg) {
                peftConfig = try PEFTConfig.read(cfg)
            } else {
                notes.append("\(path): no adapter_config.json beside it, so its lora_alpha is unknown: used alpha = rank (scale 1 x strength), as loaders that ignore adapter_config.json (ComfyUI) do. The official NewBie trainer's default is rank 8, alpha 4 (scale 0.5): if this file is such an adapter it now acts at twice its trained strength; put its adapter_config.json beside it or give --lora \(path):\(strength.value * 0.5)")
            }
        }
        let md = st.metadata
        var defaulted: [String] = []
        var scales: Set<Float> = []
        for (key, g) in groups.sorted(by: { $0.key < $1.key }) {
            let parts = g.parts
            let alphaName = parts["alpha"]
            let alpha: Float? = try alphaName.map(scalar)
            if let pair = AdapterFile.loraSuffixes.first(where: { parts[$0.down] != nil || parts[$0.up] != nil }) {
                guard let dn = parts[pair.down], let un = parts[pair.up] else {
                    throw WeightsError(kind: .invalidEntry, file: path, tensor: nil, message: "\(path): module \(key) has \(parts[pair.down] ?? parts[pair.up]!) without its \(parts[pair.down] == nil ? pair.down : pair.up)")
                }
                let down = try tensor(dn), up = try tensor(un)
                guard down.rank == 2, up.rank == 2, up.shape[1] == down.shape[0] else {
                    throw WeightsError(kind: .invalidEntry, file: path, tensor: dn, message: "\(path): \(dn) \(down.shape) and \(un) \(up.shape) are not LoRA factors [rank, in] and [out, rank] (conv LoRA is not supported)")
                }
                let rank = down.shape[0]
                var a: Float, r = Float(rank)
                if let al = alpha { a = al }
                else if let cfg = peftConfig {
                    let (cr, ca) = cfg.rankAlpha(module: key)
                    guard cr == rank else {
                        throw WeightsError(kind: .invalidEntry, file: path, tensor: dn, message: "\(path): \(dn) has rank \(rank) but adapter_config.json says r = \(cr) for \(key)")
                    }
                    a = ca
                    if cfg.useRSLoRA { r = Float(rank).squareRoot() }
                } else { a = Float(rank); if format != .peft { defaulted.append(key) } }
                let ar = a / r
                scales.insert(ar)
                entries.append((key, g.underscored, { module in
                    AdapterTerm(module: module, factors: .lora(down: down, up: up), alphaOverRank: ar, strength: strength, file: path) }, [dn, un]))
            } else {
                func factor(_ full: String, _ a: String, _ b: String) throws -> (Tensor, Int?) {
                    if let n = parts[full] { return (try tensor(n), nil) }
                    guard let an = parts[a], let bn = parts[b] else {
                        throw WeightsError(kind: .invalidEntry, file: path, tensor: nil, message: "\(path): module \(key) has neither \(full) nor both \(a) and \(b)")
                    }
                    let ta = try tensor(an), tb = try tensor(bn)
                    guard ta.rank == 2, tb.rank == 2, ta.shape[1] == tb.shape[0] else {
                        throw WeightsError(kind: .invalidEntry, file: path, tensor: an, message: "\(path): \(an) \(ta.shape) and \(bn) \(tb.shape) do not multiply (conv / Tucker LoKr is not supported)")
                    }
                    return (ta.matmul(tb), tb.shape[0])
                }
                let (w1, r1) = try factor("lokr_w1", "lokr_w1_a", "lokr_w1_b")
                let (w2, r2) = try factor("lokr_w2", "lokr_w2_a", "lokr_w2_b")
                guard w1.rank == 2, w2.rank == 2 else {
                    throw WeightsError(kind: .invalidEntry, file: path, tensor: nil, message: "\(path): module \(key): LoKr factors \(w1.shape) and \(w2.shape) are not matrices (conv LoKr is not supported)")
                }
                // LyCORIS and ComfyUI: both factors full -> scale 1; else alpha / rank of the
                // decomposed factor (w2's when both are); no alpha -> 1
                var s: Float = 1
                if let rank = r2 ?? r1 {
                    if let al = alpha { s = al / Float(rank) }
                    else if let ma = md["lora_alpha"].flatMap(Float.init) { s = ma / Float(rank); defaulted.append("\(key) (metadata lora_alpha \(ma))") }
                    else { defaulted.append(key) }
                }
                scales.insert(s)
                let names = AdapterFile.lokrParts.compactMap { parts[$0] }
                entries.append((key, g.underscored, { module in
                    AdapterTerm(module: module, factors: .lokr(w1: w1, w2: w2), alphaOverRank: s, strength: strength, file: path) }, names))
            }
        }
        if !defaulted.isEmpty {
            let what = format == .lokr ? "scale 1 for decomposed factors without alpha (LyCORIS and ComfyUI do the same), or the metadata's lora_alpha where given"
                                       : "alpha = rank (scale 1), the kohya / ComfyUI convention"
            notes.append("\(path): \(defaulted.count) module\(defaulted.count == 1 ? "" : "s") without an alpha tensor (e.g. \(defaulted.first!)): used \(what)")
        }
        let sorted = scales.sorted()
        scaleSummary = sorted.count == 1 ? "alpha/rank \(sorted[0])" : "alpha/rank \(sorted.first!)...\(sorted.last!)"
        if format == .lokr, let r = md["lora_rank"], let a = md["lora_alpha"] { scaleSummary += " (metadata rank \(r), alpha \(a))" }
    }

    /// Matches each module key against the model's linear layers (dotted: exactly; underscored: by
    /// the path with dots as underscores); checks the factor shapes.
    func match(linears: [String: [Int]], aliases: [String: AdapterAlias] = [:]) throws -> ([AdapterTerm], [String]) {
        var byUnderscore: [String: String] = [:]
        for p in linears.keys { byUnderscore[p.replacingOccurrences(of: ".", with: "_")] = p }
        for p in aliases.keys where byUnderscore[p.replacingOccurrences(of: ".", with: "_")] == nil {
            byUnderscore[p.replacingOccurrences(of: ".", with: "_")] = p
        }
        var out: [AdapterTerm] = [], unmatched: [String] = []
        for e in entries {
            let name = e.underscored ? byUnderscore[e.key] : e.key
            var module: String? = nil
            var alias: AdapterAlias? = nil
            if let n = name {
                if linears[n] != nil { module = n } else if let a = aliases[n], linears[a.module] != nil { module = a.module; alias = a }
            }
            guard let module, var shape = linears[module] else {
                unmatched.append(e.tensors.first ?? e.key); continue
            }
            var t = try e.build(module)
            if let a = alias {
                // a part of the module's rows: the change is checked at its own size, then placed
                // among zero rows (LoRA: the up factor padded)
                let full = shape[0]
                shape[0] = a.rows.count
                guard case .lora(let down, let up) = t.factors else {
                    throw WeightsError(kind: .unsupportedFormat, file: path, tensor: e.tensors.first, message: "\(path): \(e.key) is rows \(a.rows) of \(module); LoKr on a part of a fused layer is not supported")
                }
                guard up.shape[0] == a.rows.count, down.shape[1] == shape[1] else {
                    throw WeightsError(kind: .invalidEntry, file: path, tensor: e.tensors.first, message: "\(path): \(e.tensors.joined(separator: ", ")) make a [\(up.shape[0]), \(down.shape[1])] change but \(e.key) (rows \(a.rows) of \(module).weight) is \(shape)")
                }
                let r = up.shape[1]
                var parts: [Tensor] = []
                if a.rows.lowerBound > 0 { parts.append(Tensor.zeros([a.rows.lowerBound, r])) }
                parts.append(up)
                if a.rows.upperBound < full { parts.append(Tensor.zeros([full - a.rows.upperBound, r])) }
                t = AdapterTerm(module: module, factors: .lora(down: down, up: parts.count == 1 ? up : Tensor.concat(parts, axis: 0)),
                                alphaOverRank: t.alphaOverRank, strength: t.strength, file: t.file)
                out.append(t)
                continue
            }
            let (o, i): (Int, Int)
            switch t.factors {
            case .lora(let down, let up): (o, i) = (up.shape[0], down.shape[1])
            case .lokr(let w1, let w2): (o, i) = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1])
            }
            guard [o, i] == shape else {
                throw WeightsError(kind: .invalidEntry, file: path, tensor: e.tensors.first, message: "\(path): \(e.tensors.joined(separator: ", ")) make a [\(o), \(i)] change but \(module).weight is \(shape)")
            }
            out.append(t)
        }
        return (out, unmatched)
    }
}

/// What `adapter_config.json` (PEFT) says about rank and alpha.
struct PEFTConfig {
    var r: Int
    var alpha: Float
    var rankPattern: [String: Int] = [:]
    var alphaPattern: [String: Float] = [:]
    var useRSLoRA = false

    static func read(_ path: String) throws -> PEFTConfig {
        guard let data = FileManager.default.contents(atPath: path),
              let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw WeightsError(kind: .invalidMetadata, file: path, tensor: nil, message: "\(path): not a JSON object")
        }
        func num(_ v: Any?) -> Double? { (v as? NSNumber)?.doubleValue }
        guard let r = num(obj["r"]) else { throw WeightsError(kind: .invalidMetadata, file: path, tensor: nil, message: "\(path): no \"r\" (the LoRA rank)") }
        guard let a = num(obj["lora_alpha"]) else { throw WeightsError(kind: .invalidMetadata, file: path, tensor: nil, message: "\(path): no \"lora_alpha\"") }
        if let d = obj["use_dora"] as? Bool, d { throw WeightsError(kind: .unsupportedFormat, file: path, tensor: nil, message: "\(path): use_dora is set; DoRA adapters are not supported") }
        if let f = obj["fan_in_fan_out"] as? Bool, f { throw WeightsError(kind: .unsupportedFormat, file: path, tensor: nil, message: "\(path): fan_in_fan_out is set; only nn.Linear-style [out, in] LoRA is supported") }
        var c = PEFTConfig(r: Int(r), alpha: Float(a))
        c.useRSLoRA = (obj["use_rslora"] as? Bool) ?? false
        for (k, v) in (obj["rank_pattern"] as? [String: Any]) ?? [:] { if let n = num(v) { c.rankPattern[k] = Int(n) } }
        for (k, v) in (obj["alpha_pattern"] as? [String: Any]) ?? [:] { if let n = num(v) { c.alphaPattern[k] = Float(n) } }
        return c
    }

    /// PEFT: a pattern key applies when the module name ends with it (at a dot boundary); the longest wins.
    func rankAlpha(module: String) -> (Int, Float) {
        func find<T>(_ d: [String: T]) -> T? {
            d.filter { module == $0.key || module.hasSuffix("." + $0.key) }.max { $0.key.count < $1.key.count }?.value
        }
        return (find(rankPattern) ?? r, find(alphaPattern) ?? alpha)
    }
}
