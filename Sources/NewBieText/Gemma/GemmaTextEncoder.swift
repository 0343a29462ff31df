import Foundation
import NewBieTensor
import NewBieWeights

/// The Gemma 3 text decoder used as NewBie's text encoder: returns `hidden_states[k]` exactly as
/// transformers defines it for `output_hidden_states=True` (k = 0: scaled embeddings; 0 < k < N:
/// the raw output of decoder layer k-1; k = N: the final-normed output), and runs nothing after
/// it. NewBie uses k = -2, the output of layer N-2 without the final norm.
///
/// Numerics: every op computes in Float32 and rounds once to `dtype`. transformers applies RoPE
/// in the model dtype (cos/sin cast to bf16, three roundings) and rounds q.k before the softmax;
/// here RoPE and attention round once, a difference well inside the bf16 tolerance.
public final class GemmaTextEncoder: @unchecked Sendable {
    /// Called with each module's output during a forward ("embed_tokens", "layers.N", "norm"), for
    /// tracing; an error it throws stops the forward. Nil costs nothing.
    public var moduleHook: ((_ path: String, _ output: Tensor) throws -> Void)?
    public let config: Gemma3TextConfig
    /// Compute (activation) dtype: f32, bf16 or f16.
    public let dtype: DType
    /// The hidden_states index this encoder returns (normalised to 0...N).
    public let hiddenStateIndex: Int
    public let device: Device

    struct Layer {
        let dtype: DType, attnDType: DType, mlpDType: DType
        let inputNorm, postAttnNorm, preFFNorm, postFFNorm: Tensor
        let q, k, v, o: Linear
        let qNorm, kNorm: Tensor
        let gate, up, down: Linear
        let sliding: Bool

        /// Every weight of the layer, in a fixed order (what travels under `--offload`).
        var tensors: [Tensor] {
            [inputNorm, postAttnNorm, preFFNorm, postFFNorm] + [q, k, v, o].flatMap(\.streamedTensors) + [qNorm, kNorm]
                + [gate, up, down].flatMap(\.streamedTensors)
        }

        /// The same layer over `tensors` (in `tensors` order), computing on `device`.
        func rebound(_ tensors: [Tensor], device: Device) -> Layer {
            var c = TensorCursor(tensors)
            let n1 = c.next(), n2 = c.next(), n3 = c.next(), n4 = c.next()
            let q = q.rebound(&c, device: device), k = k.rebound(&c, device: device)
            let v = v.rebound(&c, device: device), o = o.rebound(&c, device: device)
            let qn = c.next(), kn = c.next()
            let g = gate.rebound(&c, device: device), u = up.rebound(&c, device: device), d = down.rebound(&c, device: device)
            precondition(c.isExhausted, "Gemma layer: \(tensors.count) tensors for a layer that takes fewer")
            return Layer(dtype: dtype, attnDType: attnDType, mlpDType: mlpDType, inputNorm: n1, postAttnNorm: n2, preFFNorm: n3,
                         postFFNorm: n4, q: q, k: k, v: v, o: o, qNorm: qn, kNorm: kn, gate: g, up: u, down: d, sliding: sliding)
        }
    }

    enum Embedding {
        case table(Tensor)
        /// Rows dequantised on demand from a quantised GGUF table (no full Float32 copy).
        case ggufRows(GGUFFile, String)
    }

    let embedding: Embedding
    let layers: [Layer]
    /// `--offload`: the layers' weights in pinned host memory (the layers above hold host views),
    /// streamed to the device a few layers ahead of use; the embedding table then stays on the
    /// host too (rows gathered there). Nil: every weight resident on the device.
    public let streamedLayers: WeightRing?
    let finalNorm: Tensor?
    /// Every module path with its compute dtype.
    public let moduleDTypes: [String: DType]
    /// Decoder layers this encoder runs (min(k, N) for hidden_states[k]).
    public var layersRun: Int { layers.count }

