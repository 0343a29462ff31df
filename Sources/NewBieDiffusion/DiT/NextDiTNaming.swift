import NewBieWeights

/// The published namings of the NextDiT checkpoint, as data over the internal
/// (= official) names.
public enum NextDiTNaming: String, Sendable, CaseIterable {
    /// Official / ComfyUI: fused `attention.qkv`, `adaLN_modulation.1`, `final_layer.*`, plus an
    /// unused `norm_final.weight`.
    case official
    /// diffusers `Lumina2Transformer2DModel` (+ PR #12803's pooled CLIP projection):
    /// `attn.to_q/to_k/to_v`, `norm1.linear`, `norm_out.linear_1/2`, `time_caption_embed.*`.
    case diffusers

    /// File-level prefixes a checkpoint may carry (ComfyUI model files; the diffusers PR #12789
    /// wrapper's `inner_model`).
    public static let prefixes = ["model.diffusion_model.", "inner_model."]

    /// A published name every checkpoint of this naming has.
    public var anchor: String {
        switch self {
        case .official: return "t_embedder.mlp.0.weight"
        case .diffusers: return "time_caption_embed.timestep_embedder.linear_1.weight"
        }
    }

    public var naming: Naming {
        switch self {
        case .official:
            return Naming(name: "official NextDiT", recipe: { .tensor($0) }, ignored: { $0 == "norm_final.weight" })
        case .diffusers:
            return Naming(name: "diffusers Lumina2", recipe: { NextDiTNaming.diffusersRecipe($0) })
        }
    }

    /// Which naming and prefix a checkpoint uses (by its anchor tensor); nil when neither matches.
    public static func detect(_ source: WeightSource) -> (NextDiTNaming, String)? {
        let names = Set(source.tensorNames)
        for n in NextDiTNaming.allCases {
            for p in [""] + prefixes where names.contains(p + n.anchor) { return (n, p) }
        }
        return nil
    }

    /// Official name -> diffusers recipe.
    static func diffusersRecipe(_ name: String) -> WeightRecipe {
        let globals: [(String, String)] = [
            ("t_embedder.mlp.0.", "time_caption_embed.timestep_embedder.linear_1."),
            ("t_embedder.mlp.2.", "time_caption_embed.timestep_embedder.linear_2."),
            ("cap_embedder.", "time_caption_embed.caption_embedder."),
            ("clip_text_pooled_proj.", "time_caption_embed.clip_text_pooled_proj."),
            ("time_text_embed.", "time_caption_embed.time_text_embed."),
            ("final_layer.adaLN_modulation.1.", "norm_out.linear_1."),
            ("final_layer.linear.", "norm_out.linear_2."),
        ]
        for (from, to) in globals where name.hasPrefix(from) { return .tensor(to + name.dropFirst(from.count)) }
        let parts = name.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, ["layers", "noise_refiner", "context_refiner"].contains(parts[0]) else { return .tensor(name) }
        let p = parts[0] + "." + parts[1]
        let modulated = parts[0] != "context_refiner"
        switch parts[2] {
        case "attention.qkv.weight":
            return .concat(["\(p).attn.to_q.weight", "\(p).attn.to_k.weight", "\(p).attn.to_v.weight"], axis: 0)
        case "attention.out.weight": return .tensor("\(p).attn.to_out.0.weight")
        case "attention.q_norm.weight": return .tensor("\(p).attn.norm_q.weight")
        case "attention.k_norm.weight": return .tensor("\(p).attn.norm_k.weight")
        case "feed_forward.w1.weight": return .tensor("\(p).feed_forward.linear_1.weight")
        case "feed_forward.w2.weight": return .tensor("\(p).feed_forward.linear_2.weight")
        case "feed_forward.w3.weight": return .tensor("\(p).feed_forward.linear_3.weight")
        case "attention_norm1.weight": return .tensor(modulated ? "\(p).norm1.norm.weight" : "\(p).norm1.weight")
        case "attention_norm2.weight": return .tensor("\(p).norm2.weight")
        case "adaLN_modulation.1.weight": return .tensor("\(p).norm1.linear.weight")
        case "adaLN_modulation.1.bias": return .tensor("\(p).norm1.linear.bias")
        default: return .tensor(name)  // ffn_norm1 / ffn_norm2 are unchanged
        }
    }
}

extension NextDiTNaming {
    /// The diffusers names of the DiT's linear layers, for adapters trained on diffusers'
    /// Lumina2 model (ComfyUI maps them the same way for Lumina 2): `layers.N.attn.to_q` / `to_k` /
    /// `to_v` are row blocks of the fused `attention.qkv`, the others one layer each
    /// (`attn.to_out.0`, `feed_forward.linear_1/2/3`, `norm1.linear`, `time_caption_embed.*`,
    /// `norm_out.linear_1/2`, `x_embedder`).
    public static func adapterAliases(_ config: NextDiTConfig, linears: [String: [Int]]) -> [String: AdapterAlias] {
        var out: [String: AdapterAlias] = [:]
        let hd = config.headDim
        let sizes = [config.nHeads * hd, config.nKVHeads * hd, config.nKVHeads * hd]
        for (path, shape) in linears {
            switch diffusersRecipe(path + ".weight") {
            case .tensor(let n) where n.hasSuffix(".weight") && n != path + ".weight":
                out[String(n.dropLast(".weight".count))] = AdapterAlias(module: path, rows: 0..<shape[0])
            case .concat(let names, axis: 0) where names.count == sizes.count && sizes.reduce(0, +) == shape[0]:
                var start = 0
                for (n, size) in zip(names, sizes) {
                    out[String(n.dropLast(".weight".count))] = AdapterAlias(module: path, rows: start..<(start + size))
                    start += size
                }
            default: break
            }
        }
        return out
    }
}
