import Foundation
import NewBieWeights

/// The text part of a Gemma 3 configuration (transformers `Gemma3TextConfig`), with the same
/// defaults, read from a `config.json` (plain or the multimodal checkpoint's `text_config`, old
/// or new key style), from GGUF metadata, or inferred from tensor shapes for files that carry
/// no configuration (the ComfyUI single file).
public struct Gemma3TextConfig: Sendable, Equatable {
    public enum LayerType: String, Sendable { case sliding = "sliding_attention", full = "full_attention" }

    public var vocabSize = 262_208
    public var hiddenSize = 2304
    public var intermediateSize = 9216
    public var numHiddenLayers = 26
    public var numAttentionHeads = 8
    public var numKeyValueHeads = 4
    public var headDim = 256
    public var rmsNormEps: Float = 1e-6
    public var queryPreAttnScalar: Float = 256
    public var slidingWindow = 4096
    public var layerTypes: [LayerType] = []
    /// RoPE base of full-attention layers and their linear scaling factor (1 = none).
    public var ropeThetaGlobal: Double = 1_000_000
    public var ropeScalingGlobal: Double = 1
    /// RoPE base of sliding-window layers and their linear scaling factor.
    public var ropeThetaLocal: Double = 10_000
    public var ropeScalingLocal: Double = 1
    public var hiddenActivation = "gelu_pytorch_tanh"
    public var attnLogitSoftcapping: Double? = nil

    public init() {}

    /// Layer types from the old `sliding_window_pattern` integer: every `pattern`-th layer is full.
    public static func layerTypes(count: Int, pattern: Int) -> [LayerType] {
        (0..<count).map { (($0 + 1) % pattern) == 0 ? .full : .sliding }
    }

    /// Gemma 3 4B (NewBie's text encoder).
    public static var gemma3_4B: Gemma3TextConfig {
        var c = Gemma3TextConfig()
        c.vocabSize = 262_208; c.hiddenSize = 2560; c.intermediateSize = 10_240; c.numHiddenLayers = 34
        c.numAttentionHeads = 8; c.numKeyValueHeads = 4; c.headDim = 256; c.queryPreAttnScalar = 256
        c.slidingWindow = 1024; c.ropeScalingGlobal = 8
        c.layerTypes = layerTypes(count: 34, pattern: 6)
        return c
    }

    /// Gemma 3 270M (google/gemma-3-270m config).
    public static var gemma3_270M: Gemma3TextConfig {
        var c = Gemma3TextConfig()
        c.vocabSize = 262_144; c.hiddenSize = 640; c.intermediateSize = 2048; c.numHiddenLayers = 18
        c.numAttentionHeads = 4; c.numKeyValueHeads = 1; c.headDim = 256; c.queryPreAttnScalar = 256
        c.slidingWindow = 512
        c.layerTypes = layerTypes(count: 18, pattern: 6)
        return c
    }

    func fail(_ source: String, _ m: String) -> WeightsError { WeightsError("\(source): \(m)") }