    /// Builds the modules from `root` (Hugging Face internal names); the same code plans the model
    /// and loads it. `gguf`: the file when the weights are llama.cpp's (norms stored as 1 + w).
    init(root: ModuleScope, config: Gemma3TextConfig, hiddenState k: Int, gguf: GGUFFile?) throws {
        guard [.f32, .bf16, .f16].contains(root.dtype) else { throw WeightsError("Gemma computes in fp32, bf16 or fp16, not \(root.dtype)") }
        self.config = config
        self.dtype = root.dtype
        self.hiddenStateIndex = k
        self.device = root.device
        let n = config.numHiddenLayers
        let layerCount = Swift.min(k, n)
        let h = config.hiddenSize, hd = config.headDim
        let q = config.numAttentionHeads * hd, kv = config.numKeyValueHeads * hd, ff = config.intermediateSize
        // GGUF files store Gemma norm weights as 1 + w (llama.cpp's converter); undo it.
        func norm(_ s: ModuleScope, _ name: String, _ width: Int) throws -> Tensor {
            guard gguf != nil else { return try s.tensor(name, shape: [width]) }
            let t = try s.stored(name, shape: [width])
            return s.isPlanning ? t : s.place(Tensor(t.toFloats().map { $0 - 1 }, shape: t.shape))
        }
        var layers: [Layer] = []
        let ring = root.loader.offload && !root.isPlanning ? try WeightRing(device: root.device) : nil
        for i in 0..<layerCount {
            let s = root.scope("layers.\(i)").offloadable(), a = s.scope("self_attn"), m = s.scope("mlp")
            let layer = (Layer(
                dtype: s.dtype, attnDType: a.dtype, mlpDType: m.dtype,
                inputNorm: try norm(s, "input_layernorm.weight", h),
                postAttnNorm: try norm(s, "post_attention_layernorm.weight", h),
                preFFNorm: try norm(s, "pre_feedforward_layernorm.weight", h),
                postFFNorm: try norm(s, "post_feedforward_layernorm.weight", h),
                q: try a.linear("q_proj", in: h, out: q, bias: false),
                k: try a.linear("k_proj", in: h, out: kv, bias: false),
                v: try a.linear("v_proj", in: h, out: kv, bias: false),
                o: try a.linear("o_proj", in: q, out: h, bias: false),
                qNorm: try norm(a, "q_norm.weight", hd),
                kNorm: try norm(a, "k_norm.weight", hd),
                gate: try m.linear("gate_proj", in: h, out: ff, bias: false),
                up: try m.linear("up_proj", in: h, out: ff, bias: false),
                down: try m.linear("down_proj", in: ff, out: h, bias: false),
                sliding: i < config.layerTypes.count && config.layerTypes[i] == .sliding))
            // packed into the ring's pinned buffer one layer at a time
            layers.append(try ring.map { layer.rebound(try $0.add(layer.tensors).host, device: root.device) } ?? layer)
        }
        self.layers = layers
        streamedLayers = ring
        finalNorm = k == n ? try norm(root, "norm.weight", h) : nil
        let e = root.scope("embed_tokens").offloadable()
        if let g = gguf, let info = g.tensors["token_embd.weight"], info.type.blockSize > 1, !root.isPlanning {
            e.declare("weight", shape: [config.vocabSize, h])
            embedding = .ggufRows(g, "token_embd.weight")
        } else {
            embedding = .table(try e.tensor("weight", shape: [config.vocabSize, h]))
        }
        moduleDTypes = root.loader.modules
    }

    /// The tensors needed for `hidden_states[k]` (internal names, shapes) and the module paths.
    public static func plan(_ config: Gemma3TextConfig, hiddenState: Int = -2, precision: ModulePrecision = .uniform(.f32)) throws -> WeightLoader {
        try config.validate(source: "Gemma 3 configuration")
        let loader = WeightLoader(planning: precision, widenAtUse: true)
        _ = try GemmaTextEncoder(root: loader.root, config: config, hiddenState: try resolveHiddenState(hiddenState, config), gguf: nil)
        return loader
    }

    static func resolveHiddenState(_ hiddenState: Int, _ config: Gemma3TextConfig) throws -> Int {
        let n = config.numHiddenLayers
        let k = hiddenState < 0 ? n + 1 + hiddenState : hiddenState
        guard k >= 0 && k <= n else {
            throw WeightsError("hidden state \(hiddenState) is outside 0...\(n) for a \(n)-layer model")
        }
        return k
    }

    /// - Parameters:
    ///   - hiddenState: which `hidden_states` entry to return; negative counts from the end (-2).
    public convenience init(weights source: WeightSource, config: Gemma3TextConfig, dtype: DType = .f32,
                            hiddenState: Int = -2, device: Device = .cpu) throws {
        try self.init(weights: source, config: config, placement: ModelPlacement(name: "gemma", device: device, precision: .uniform(dtype)),
                      hiddenState: hiddenState)
    }

