import Foundation
import NewBieTensor
import NewBieWeights

/// Hyper-parameters of a NextDiT_CLIP. Sizes come from the checkpoint:
/// `config.json` where present (official or diffusers keys), otherwise the tensor shapes; the
/// 3.5B NewBie model and tiny test models go through the same code.
public struct NextDiTConfig: Sendable, Equatable, CustomStringConvertible {
    public var patchSize: Int = 2
    public var inChannels: Int = 16
    public var outChannels: Int = 16
    public var dim: Int = 2304
    public var nLayers: Int = 36
    public var nNoiseRefiner: Int = 2
    public var nContextRefiner: Int = 2
    public var nHeads: Int = 24
    public var nKVHeads: Int = 8
    /// SwiGLU hidden width (w1/w3 rows).
    public var ffnHidden: Int = 9216
    public var capFeatDim: Int = 2560
    /// Width of the pooled CLIP text vector; nil for a plain Lumina-2 NextDiT (adaLN input = t_emb).
    public var clipTextDim: Int? = 1024
    /// adaLN conditioning width, min(dim, 1024).
    public var adaLNDim: Int = 1024
    /// Timestep sinusoid width (256).
    public var frequencySize: Int = 256
    public var axesDims: [Int] = [32, 32, 32]
    public var axesLens: [Int] = [1024, 512, 512]
    public var ropeTheta: Double = 10000
    /// Block RMSNorms and cap_embedder RMSNorm.
    public var normEps: Float = 1e-5
    /// q/k RMSNorm (diffusers 1e-5; official 1e-6 or 1e-5, spec: numerically irrelevant).
    public var qkNormEps: Float = 1e-5
    /// clip_text_pooled_proj RMSNorm.
    public var clipNormEps: Float = 1e-5
    /// Final LayerNorm (no affine).
    public var finalNormEps: Float = 1e-6

    public init() {}

    /// The published NewBie image Exp0.1 DiT.
    public static let newBieExp01 = NextDiTConfig()

    public var headDim: Int { dim / nHeads }
    public var patchDim: Int { patchSize * patchSize * inChannels }
    public var outPatchDim: Int { patchSize * patchSize * outChannels }

    public var description: String {
        "NextDiT(dim \(dim), layers \(nLayers)+\(nNoiseRefiner) noise+\(nContextRefiner) context refiners, heads \(nHeads)/\(nKVHeads) kv x \(headDim), ffn \(ffnHidden), patch \(patchSize), channels \(inChannels)->\(outChannels), cap \(capFeatDim), clip \(clipTextDim.map(String.init) ?? "none"), adaLN \(adaLNDim), axes \(axesDims) lens \(axesLens))"
    }

    /// Checks the relations the model relies on.
    public func validate() throws {
        var problems: [String] = []
        if nHeads <= 0 || dim % nHeads != 0 { problems.append("dim \(dim) is not a multiple of n_heads \(nHeads)") }
        if nKVHeads <= 0 || nHeads % max(nKVHeads, 1) != 0 { problems.append("n_heads \(nHeads) is not a multiple of n_kv_heads \(nKVHeads)") }
        if axesDims.count != axesLens.count { problems.append("axes_dims \(axesDims) and axes_lens \(axesLens) differ in length") }
        if nHeads > 0 && axesDims.reduce(0, +) != headDim { problems.append("axes_dims \(axesDims) do not add up to head_dim \(headDim)") }
        if axesDims.contains(where: { $0 <= 0 || $0 % 2 != 0 }) { problems.append("every RoPE axis dim must be even and positive: \(axesDims)") }
        if patchSize <= 0 { problems.append("patch_size \(patchSize)") }
        if !problems.isEmpty { throw DiTError("invalid NextDiT configuration: " + problems.joined(separator: "; ")) }
    }

    // MARK: expected tensors (official = internal naming)

    /// Every tensor the model uses, under the official names, with shapes: what the modules ask
    /// for when the model is planned (so the list and the model cannot disagree).
    public func expectedTensors() throws -> [TensorSpec] { try NextDiT.plan(self).requested }

    /// Parameters the model uses (norm_final, present in official checkpoints, not included).
    public var parameterCount: Int { ((try? expectedTensors()) ?? []).reduce(0) { $0 + $1.shape.reduce(1, *) } }

    // MARK: work

