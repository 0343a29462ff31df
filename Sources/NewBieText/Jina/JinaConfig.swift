import Foundation
import NewBieWeights
/// Hyper-parameters of the Jina CLIP v2 text tower (Jina XLM-RoBERTa with rotary positions).
public struct JinaConfig: Sendable, Equatable, Codable {
    public var vocabSize: Int
    public var hidden: Int
    public var layers: Int
    public var heads: Int
    public var intermediate: Int
    public var typeVocabSize: Int
    public var layerNormEps: Float
    public var ropeBase: Double
    public var padId: Int
    /// LoRA adapters stored in the checkpoint (jina-clip-v2: one, "retrieval.query").
    public var loraAdaptations: Int
    public var loraRank: Int
    public var loraAlpha: Float
    /// Which adapter is merged (jina-clip-v2's default task is index 0).
    public var loraTask: Int

    public var headDim: Int { hidden / heads }
    public var loraScale: Float { loraAlpha / Float(loraRank) }

    public init(vocabSize: Int, hidden: Int, layers: Int, heads: Int, intermediate: Int, typeVocabSize: Int = 1,
                layerNormEps: Float = 1e-5, ropeBase: Double = 20_000, padId: Int = 1,
                loraAdaptations: Int = 1, loraRank: Int = 4, loraAlpha: Float = 4, loraTask: Int = 0) {
        self.vocabSize = vocabSize; self.hidden = hidden; self.layers = layers; self.heads = heads
        self.intermediate = intermediate; self.typeVocabSize = typeVocabSize; self.layerNormEps = layerNormEps
        self.ropeBase = ropeBase; self.padId = padId; self.loraAdaptations = loraAdaptations
        self.loraRank = loraRank; self.loraAlpha = loraAlpha; self.loraTask = loraTask
    }

    /// jina-clip-v2's `config.json` (the text tower's part; the loader itself reads the sizes from
    /// the tensor shapes).
    public func huggingFaceConfigJSON(extra: [String: Any] = [:]) -> [String: Any] {
        ["architectures": ["JinaCLIPModel"],
         "text_config": ["hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                         "intermediate_size": intermediate, "vocab_size": vocabSize, "lora_rank": loraRank,
                         "lora_alpha": JSONNumber.decimal(loraAlpha), "lora_adaptations": ["retrieval.query"],
                         "default_lora_task": "retrieval.query", "rotary_emb_base": ropeBase] as [String: Any]]
            .merging(extra) { $1 }
    }

    /// jina-clip-v2's text tower: XLM-R large shape, 250,002 tokens, LoRA rank 4 / alpha 4.
    public static let clipV2 = JinaConfig(vocabSize: 250_002, hidden: 1024, layers: 24, heads: 16, intermediate: 4096)
}