    /// Each module in its dtype (precision rules that name no module are an error listing them).
    /// With a Float32 compute dtype the stored fp16/bf16 weights are kept and widened exactly in
    /// each op (half the memory of a Float32 copy).
    public convenience init(weights source: WeightSource, config: Gemma3TextConfig, placement: ModelPlacement,
                            hiddenState: Int = -2) throws {
        try config.validate(source: source.sourceDescription)
        let k = try GemmaTextEncoder.resolveHiddenState(hiddenState, config)
        let planned = try GemmaTextEncoder.plan(config, hiddenState: k, precision: placement.precision)
        try planned.checkRules(model: placement.name)
        let n = config.numHiddenLayers, layerCount = Swift.min(k, n), useFinalNorm = k == n
        let gguf = source as? GGUFFile
        let weights: ModelWeights
        if gguf != nil {
            weights = try ModelWeights(source: source, expected: planned.requested,
                                       naming: GemmaNaming.gguf(layers: layerCount, finalNorm: useFinalNorm))
        } else {
            let prefix = GemmaNaming.huggingFacePrefixes.first { source.tensorInfo($0 + "embed_tokens.weight") != nil } ?? ""
            // other towers of a multimodal checkpoint live outside the prefix: hide them
            let view = prefix.isEmpty ? source : PrefixView(source, prefix: prefix)
            weights = try ModelWeights(source: view, expected: planned.requested,
                                       naming: GemmaNaming.huggingFace(layers: layerCount, finalNorm: useFinalNorm),
                                       prefixes: prefix.isEmpty ? [] : [prefix])
        }
        let loader = try WeightLoader(weights: weights, precision: placement.precision, device: placement.device, widenAtUse: true,
                                      offload: placement.offload)
        try self.init(root: loader.root, config: config, hiddenState: k, gguf: gguf)
    }

    /// Loads from a path: a Hugging Face folder (config.json + safetensors, sharded or not), a
    /// single `.safetensors` file (config.json beside it, or inferred for the 4B/270M models), or
    /// a `.gguf` file.
    public static func load(path: String, dtype: DType = .f32, hiddenState: Int = -2,
                            device: Device = .cpu) throws -> GemmaTextEncoder {
        try load(path: path, placement: ModelPlacement(name: "gemma", device: device, precision: .uniform(dtype)), hiddenState: hiddenState)
    }

    public static func load(path: String, placement: ModelPlacement, hiddenState: Int = -2) throws -> GemmaTextEncoder {
        let source = try openWeights(path: path)
        let config: Gemma3TextConfig
        if let g = source as? GGUFFile {
            config = try Gemma3TextConfig(gguf: g)
            // reduced-precision runs round the weights to their dtype anyway: dequantize straight
            // to it and never hold a Float32 copy of the model
            if placement.precision.isUniform && placement.dtype != .f32 { g.quantizedOutput = placement.dtype }
        } else {
            var isDir: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
            let folder = isDir.boolValue ? path : PathName.parent(path)
            let cfg = (folder as NSString).appendingPathComponent("config.json")
            if FileManager.default.fileExists(atPath: cfg) {
                config = try Gemma3TextConfig(configPath: cfg)
            } else {
                let prefix = GemmaNaming.huggingFacePrefixes.first { source.tensorInfo($0 + "embed_tokens.weight") != nil } ?? ""
                config = try Gemma3TextConfig(inferringFrom: source, prefix: prefix)
            }
        }
        return try GemmaTextEncoder(weights: source, config: config, placement: placement, hiddenState: hiddenState)
    }

    // MARK: - forward

    /// Scaled token embeddings [B, L, H] in the compute dtype.
    func embed(_ ids: Tensor) throws -> Tensor {
        let scale = Half.round(Float(Double(config.hiddenSize).squareRoot()), to: dtype)
        switch embedding {
        case .table(let t):
            // a host table (--offload) gathers its rows on the host, then sends them
            return t.embedding(ids.to(device: t.device), dtype: dtype).to(device: device).scaled(scale)
        case .ggufRows(let g, let name):
            let flat = ids.toInts()
            let rows = try g.rows(name, flat)
            let e = (dtype == .f32 ? rows : rows.to(dtype)).to(device: device)
            return e.reshape(ids.shape + [config.hiddenSize]).scaled(scale)
        }
    }

    /// cos/sin tables [1, L, D/2] (Float32) for one RoPE base and linear scaling factor, computed
    /// like transformers: inv_freq = 1 / base^(2i/D) / factor, angle = position * inv_freq, all
    /// in Float32.
    func ropeTables(length: Int, theta: Double, factor: Double) -> (Tensor, Tensor) {
        let d = config.headDim, half = d / 2
        var inv = [Float](repeating: 0, count: half)
        for i in 0..<half {
            let exponent = Float(2 * i) / Float(d)
            inv[i] = 1 / Float(pow(Float(theta), exponent))
            if factor != 1 { inv[i] = inv[i] / Float(factor) }
        }
        var c = [Float](repeating: 0, count: length * half), s = c
        for p in 0..<length {
            for i in 0..<half {
                let a = Float(p) * inv[i]
                c[p * half + i] = Foundation.cos(a)
                s[p * half + i] = Foundation.sin(a)
            }
        }
        return (Tensor(c, shape: [1, length, half], device: device), Tensor(s, shape: [1, length, half], device: device))
    }

