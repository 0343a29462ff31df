import NewBieTensor
import NewBieWeights

/// Published layouts of the Jina CLIP v2 text tower, as data over one internal naming.
///
/// Internal names follow the Jina module tree without file prefixes:
/// `embeddings.word_embeddings.weight`, `embeddings.token_type_embeddings.weight`, `emb_ln.{weight,bias}`,
/// `encoder.layers.{i}.{mixer.Wqkv, mixer.out_proj, mlp.fc1, mlp.fc2}.{weight,bias}`,
/// `encoder.layers.{i}.{norm1,norm2}.{weight,bias}`. A LoRA-parametrized layout adds
/// `<module>.lora_A` / `<module>.lora_B` for every linear and embedding; the loader merges them.
public enum JinaLayout: String, Sendable, CaseIterable {
    /// jina-clip-v2 checkpoint: `text_model.transformer.roberta.*`, LoRA parametrizations
    /// (`….parametrizations.weight.original`, `….parametrizations.weight.0.lora_A/B`); the vision
    /// tower (`vision_model.*`) and `logit_scale` are ignored.
    case official
    /// ComfyUI `jina_clip_v2_bf16.safetensors`: `model.*` with plain `.weight` tensors, taken as final
    /// weights (whether Comfy merged the LoRA is unconfirmed).
    case comfy

    public static let officialPrefix = "text_model.transformer.roberta."

    /// A tensor whose presence identifies the layout.
    public var anchor: String {
        switch self {
        case .official: return JinaLayout.officialPrefix + "emb_ln.weight"
        case .comfy: return "model.emb_ln.weight"
        }
    }

    public var hasLoRA: Bool { self == .official }

    static let linears = ["mixer.Wqkv", "mixer.out_proj", "mlp.fc1", "mlp.fc2"]
    static let embeddings = ["embeddings.word_embeddings", "embeddings.token_type_embeddings"]

    /// Every tensor the tower expects under this layout, with its shape (what its modules ask for
    /// when planned).
    public func expected(_ c: JinaConfig) throws -> [TensorSpec] {
        try JinaTextTower.plan(c, layout: self).requested
    }

    /// Internal name -> published name.
    public static func publishedName(_ name: String, layout: JinaLayout) -> String {
        switch layout {
        case .comfy:
            return "model." + name
        case .official:
            let p = officialPrefix
            let parametrized = linears.map { "." + $0 } + embeddings
            for suffix in [".weight", ".lora_A", ".lora_B"] where name.hasSuffix(suffix) {
                let module = String(name.dropLast(suffix.count))
                if parametrized.contains(where: { module.hasSuffix($0) }) {
                    switch suffix {
                    case ".weight": return p + module + ".parametrizations.weight.original"
                    case ".lora_A": return p + module + ".parametrizations.weight.0.lora_A"
                    default: return p + module + ".parametrizations.weight.0.lora_B"
                    }
                }
            }
            return p + name
        }
    }

    public var naming: Naming {
        let layout = self
        return Naming(name: "jina-clip-v2 \(rawValue)",
                      recipe: { .tensor(JinaLayout.publishedName($0, layout: layout)) },
                      ignored: { n in
                          // the vision tower, the CLIP logit scale and pooler heads are not used
                          n.hasPrefix("vision_model.") || n == "logit_scale" || n.contains(".pooler.")
                      })
    }

    /// The layout of a checkpoint, by its anchor tensor.
    public static func detect(_ source: WeightSource) throws -> JinaLayout {
        for l in JinaLayout.allCases where source.tensorInfo(l.anchor) != nil { return l }
        throw WeightsError("\(source.sourceDescription): not a Jina CLIP v2 text tower: found neither "
                           + JinaLayout.allCases.map { "\"\($0.anchor)\" (\($0.rawValue))" }.joined(separator: " nor "))
    }

    /// The configuration read off the tensor shapes; heads come from `headDim` (64 for jina-clip-v2).
    public func inferConfig(_ source: WeightSource, headDim: Int = 64) throws -> JinaConfig {
        func shape(_ name: String) throws -> [Int] {
            let n = JinaLayout.publishedName(name, layout: self)
            guard let i = source.tensorInfo(n) else { throw WeightsError("\(source.sourceDescription): missing \(n)") }
            return i.shape
        }
        let word = try shape("embeddings.word_embeddings.weight")
        let types = try shape("embeddings.token_type_embeddings.weight")
        let fc1 = try shape("encoder.layers.0.mlp.fc1.weight")
        guard word.count == 2, types.count == 2, fc1.count == 2 else {
            throw WeightsError("\(source.sourceDescription): embedding / fc1 tensors are not 2-D")
        }
        var layers = 0
        while source.tensorInfo(JinaLayout.publishedName("encoder.layers.\(layers).norm2.weight", layout: self)) != nil { layers += 1 }
        let h = word[1]
        guard h % headDim == 0 else { throw WeightsError("\(source.sourceDescription): hidden size \(h) is not a multiple of head dim \(headDim)") }
        var c = JinaConfig(vocabSize: word[0], hidden: h, layers: layers, heads: h / headDim, intermediate: fc1[0], typeVocabSize: types[0])
        if hasLoRA {
            let a = try shape("encoder.layers.0.mlp.fc1.lora_A")
            guard a.count == 3 else { throw WeightsError("\(source.sourceDescription): lora_A of fc1 is not [adaptations, rank, in]") }
            c.loraAdaptations = a[0]; c.loraRank = a[1]; c.loraAlpha = Float(a[1])  // alpha = rank: scale 1 (jina-clip-v2)
        }
        return c
    }
}
