import NewBieWeights

/// Tensor names of the Gemma 3 text decoder.
///
/// Internal names are the Hugging Face `Gemma3TextModel` names (`embed_tokens.weight`,
/// `layers.{i}.self_attn.q_proj.weight`, ..., `norm.weight`). Published namings:
/// - Hugging Face: the same names under a file-level prefix: none (`Gemma3TextModel`), `model.`
///   (`Gemma3ForCausalLM`, ComfyUI's `gemma_3_4b_it_bf16.safetensors`), `language_model.model.`
///   (the hub's multimodal checkpoint), `model.language_model.` (newer transformers saves) or
///   `language_model.`; vision tower, projector and `lm_head` are ignored.
/// - GGUF (llama.cpp): `token_embd.weight`, `blk.{i}.attn_q.weight`, ... `output_norm.weight`.
///   llama.cpp's converter stores every Gemma norm weight as (1 + w); the loader subtracts 1
///   again (transformers' GGUF loader does the same), see `GemmaTextEncoder`.
public enum GemmaNaming {
    public static let layerTensors: [String] = [
        "input_layernorm.weight", "post_attention_layernorm.weight",
        "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "self_attn.q_norm.weight", "self_attn.k_norm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    ]

    /// File-level prefixes tried, in order, for Hugging Face style checkpoints.
    public static let huggingFacePrefixes = ["model.language_model.", "language_model.model.", "language_model.", "model."]

    static let ggufLayerNames: [String: String] = [
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    ]

    /// The tensors needed to compute `hidden_states[k]`: the embedding, layers 0..<min(k, N), and
    /// the final norm only when k == N (what the encoder's modules ask for when planned).
    public static func expected(_ c: Gemma3TextConfig, layers: Int, finalNorm: Bool) throws -> [TensorSpec] {
        let k = finalNorm ? c.numHiddenLayers : layers
        return try GemmaTextEncoder.plan(c, hiddenState: k).requested
    }

    /// Layer index of an internal or GGUF name ("layers.3." / "blk.3."), if any.
    static func layerIndex(_ name: String, marker: String) -> Int? {
        guard name.hasPrefix(marker) else { return nil }
        let rest = name.dropFirst(marker.count)
        guard let dot = rest.firstIndex(of: ".") else { return nil }
        return Int(rest[..<dot])
    }

    /// Hugging Face naming; tensors of layers >= `layers`, the final norm when unused, the vision
    /// tower, the projector and lm_head are present-but-ignored.
    public static func huggingFace(layers: Int, finalNorm: Bool) -> Naming {
        Naming(name: "Gemma 3 (Hugging Face)", recipe: { .tensor($0) }, ignored: { n in
            if let i = layerIndex(n, marker: "layers."), i >= layers { return true }
            if n == "norm.weight" { return !finalNorm }
            return n.hasPrefix("lm_head.") || n.contains("vision_tower.") || n.contains("multi_modal_projector.")
        })
    }

    /// GGUF (llama.cpp) naming.
    public static func gguf(layers: Int, finalNorm: Bool) -> Naming {
        Naming(name: "Gemma 3 (GGUF)", recipe: { name in
            if name == "embed_tokens.weight" { return .tensor("token_embd.weight") }
            if name == "norm.weight" { return .tensor("output_norm.weight") }
            if let i = layerIndex(name, marker: "layers.") {
                let suffix = String(name.dropFirst("layers.\(i).".count))
                if let g = ggufLayerNames[suffix] { return .tensor("blk.\(i).\(g)") }
            }
            return .tensor(name)
        }, ignored: { n in
            if let i = layerIndex(n, marker: "blk."), i >= layers { return true }
            if n == "output_norm.weight" { return !finalNorm }
            return n == "output.weight" || n == "rope_freqs.weight"
        })
    }
}