    /// `hidden_states[k]` for token ids [B, L] and an attention mask [B, L] (1 = real token,
    /// 0 = padding; right padding). Result [B, L, hidden] in the compute dtype. Positions where
    /// the mask is 0 hold values no consumer should read.
    public func callAsFunction(ids: Tensor, mask: Tensor? = nil) throws -> Tensor {
        precondition(ids.rank == 2, "ids must be [B, L], got \(ids.shape)")
        let (b, l) = (ids.shape[0], ids.shape[1])
        if let m = mask { precondition(m.shape == [b, l], "mask \(m.shape) does not match ids \(ids.shape)") }
        var h = try embed(ids)
        let hook = moduleHook
        try hook?("embed_tokens", h)
        if layers.isEmpty && finalNorm == nil { return h }
        let keyMask = mask?.to(device: device)
        let local = ropeTables(length: l, theta: config.ropeThetaLocal, factor: config.ropeScalingLocal)
        let global = ropeTables(length: l, theta: config.ropeThetaGlobal, factor: config.ropeScalingGlobal)
        let (hq, hkv, d) = (config.numAttentionHeads, config.numKeyValueHeads, config.headDim)
        let eps = config.rmsNormEps
        let scale = 1 / config.queryPreAttnScalar.squareRoot()
        for (index, template) in layers.enumerated() {
            let streamed = streamedLayers.map { (ring: $0, tensors: $0.acquire(index)) }
            let layer = streamed.map { template.rebound($0.tensors, device: device) } ?? template
            h = computed(in: layer.dtype, h) { h in
                let x = h.rmsNorm(weight: layer.inputNorm, eps: eps, style: .gemmaOnePlusWeight)
                let attnOut = computed(in: layer.attnDType, x) { x in
                    var q = layer.q(x).reshape([b, l, hq, d]).rmsNorm(weight: layer.qNorm, eps: eps, style: .gemmaOnePlusWeight)
                    var k = layer.k(x).reshape([b, l, hkv, d]).rmsNorm(weight: layer.kNorm, eps: eps, style: .gemmaOnePlusWeight)
                    let v = layer.v(x).reshape([b, l, hkv, d])
                    let (cos, sin) = layer.sliding ? local : global
                    q = q.rope(cos: cos, sin: sin, layout: .rotateHalf)
                    k = k.rope(cos: cos, sin: sin, layout: .rotateHalf)
                    let att = q.attention(k: k, v: v, options: AttentionOptions(
                        scale: scale, causal: true, slidingWindow: layer.sliding ? config.slidingWindow : nil,
                        keyPaddingMask: keyMask))
                    return layer.o(att.reshape([b, l, hq * d]))
                }
                let h1 = h + attnOut.rmsNorm(weight: layer.postAttnNorm, eps: eps, style: .gemmaOnePlusWeight)
                let y = h1.rmsNorm(weight: layer.preFFNorm, eps: eps, style: .gemmaOnePlusWeight)
                let mlp = computed(in: layer.mlpDType, y) { y in layer.down(layer.gate(y).gelu(approximate: true) * layer.up(y)) }
                return h1 + mlp.rmsNorm(weight: layer.postFFNorm, eps: eps, style: .gemmaOnePlusWeight)
            }
            streamed?.ring.release(index)
            try hook?("layers.\(index)", h)
        }
        if let n = finalNorm {
            h = h.rmsNorm(weight: n, eps: eps, style: .gemmaOnePlusWeight)
            try hook?("norm", h)
        }
        try Backends.check(device)
        return h
    }

    /// Encodes a tokenized batch.
    public func encode(_ batch: SentencePieceBPEBatch) throws -> Tensor {
        try self(ids: batch.idsTensor(), mask: batch.maskTensor())
    }
}

/// A weight source showing only the tensors under `prefix` (the language model of a multimodal
/// checkpoint), so the vision tower is not reported as unexpected.
final class PrefixView: WeightSource, @unchecked Sendable {
    let base: WeightSource
    let prefix: String
    let names: [String]
    init(_ base: WeightSource, prefix: String) {
        self.base = base; self.prefix = prefix
        names = base.tensorNames.filter { $0.hasPrefix(prefix) }
    }
    var sourceDescription: String { base.sourceDescription }
    var tensorNames: [String] { names }
    func tensorInfo(_ name: String) -> TensorInfo? { name.hasPrefix(prefix) ? base.tensorInfo(name) : nil }
    func loadTensor(_ name: String) throws -> Tensor { try base.loadTensor(name) }
}