    /// Checks the fields fit together.
    public func validate(source: String) throws {
        guard hiddenSize > 0, numHiddenLayers > 0, numAttentionHeads > 0, numKeyValueHeads > 0, headDim > 0, headDim % 2 == 0 else {
            throw fail(source, "Gemma 3 config has non-positive sizes or an odd head_dim")
        }
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw fail(source, "\(numAttentionHeads) attention heads do not share \(numKeyValueHeads) KV heads evenly")
        }
        guard layerTypes.count == numHiddenLayers else {
            throw fail(source, "layer_types has \(layerTypes.count) entries for \(numHiddenLayers) layers")
        }
        guard hiddenActivation == "gelu_pytorch_tanh" || hiddenActivation == "gelu_tanh" else {
            throw fail(source, "hidden_activation \(hiddenActivation) is not supported (gelu_pytorch_tanh)")
        }
        guard attnLogitSoftcapping == nil else { throw fail(source, "attn_logit_softcapping is not supported") }
    }

    // MARK: config.json

    /// `config.json` as `Gemma3ForConditionalGeneration` saves it (the text model under
    /// `text_config`), in the key style `init(configJSON:)` reads back; `extra` adds keys (a note).
    public func huggingFaceConfigJSON(extra: [String: Any] = [:]) -> [String: Any] {
        func scaling(_ f: Double) -> Any { f == 1 ? NSNull() : ["rope_type": "linear", "factor": f] as [String: Any] }
        var text: [String: Any] = [
            "model_type": "gemma3_text", "vocab_size": vocabSize, "hidden_size": hiddenSize,
            "intermediate_size": intermediateSize, "num_hidden_layers": numHiddenLayers,
            "num_attention_heads": numAttentionHeads, "num_key_value_heads": numKeyValueHeads, "head_dim": headDim,
            "query_pre_attn_scalar": JSONNumber.decimal(queryPreAttnScalar), "sliding_window": slidingWindow,
            "layer_types": layerTypes.map(\.rawValue), "rms_norm_eps": JSONNumber.decimal(rmsNormEps),
            "rope_theta": ropeThetaGlobal, "rope_local_base_freq": ropeThetaLocal, "rope_scaling": scaling(ropeScalingGlobal),
            "hidden_activation": hiddenActivation, "max_position_embeddings": 131_072]
        if ropeScalingLocal != 1 {
            // only the newer per-layer-type form can say that sliding layers are scaled too
            text["rope_parameters"] = ["full_attention": ["rope_type": ropeScalingGlobal == 1 ? "default" : "linear", "factor": ropeScalingGlobal, "rope_theta": ropeThetaGlobal],
                                       "sliding_attention": ["rope_type": "linear", "factor": ropeScalingLocal, "rope_theta": ropeThetaLocal]]
        }
        if let c = attnLogitSoftcapping { text["attn_logit_softcapping"] = c }
        return ["architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text,
                "vision_config": ["model_type": "siglip_vision_model"]].merging(extra) { $1 }
    }


    /// Reads `config.json` of `Gemma3TextModel`/`Gemma3ForCausalLM` or the multimodal
    /// `Gemma3ForConditionalGeneration` (its `text_config`), in the hub's older key style
    /// (`rope_scaling`, `rope_theta`, `rope_local_base_freq`, `sliding_window_pattern`) or the
    /// newer one (`rope_parameters` per layer type, `layer_types`).
    public init(configJSON data: Data, source: String) throws {
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw WeightsError("\(source): not a JSON object")
        }
        let j = (root["text_config"] as? [String: Any]) ?? root
        self.init()
        func int(_ k: String) throws -> Int? {
            guard let v = j[k], !(v is NSNull) else { return nil }
            guard let i = v as? Int else { throw WeightsError("\(source): \(k) is not an integer") }
            return i
        }
        func num(_ k: String, in d: [String: Any]? = nil) throws -> Double? {
            guard let v = (d ?? j)[k], !(v is NSNull) else { return nil }
            guard let x = v as? Double else { throw WeightsError("\(source): \(k) is not a number") }
            return x
        }
        if let v = try int("vocab_size") { vocabSize = v }
        if let v = try int("hidden_size") { hiddenSize = v }
        if let v = try int("intermediate_size") { intermediateSize = v }
        if let v = try int("num_hidden_layers") { numHiddenLayers = v }
        if let v = try int("num_attention_heads") { numAttentionHeads = v }
        if let v = try int("num_key_value_heads") { numKeyValueHeads = v }
        if let v = try int("head_dim") { headDim = v }
        if let v = try num("rms_norm_eps") { rmsNormEps = Float(v) }
        if let v = try num("query_pre_attn_scalar") { queryPreAttnScalar = Float(v) }
        if let v = try int("sliding_window") { slidingWindow = v }
        if let v = j["hidden_activation"] as? String { hiddenActivation = v }
        if let v = try num("attn_logit_softcapping") { attnLogitSoftcapping = v }
        if (j["use_bidirectional_attention"] as? Bool) == true {
            throw WeightsError("\(source): use_bidirectional_attention is not supported")
        }
        if let types = j["layer_types"] as? [String] {
            layerTypes = try types.map { t in
                guard let lt = LayerType(rawValue: t) else { throw WeightsError("\(source): unknown layer type \"\(t)\"") }
                return lt
            }
        } else {
            let pattern = try int("sliding_window_pattern") ?? 6
            layerTypes = Gemma3TextConfig.layerTypes(count: numHiddenLayers, pattern: pattern)
        }
        func scaling(_ d: [String: Any], what: String) throws -> Double {
            let type = (d["rope_type"] as? String) ?? (d["type"] as? String) ?? "default"
            switch type {
            case "default": return 1
            case "linear":
                guard let f = try num("factor", in: d) else { throw WeightsError("\(source): \(what) linear RoPE scaling without factor") }
                return f
            default: throw WeightsError("\(source): \(what) RoPE type \"\(type)\" is not supported (default, linear)")
            }
        }
        if let rp = j["rope_parameters"] as? [String: Any], rp["full_attention"] != nil || rp["sliding_attention"] != nil {
            if let full = rp["full_attention"] as? [String: Any] {
                if let t = try num("rope_theta", in: full) { ropeThetaGlobal = t }
                ropeScalingGlobal = try scaling(full, what: "full_attention")
            }
            if let local = rp["sliding_attention"] as? [String: Any] {
                if let t = try num("rope_theta", in: local) { ropeThetaLocal = t }
                ropeScalingLocal = try scaling(local, what: "sliding_attention")
            }
        } else {
            if let t = try num("rope_theta") { ropeThetaGlobal = t }
            if let t = try num("rope_local_base_freq") { ropeThetaLocal = t }
            if let rs = j["rope_scaling"] as? [String: Any] { ropeScalingGlobal = try scaling(rs, what: "rope_scaling") }
        }
        try validate(source: source)
    }

    public init(configPath: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: configPath)) }
        catch { throw WeightsError("\(configPath): cannot read (\(error.localizedDescription))") }
        try self.init(configJSON: data, source: configPath)
    }

    // MARK: GGUF

    /// From GGUF metadata (`gemma3.*` keys as llama.cpp writes them). Values the format does not
    /// carry follow llama.cpp's Gemma 3 rules: sliding layers use RoPE base 10,000 and every 6th
    /// layer is full unless `gemma3.attention.sliding_window_pattern` says otherwise (an integer
    /// or one bool per layer, true = sliding); the attention scale is head_dim^-1/2 except for the
    /// 62-layer 27B model, which uses (hidden / heads)^-1/2.
    public init(gguf: GGUFFile) throws {
        let p = gguf.path
        guard let arch = gguf.architecture, arch == "gemma3" else {
            throw WeightsError("\(p): architecture \(gguf.architecture ?? "none") is not gemma3")
        }
        self.init()
        func k(_ s: String) -> String { "\(arch).\(s)" }
        hiddenSize = try gguf.requiredInt(k("embedding_length"))
        numHiddenLayers = try gguf.requiredInt(k("block_count"))
        intermediateSize = try gguf.requiredInt(k("feed_forward_length"))
        numAttentionHeads = try gguf.requiredInt(k("attention.head_count"))
        numKeyValueHeads = gguf.metadata[k("attention.head_count_kv")]?.int ?? numAttentionHeads
        headDim = gguf.metadata[k("attention.key_length")]?.int ?? hiddenSize / numAttentionHeads
        if let e = gguf.metadata[k("attention.layer_norm_rms_epsilon")]?.double { rmsNormEps = Float(e) }
        if let t = gguf.metadata[k("rope.freq_base")]?.double { ropeThetaGlobal = t }
        if let w = gguf.metadata[k("attention.sliding_window")]?.int { slidingWindow = w }
        if let type = gguf.metadata[k("rope.scaling.type")]?.string, type != "none" {
            guard type == "linear" else { throw WeightsError("\(p): RoPE scaling \(type) is not supported (linear)") }
            guard let f = gguf.metadata[k("rope.scaling.factor")]?.double else { throw WeightsError("\(p): linear RoPE scaling without factor") }
            ropeScalingGlobal = f
        }
        if let pat = gguf.metadata[k("attention.sliding_window_pattern")] {
            if let n = pat.int { layerTypes = Gemma3TextConfig.layerTypes(count: numHiddenLayers, pattern: n) }
            else if let a = pat.array { layerTypes = a.map { $0.bool == true ? .sliding : .full } }
            else { throw WeightsError("\(p): attention.sliding_window_pattern is neither an integer nor a list") }
        } else {
            layerTypes = Gemma3TextConfig.layerTypes(count: numHiddenLayers, pattern: 6)
        }
        queryPreAttnScalar = numHiddenLayers == 62 ? Float(hiddenSize / numAttentionHeads) : Float(headDim)
        guard let emb = gguf.tensors["token_embd.weight"] else { throw WeightsError("\(p): no token_embd.weight") }
        vocabSize = emb.shape[0]
        try validate(source: p)
    }

    // MARK: inferred

    /// For checkpoints without a configuration (ComfyUI's single file): sizes from the tensor
    /// shapes, the rest from the known model with that hidden size (4B or 270M).
    public init(inferringFrom source: WeightSource, prefix: String) throws {
        let d = source.sourceDescription
        func shape(_ n: String) throws -> [Int] {
            guard let s = source.tensorInfo(prefix + n)?.shape else { throw WeightsError("\(d): cannot infer the Gemma 3 config: no \(prefix + n)") }
            return s
        }
        let emb = try shape("embed_tokens.weight")
        var layers = 0
        while source.tensorInfo(prefix + "layers.\(layers).input_layernorm.weight") != nil { layers += 1 }
        var c: Gemma3TextConfig
        switch emb[1] {
        case 2560: c = .gemma3_4B
        case 640: c = .gemma3_270M
        default: throw WeightsError("\(d): hidden size \(emb[1]) is not a known Gemma 3 model (4B, 270M); give a config.json")
        }
        c.vocabSize = emb[0]
        c.headDim = try shape("layers.0.self_attn.q_norm.weight")[0]
        c.numAttentionHeads = try shape("layers.0.self_attn.q_proj.weight")[0] / c.headDim
        c.numKeyValueHeads = try shape("layers.0.self_attn.k_proj.weight")[0] / c.headDim
        c.intermediateSize = try shape("layers.0.mlp.gate_proj.weight")[0]
        if layers != c.numHiddenLayers {
            throw WeightsError("\(d): \(layers) layers, but the known model with hidden size \(emb[1]) has \(c.numHiddenLayers); give a config.json")
        }
        try c.validate(source: d)
        self = c
    }
}