    /// Floating-point operations of one forward pass (matrix products and attention, 2 per
    /// multiply-add; element-wise work not counted) for `capLens` real caption tokens per sample,
    /// captions padded to `capPadded`, and a latent of `rows` x `cols` patches. Counts the work as
    /// this implementation does it (padded caption rows in the context refiner, the joint sequence
    /// padded to the longest sample).
    public func forwardFLOPs(capLens: [Int], capPadded: Int, rows: Int, cols: Int) -> Double {
        let b = Double(capLens.count), n = Double(rows * cols), d = Double(dim), hd = Double(headDim)
        let maxSeq = Double((capLens.max() ?? 0) + rows * cols)
        let qkvOut = Double(nHeads + 2 * nKVHeads) * hd
        func block(_ tokensPerSample: Double, modulated: Bool) -> Double {
            let m = b * tokensPerSample
            var f = 2 * m * d * qkvOut + 2 * m * Double(nHeads) * hd * d + 3 * 2 * m * d * Double(ffnHidden)
            f += b * 4 * tokensPerSample * tokensPerSample * hd * Double(nHeads)
            if modulated { f += 2 * b * Double(adaLNDim) * 4 * d }
            return f
        }
        var f = 2 * b * n * Double(patchDim) * d + 2 * b * Double(capPadded) * Double(capFeatDim) * d
        f += 2 * b * Double(frequencySize * adaLNDim + adaLNDim * adaLNDim)
        if let c = clipTextDim { f += 2 * b * Double(c * c + (adaLNDim + c) * adaLNDim) }
        f += Double(nContextRefiner) * block(Double(capPadded), modulated: false)
        f += Double(nNoiseRefiner) * block(n, modulated: true)
        f += Double(nLayers) * block(maxSeq, modulated: true)
        f += 2 * b * maxSeq * d * Double(outPatchDim) + 2 * b * Double(adaLNDim) * d
        return f
    }

    // MARK: config.json

    /// The official `transformer/config.json` keys for this configuration (what `resolve` reads
    /// back). The official config has one refiner count for both refiners (the noise refiner's).
    public func officialConfigJSON(extra: [String: Any] = [:]) -> [String: Any] {
        var j: [String: Any] = [
            "_class_name": "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP", "model_type": "nextdit_clip",
            "patch_size": patchSize, "dim": dim, "n_layers": nLayers, "n_refiner_layers": nNoiseRefiner,
            "n_heads": nHeads, "n_kv_heads": nKVHeads, "in_channels": inChannels, "axes_dims": axesDims,
            "axes_lens": axesLens, "cap_feat_dim": capFeatDim, "norm_eps": JSONNumber.decimal(normEps)]
        if outChannels != inChannels { j["out_channels"] = outChannels }
        if ropeTheta != 10000 { j["rope_theta"] = ropeTheta }
        if let c = clipTextDim { j["clip_text_dim"] = c; j["clip_img_dim"] = c }
        return j.merging(extra) { $1 }
    }

    // MARK: resolving from a checkpoint

