import Foundation
import NewBieTensor
import NewBieWeights

/// Jina CLIP v2 text tower (spec §5): XLM-RoBERTa with rotary positions and post-norm blocks, the
/// retrieval.query LoRA merged at load, mean pooling over real tokens. `pooled(ids:)` returns the
/// (B, hidden) vector NewBie feeds to `clip_text_pooled_proj` (no projection, no normalisation).
public final class JinaTextTower: @unchecked Sendable {
    /// Called with each module's output during a forward ("embeddings", "layers.N"), for tracing.
    /// Nil costs nothing.
    public var moduleHook: ((_ path: String, _ output: Tensor) -> Void)?
    public let config: JinaConfig
    public let dtype: DType
    public let layout: JinaLayout
    /// Where the weights live and the forward pass runs (the tensors' device picks the backend).
    public let device: Device

    struct Layer {
        let wqkv: Tensor, bqkv: Tensor, wo: Tensor, bo: Tensor
        let n1w: Tensor, n1b: Tensor, fc1: Tensor, b1: Tensor, fc2: Tensor, b2: Tensor, n2w: Tensor, n2b: Tensor
    }
    let wordEmbeddings: Tensor
    let tokenType0: Tensor
    let embLNw: Tensor, embLNb: Tensor
    let layers: [Layer]

    /// Rows of a weight merged with its LoRA delta at a time (bounds the fp32 working memory).
    nonisolated(unsafe) static var mergeRowBlock = 8192

    /// Loads from a checkpoint file (layout detected; config inferred from shapes unless given).
    public convenience init(path: String, config: JinaConfig? = nil, dtype: DType = .f32, device: Device = .cpu) throws {
        let file = try SafeTensorsFile(path: path)
        try self.init(source: file, config: config, dtype: dtype, device: device)
    }

    public init(source: WeightSource, config: JinaConfig? = nil, dtype: DType = .f32, device: Device = .cpu) throws {
        guard dtype.isFloatingPoint && dtype != .f64 else { throw WeightsError("Jina text tower: unsupported compute dtype \(dtype)") }
        let layout = try JinaLayout.detect(source)
        let cfg = try config ?? layout.inferConfig(source)
        guard cfg.loraTask >= 0 && cfg.loraTask < cfg.loraAdaptations else {
            throw WeightsError("Jina text tower: LoRA task \(cfg.loraTask) outside the \(cfg.loraAdaptations) adapters")
        }
        let weights = try ModelWeights(source: source, expected: layout.expected(cfg), naming: layout.naming)
        self.config = cfg
        self.dtype = dtype
        self.layout = layout
        self.device = device

        /// The effective weight of a linear ([out, in]) or embedding ([rows, dim]) module.
        func effective(_ module: String, embedding: Bool) throws -> Tensor {
            let w = try weights.tensor(module + ".weight")
            guard layout.hasLoRA else { return w.to(dtype, device: device) }
            let a = try weights.tensor(module + ".lora_A").select(0, cfg.loraTask).to(.f32)
            let b = try weights.tensor(module + ".lora_B").select(0, cfg.loraTask).to(.f32)
            // LoRAParametrization: linear W + B[t] @ A[t]; embedding (swapped layout) W + A[t] @ B[t].
            // Both are "rows of W + (rows of the left factor) @ right factor", merged in fp32 and
            // rounded once, in blocks of rows so the 250k x 1024 word table never exists in fp32 whole.
            let (left, right) = embedding ? (a, b) : (b, a)
            guard left.shape == [w.shape[0], cfg.loraRank], right.shape == [cfg.loraRank, w.shape[1]] else {
                throw WeightsError("Jina text tower: LoRA factors \(left.shape) x \(right.shape) do not fit \(module) \(w.shape)")
            }
            let rows = w.shape[0], block = JinaTextTower.mergeRowBlock
            var parts: [Tensor] = []
            var start = 0
            while start < rows {
                let n = min(block, rows - start)
                let delta = left.narrow(0, start: start, length: n).matmul(right)
                parts.append((w.narrow(0, start: start, length: n).to(.f32) + delta * cfg.loraScale).to(dtype))
                start += n
            }
            return (parts.count == 1 ? parts[0] : Tensor.concat(parts, axis: 0)).to(device: device)
        }
        func t(_ n: String) throws -> Tensor { try weights.tensor(n).to(dtype, device: device) }

        wordEmbeddings = try effective("embeddings.word_embeddings", embedding: true)
        tokenType0 = try effective("embeddings.token_type_embeddings", embedding: true).select(0, 0).contiguous()
        embLNw = try t("emb_ln.weight"); embLNb = try t("emb_ln.bias")
        var ls: [Layer] = []
        for i in 0..<cfg.layers {
            let p = "encoder.layers.\(i)."
            ls.append(Layer(
                wqkv: try effective(p + "mixer.Wqkv", embedding: false), bqkv: try t(p + "mixer.Wqkv.bias"),
                wo: try effective(p + "mixer.out_proj", embedding: false), bo: try t(p + "mixer.out_proj.bias"),
                n1w: try t(p + "norm1.weight"), n1b: try t(p + "norm1.bias"),
                fc1: try effective(p + "mlp.fc1", embedding: false), b1: try t(p + "mlp.fc1.bias"),
                fc2: try effective(p + "mlp.fc2", embedding: false), b2: try t(p + "mlp.fc2.bias"),
                n2w: try t(p + "norm2.weight"), n2b: try t(p + "norm2.bias")))
        }
        layers = ls
    }

