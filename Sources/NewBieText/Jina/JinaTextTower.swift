import Foundation
import NewBieTensor
import NewBieWeights

/// Jina CLIP v2 text tower: XLM-RoBERTa with rotary positions and post-norm blocks, the
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
        let dtype: DType, mixerDType: DType, mlpDType: DType
        let wqkv: Linear, wo: Linear
        let n1w: Tensor, n1b: Tensor, fc1: Linear, fc2: Linear, n2w: Tensor, n2b: Tensor
    }
    let wordEmbeddings: Tensor
    let tokenType0: Tensor
    let embLNw: Tensor, embLNb: Tensor
    let layers: [Layer]
    /// Every module path with its compute dtype.
    public let moduleDTypes: [String: DType]

    /// Rows of a weight merged with its LoRA delta at a time (bounds the fp32 working memory).
    nonisolated(unsafe) static var mergeRowBlock = 8192

    /// Loads from a checkpoint file (layout detected; config inferred from shapes unless given).
    public convenience init(path: String, config: JinaConfig? = nil, dtype: DType = .f32, device: Device = .cpu) throws {
        let file = try SafeTensorsFile(path: path)
        try self.init(source: file, config: config, dtype: dtype, device: device)
    }

    public convenience init(source: WeightSource, config: JinaConfig? = nil, dtype: DType = .f32, device: Device = .cpu) throws {
        try self.init(source: source, config: config, placement: ModelPlacement(name: "jina", device: device, precision: .uniform(dtype)))
    }

    /// Each module in its dtype (precision rules that name no module are an error listing them).
    public convenience init(source: WeightSource, config: JinaConfig? = nil, placement: ModelPlacement) throws {
        let layout = try JinaLayout.detect(source)
        let cfg = try config ?? layout.inferConfig(source)
        guard cfg.loraTask >= 0 && cfg.loraTask < cfg.loraAdaptations else {
            throw WeightsError("Jina text tower: LoRA task \(cfg.loraTask) outside the \(cfg.loraAdaptations) adapters")
        }
        let planned = try JinaTextTower.plan(cfg, layout: layout, precision: placement.precision)
        try planned.checkRules(model: placement.name)
        let weights = try ModelWeights(source: source, expected: planned.requested, naming: layout.naming)
        let loader = try WeightLoader(weights: weights, precision: placement.precision, device: placement.device)
        try self.init(root: loader.root, config: cfg, layout: layout)
    }

    /// The tensors of a layout (internal names, shapes) and the module paths, from the modules.
    public static func plan(_ config: JinaConfig, layout: JinaLayout, precision: ModulePrecision = .uniform(.f32)) throws -> WeightLoader {
        let loader = WeightLoader(planning: precision)
        _ = try JinaTextTower(root: loader.root, config: config, layout: layout)
        return loader
    }

    /// Builds the modules from `root` (internal names); the same code plans and loads.
    init(root: ModuleScope, config cfg: JinaConfig, layout: JinaLayout) throws {
        guard [.f32, .bf16, .f16].contains(root.dtype) else { throw WeightsError("Jina text tower: unsupported compute dtype \(root.dtype)") }
        self.config = cfg
        self.dtype = root.dtype
        self.layout = layout
        self.device = root.device
        let (h, n, r) = (cfg.hidden, cfg.loraAdaptations, cfg.loraRank)

        /// The effective weight [out, in] (linear) or [rows, dim] (embedding) of a module: the
        /// stored weight, plus its LoRA delta where the layout carries one.
        func effective(_ s: ModuleScope, rows: Int, cols: Int, embedding: Bool) throws -> Tensor {
            guard layout.hasLoRA else { return try s.tensor("weight", shape: [rows, cols]) }
            let w = try s.stored("weight", shape: [rows, cols])
            let aFull = try s.stored("lora_A", shape: embedding ? [n, rows, r] : [n, r, cols])
            let bFull = try s.stored("lora_B", shape: embedding ? [n, r, cols] : [n, rows, r])
            if s.isPlanning { return w }
            // merged where the model runs: on a GPU the stored weight goes up as it is and the fp32
            // work (about 0.3 G elements for jina-clip-v2) stays off the host
            let dev = s.device
            let a = aFull.select(0, cfg.loraTask).to(.f32, device: dev), b = bFull.select(0, cfg.loraTask).to(.f32, device: dev)
            let wd = w.to(device: dev)
            // LoRAParametrization: linear W + B[t] @ A[t]; embedding (swapped layout) W + A[t] @ B[t].
            // Both are "rows of W + (rows of the left factor) @ right factor", merged in fp32 and
            // rounded once, in blocks of rows so the 250k x 1024 word table never exists in fp32 whole.
            let (left, right) = embedding ? (a, b) : (b, a)
            let block = JinaTextTower.mergeRowBlock
            var parts: [Tensor] = []
            var start = 0
            while start < rows {
                let m = min(block, rows - start)
                let delta = left.narrow(0, start: start, length: m).matmul(right)
                parts.append((wd.narrow(0, start: start, length: m).to(.f32) + delta * cfg.loraScale).to(s.dtype))
                start += m
            }
            return s.place(parts.count == 1 ? parts[0] : Tensor.concat(parts, axis: 0))
        }
        func linear(_ s: ModuleScope, out: Int, in k: Int) throws -> Linear {
            try s.linear(weight: effective(s, rows: out, cols: k, embedding: false), bias: try s.tensor("bias", shape: [out]))
        }

        let emb = root.scope("embeddings")
        wordEmbeddings = try effective(emb.scope("word_embeddings"), rows: cfg.vocabSize, cols: h, embedding: true)
        tokenType0 = try effective(emb.scope("token_type_embeddings"), rows: cfg.typeVocabSize, cols: h, embedding: true).select(0, 0).contiguous()
        let ln = root.scope("emb_ln")
        embLNw = try ln.tensor("weight", shape: [h]); embLNb = try ln.tensor("bias", shape: [h])
        var ls: [Layer] = []
        for i in 0..<cfg.layers {
            let s = root.scope("encoder.layers.\(i)"), mixer = s.scope("mixer"), mlp = s.scope("mlp")
            ls.append(Layer(
                dtype: s.dtype, mixerDType: mixer.dtype, mlpDType: mlp.dtype,
                wqkv: try linear(mixer.scope("Wqkv"), out: 3 * h, in: h), wo: try linear(mixer.scope("out_proj"), out: h, in: h),
                n1w: try s.tensor("norm1.weight", shape: [h]), n1b: try s.tensor("norm1.bias", shape: [h]),
                fc1: try linear(mlp.scope("fc1"), out: cfg.intermediate, in: h), fc2: try linear(mlp.scope("fc2"), out: h, in: cfg.intermediate),
                n2w: try s.tensor("norm2.weight", shape: [h]), n2b: try s.tensor("norm2.bias", shape: [h])))
        }
        layers = ls
        moduleDTypes = root.loader.modules
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
            x = computed(in: layer.dtype, x) { x in
                let a = computed(in: layer.mixerDType, x) { x in
                    let qkv = layer.wqkv(x).reshape([b, l, 3, nh, d])
                    let q = qkv.select(2, 0).rope(cos: cos, sin: sin, layout: .rotateHalf)
                    let k = qkv.select(2, 1).rope(cos: cos, sin: sin, layout: .rotateHalf)
                    let v = qkv.select(2, 2)
                    return layer.wo(q.attention(k: k, v: v, options: opts).reshape([b, l, h]))
                }
                let x1 = (x + a).layerNorm(weight: layer.n1w, bias: layer.n1b, eps: config.layerNormEps)
                let m = computed(in: layer.mlpDType, x1) { layer.fc2(layer.fc1($0).gelu(approximate: false)) }
                return (x1 + m).layerNorm(weight: layer.n2w, bias: layer.n2b, eps: config.layerNormEps)
            }
            hook?("layers.\(index)", x)
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
    /// on the raw caption (no system prompt for Jina).
    public func encode(_ texts: [String], tokenizer: UnigramTokenizer, maxLength: Int? = 2048) -> Tensor {
        let batch = tokenizer.encodeBatch(texts, maxLength: maxLength)
        return pooled(ids: batch.ids)
    }
}