    /// The configuration of a checkpoint: `json` (a parsed config.json, official or diffusers keys)
    /// where it has a value, the tensor shapes (read through `naming` under `prefix`) otherwise,
    /// and NewBie's published values where neither says anything. Tensors are not validated here;
    /// `ModelWeights` does that against `expectedTensors()` before any compute.
    public static func resolve(source: WeightSource, naming: Naming, prefix: String,
                               json: [String: Any]?) throws -> NextDiTConfig {
        var c = NextDiTConfig()
        func shape(_ internalName: String) -> [Int]? {
            let r = naming.recipe(internalName)
            var parts: [[Int]] = []
            for n in r.sources {
                guard let info = source.tensorInfo(prefix + n) else { return nil }
                parts.append(info.shape)
            }
            switch r {
            case .tensor: return parts[0]
            case .reshaped(_, let s): return s
            case .concat(_, let axis):
                var s = parts[0]
                s[axis] = parts.map { $0.count > axis ? $0[axis] : 0 }.reduce(0, +)
                return s
            }
        }
        func count(_ block: String) -> Int? {
            // published block prefixes are the same in both namings: layers.N., noise_refiner.N., context_refiner.N.
            let p = prefix + block + "."
            var maxIndex = -1
            for n in source.tensorNames where n.hasPrefix(p) {
                let rest = n.dropFirst(p.count)
                if let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]) { maxIndex = max(maxIndex, i) }
            }
            return maxIndex >= 0 ? maxIndex + 1 : nil
        }
        let j = ConfigJSON(json ?? [:])

        // sizes: shapes first, then JSON overrides (a contradiction then shows up in validation)
        if let s = shape("x_embedder.weight"), s.count == 2 { c.dim = s[0] }
        if let s = shape("t_embedder.mlp.0.weight"), s.count == 2 { c.adaLNDim = s[0]; c.frequencySize = s[1] }
        else { c.adaLNDim = min(c.dim, 1024) }
        if let s = shape("cap_embedder.0.weight"), s.count == 1 { c.capFeatDim = s[0] }
        if let s = shape("clip_text_pooled_proj.0.weight"), s.count == 1 { c.clipTextDim = s[0] }
        else if shape("clip_text_pooled_proj.1.weight") == nil && shape("time_text_embed.1.weight") == nil
                    && shape("x_embedder.weight") != nil { c.clipTextDim = nil }
        if let n = count("layers") { c.nLayers = n }
        if let n = count("noise_refiner") { c.nNoiseRefiner = n }
        if let n = count("context_refiner") { c.nContextRefiner = n }
        let probe = c.nLayers > 0 ? "layers.0" : "noise_refiner.0"
        var headDim = c.headDim
        if let s = shape("\(probe).attention.q_norm.weight"), s.count == 1, s[0] > 0, c.dim % s[0] == 0 {
            headDim = s[0]
            c.nHeads = c.dim / headDim
        }
        if let s = shape("\(probe).attention.qkv.weight"), s.count == 2 {
            let kvRows = s[0] - c.dim
            if kvRows > 0 && kvRows % (2 * headDim) == 0 { c.nKVHeads = kvRows / (2 * headDim) }
        }
        if let s = shape("\(probe).feed_forward.w1.weight"), s.count == 2 { c.ffnHidden = s[0] }

        c.patchSize = j.int("patch_size") ?? 2
        if let s = shape("x_embedder.weight"), s.count == 2, s[1] % (c.patchSize * c.patchSize) == 0 {
            c.inChannels = s[1] / (c.patchSize * c.patchSize)
        }
        if let s = shape("final_layer.linear.weight"), s.count == 2, s[0] % (c.patchSize * c.patchSize) == 0 {
            c.outChannels = s[0] / (c.patchSize * c.patchSize)
        } else { c.outChannels = c.inChannels }

        if let v = j.int("dim", "hidden_size") { c.dim = v }
        if let v = j.int("n_layers", "num_layers") { c.nLayers = v }
        if let v = j.int("n_refiner_layers", "num_refiner_layers") { c.nNoiseRefiner = v; c.nContextRefiner = v }
        if let v = j.int("n_heads", "num_attention_heads") { c.nHeads = v }
        if let v = j.int("n_kv_heads", "num_kv_heads") { c.nKVHeads = v }
        if let v = j.int("in_channels") { c.inChannels = v }
        if let v = j.int("out_channels") { c.outChannels = v }
        if let v = j.int("cap_feat_dim") { c.capFeatDim = v }
        if let v = j.int("clip_text_dim", "pooled_projection_dim") { c.clipTextDim = v }
        if let v = j.float("norm_eps") { c.normEps = v }
        if let v = j.double("rope_theta") { c.ropeTheta = v }
        if let v = j.ints("axes_lens") { c.axesLens = v }
        if let v = j.ints("axes_dims", "axes_dim_rope") {
            c.axesDims = v
        } else if c.headDim != 96 || c.axesDims.reduce(0, +) != c.headDim {
            // no config: three equal axes (the NextDiT convention, [32,32,32] for head_dim 96)
            let hd = c.headDim
            if hd % 3 == 0 && (hd / 3) % 2 == 0 { c.axesDims = [hd / 3, hd / 3, hd / 3] }
            else {
                throw DiTError("\(source.sourceDescription): head_dim \(hd) does not split into three equal even RoPE axes; give axes_dims in config.json")
            }
        }
        try c.validate()
        return c
    }
}

/// Reads config.json values under any of several key spellings.
struct ConfigJSON {
    let d: [String: Any]
    init(_ d: [String: Any]) { self.d = d }
    func value(_ keys: [String]) -> Any? {
        for k in keys { if let v = d[k], !(v is NSNull) { return v } }
        return nil
    }
    func int(_ keys: String...) -> Int? {
        guard let v = value(keys) else { return nil }
        if JSONNumber.isBoolean(v) { return nil }
        if let i = v as? Int { return i }
        if let x = v as? Double, x == x.rounded() { return Int(x) }
        return nil
    }
    func double(_ keys: String...) -> Double? {
        guard let v = value(keys) else { return nil }
        if let x = v as? Double { return x }
        if let i = v as? Int { return Double(i) }
        return nil
    }
    func float(_ keys: String...) -> Float? {
        guard let v = value(keys) else { return nil }
        if let x = v as? Double { return Float(x) }
        if let i = v as? Int { return Float(i) }
        return nil
    }
    func ints(_ keys: String...) -> [Int]? {
        guard let a = value(keys) as? [Any] else { return nil }
        var out: [Int] = []
        for v in a {
            if let i = v as? Int { out.append(i) } else if let x = v as? Double, x == x.rounded() { out.append(Int(x)) } else { return nil }
        }
        return out
    }
}

/// An error from the diffusion models (configuration, inputs); the message names what is wrong.
public struct DiTError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}