    /// cos/sin [1, L, D/2] of the rotate-half rotary table (positions 0..<L, base `ropeBase`).
    func ropeTables(_ length: Int) -> (Tensor, Tensor) {
        let d = config.headDim, half = d / 2
        var c = [Float](repeating: 0, count: length * half), s = c
        let inv = (0..<half).map { Float(1 / pow(config.ropeBase, Double(2 * $0) / Double(d))) }
        for p in 0..<length {
            for j in 0..<half {
                let a = Float(p) * inv[j]   // fp32 angle, as the reference computes it
                c[p * half + j] = Foundation.cos(a); s[p * half + j] = Foundation.sin(a)
            }
        }
        return (Tensor(c, shape: [1, length, half], device: device), Tensor(s, shape: [1, length, half], device: device))
    }

    /// Last hidden state [B, L, hidden] for right- or left-padded ids [B, L] (pad id masked out of attention).
    public func hiddenStates(ids: [[Int]]) -> Tensor {
        let b = ids.count, l = ids.first?.count ?? 0
        precondition(b > 0 && l > 0 && ids.allSatisfy { $0.count == l }, "Jina: ids must be a non-empty rectangular batch")
        for row in ids { for id in row { precondition(id >= 0 && id < config.vocabSize, "Jina: token id \(id) outside the vocabulary of \(config.vocabSize)") } }
        let flat = ids.flatMap { $0.map { Int32($0) } }
        let idT = Tensor(ints: flat, shape: [b, l], device: device)
        let keep = Tensor(flat.map { $0 == Int32(config.padId) ? 0 : 1 }, shape: [b, l], device: device)
        let (h, nh, d) = (config.hidden, config.heads, config.headDim)
        var x = wordEmbeddings.embedding(idT) + tokenType0
        x = x.layerNorm(weight: embLNw, bias: embLNb, eps: config.layerNormEps)
        let hook = moduleHook
        hook?("embeddings", x)
        let (cos, sin) = ropeTables(l)
        let opts = AttentionOptions(scale: 1 / Float(d).squareRoot(), keyPaddingMask: keep)
        for (index, layer) in layers.enumerated() {
            defer { hook?("layers.\(index)", x) }
            let qkv = x.linear(layer.wqkv, bias: layer.bqkv).reshape([b, l, 3, nh, d])
            let q = qkv.select(2, 0).rope(cos: cos, sin: sin, layout: .rotateHalf)
            let k = qkv.select(2, 1).rope(cos: cos, sin: sin, layout: .rotateHalf)
            let v = qkv.select(2, 2)
            let a = q.attention(k: k, v: v, options: opts).reshape([b, l, h]).linear(layer.wo, bias: layer.bo)
            x = (x + a).layerNorm(weight: layer.n1w, bias: layer.n1b, eps: config.layerNormEps)
            let m = x.linear(layer.fc1, bias: layer.b1).gelu(approximate: false).linear(layer.fc2, bias: layer.b2)
            x = (x + m).layerNorm(weight: layer.n2w, bias: layer.n2b, eps: config.layerNormEps)
        }
        return x
    }

    /// Mean of the last hidden state over tokens whose id is not the pad id: [B, hidden] in `dtype`,
    /// on the tower's device.
    public func pooled(ids: [[Int]]) -> Tensor {
        let x = hiddenStates(ids: ids)
        let b = ids.count, l = ids[0].count
        let keep = ids.flatMap { $0.map { Float($0 == config.padId ? 0 : 1) } }
        let mask = Tensor(keep, shape: [b, l, 1], device: device)
        let sum = (x.to(.f32) * mask).reduce(.sum, axes: [1])           // [B, H], fp32
        let count = ids.map { row in Float(max(1, row.filter { $0 != config.padId }.count)) }
        return (sum / Tensor(count, shape: [b, 1], device: device)).to(dtype)
    }

    /// Tokenizes (padding to the longest, truncating at `maxLength`) and pools: the stage NewBie runs
    /// on the raw caption (spec §3.5: no system prompt for Jina).
    public func encode(_ texts: [String], tokenizer: UnigramTokenizer, maxLength: Int? = 2048) -> Tensor {
        let batch = tokenizer.encodeBatch(texts, maxLength: maxLength)
        return pooled(ids: batch.ids)
    }
}
