import Foundation
import NewBieTensor
import NewBieWeights

/// NewBie's diffusion transformer, `NextDiT_CLIP`: predicts the velocity
/// v = data - noise of a latent at time t in [0, 1] (0 = noise), conditioned on Gemma caption
/// features and a pooled Jina CLIP text vector.
///
/// Precision: weights are cast once, at load, to the compute dtype (f32, bf16 or f16); every op
/// computes in Float32 and rounds its result to that dtype. The timestep sinusoid and the RoPE
/// tables stay Float32, as in the official code. Outputs are returned as Float32.
public final class NextDiT: @unchecked Sendable {
    public let config: NextDiTConfig
    public let dtype: DType
    /// Where the weights live and the forward pass runs; inputs are moved here.
    public let device: Device
    let rope: RoPE3D
    /// When set (`--trace`, `--detect-overflow`), `forward` hands it each module's output with its
    /// path ("cap_embedder", "x_embedder", "context_refiner.0", "noise_refiner.0", "layers.N",
    /// "final_layer"); an error it throws stops the forward. Nil costs nothing.
    public var moduleHook: ((_ path: String, _ output: Tensor) throws -> Void)?
    /// Replay guided steps as recorded device work (CUDA graphs) where the backend can record. Off by
    /// default (the pipeline sets it from `CUDAOptions.graphs`, `--cuda-graphs`): on the H200 it
    /// saved 0.2-1.3% of a step while the graph holds the forward pass's intermediate buffers
    /// (about 1 GiB at 1024x1024) between steps; see docs/BENCHMARKS.md.
    public var useRecordedSteps = false
    /// Replays of the current recorded step (for reports and tests).
    public internal(set) var recordedReplays = 0
    var stepGraph: StepGraph?
    /// The opt-in step cache of the current sampling run (`--step-cache`); nil computes every
    /// joint block at every call. Its decisions are made on the host, so it turns recorded steps off.
    public var stepCache: StepCache?

    /// One JointTransformerBlock. `dtype` is the block's compute dtype; its attention and
    /// feed-forward may compute in another (precision rules), with one cast in and out each.
    struct Block {
        let dtype: DType
        let attnDType: DType, ffnDType: DType
        let qkv: Linear, out: Linear
        let qNorm: Tensor, kNorm: Tensor
        let w1: Linear, w2: Linear, w3: Linear
        let attnNorm1: Tensor, attnNorm2: Tensor, ffnNorm1: Tensor, ffnNorm2: Tensor
        /// adaLN_modulation.1 (nil for the context refiner).
        let adaLN: Linear?

        /// fp8 layers fed e4m3 codes straight from the fused producers (docs/QUANTIZATION.md): the
        /// attention's RMSNorm + modulate writes the qkv input as codes, the FFN's writes one codes
        /// tensor for w1 and w3, SwiGLU writes w2's. Only where the layer takes codes and every
        /// dtype on the way is the block's, so the codes equal quantizing the 16-bit value; every
        /// other layer and precision runs the 16-bit path.
        var qkvTakesCodes: Bool { qkv.takesE4M3Rows && qkv.dtype == dtype && attnDType == dtype }
        var ffnTakesCodes: Bool {
            w1.takesE4M3Rows && w3.takesE4M3Rows && w1.dtype == dtype && w3.dtype == dtype && ffnDType == dtype
        }
        var w2TakesCodes: Bool { w2.takesE4M3Rows && [w1.dtype, w3.dtype, w2.dtype].allSatisfy { $0 == ffnDType } }
        /// The out projection's input (the attention's output) quantized in one row pass, its
        /// product handed on before its scales: an fp8 layer in the attention's dtype.
        var outTakesCodes: Bool { out.takesE4M3Rows && out.dtype == attnDType }

        /// Every weight of the block, in a fixed order (what travels under `--offload`).
        var tensors: [Tensor] {
            [qkv, out].flatMap(\.streamedTensors) + [qNorm, kNorm] + [w1, w2, w3].flatMap(\.streamedTensors)
                + [attnNorm1, attnNorm2, ffnNorm1, ffnNorm2] + (adaLN?.streamedTensors ?? [])
        }

        /// The same block over `tensors` (in `tensors` order), computing on `device`.
        func rebound(_ tensors: [Tensor], device: Device) -> Block {
            var c = TensorCursor(tensors)
            let qkv = qkv.rebound(&c, device: device), out = out.rebound(&c, device: device)
            let qNorm = c.next(), kNorm = c.next()
            let w1 = w1.rebound(&c, device: device), w2 = w2.rebound(&c, device: device), w3 = w3.rebound(&c, device: device)
            let n1 = c.next(), n2 = c.next(), n3 = c.next(), n4 = c.next()
            let ada = adaLN?.rebound(&c, device: device)
            precondition(c.isExhausted, "NextDiT.Block: \(tensors.count) tensors for a block that takes fewer")
            return Block(dtype: dtype, attnDType: attnDType, ffnDType: ffnDType, qkv: qkv, out: out, qNorm: qNorm, kNorm: kNorm,
                         w1: w1, w2: w2, w3: w3, attnNorm1: n1, attnNorm2: n2, ffnNorm1: n3, ffnNorm2: n4, adaLN: ada)
        }
    }

    /// A module that computes in its own dtype: an RMSNorm weight and a linear layer (the caption
    /// and pooled-text embedders), or a linear layer alone.
    struct NormLinear {
        let dtype: DType
        let norm: Tensor
        let linear: Linear
    }

    let xEmbedder: Linear
    let tMLP0: Linear, tMLP2: Linear, tDType: DType
    let capEmbedder: NormLinear
    let clipProj: NormLinear?
    let timeText: Linear?
    let contextRefiner: [Block], noiseRefiner: [Block], layers: [Block]
    /// `--offload`: the blocks' weights in pinned host memory (the blocks above hold host views),
    /// streamed to the device a few blocks ahead of use; group order: context refiner, noise
    /// refiner, layers. Nil: every weight resident on the device.
    public let streamedBlocks: WeightRing?
    let finalDType: DType
    let finalAdaLN: Linear, finalLinear: Linear
    /// Every module path with its compute dtype (what `--trace` shows, what precision rules name).
    public let moduleDTypes: [String: DType]

    /// Builds the modules from `root` (official internal names). The same code plans the model
    /// (every tensor name and shape, see `plan`) and loads it.
    init(config: NextDiTConfig, root: ModuleScope) throws {
        guard [.f32, .bf16, .f16].contains(root.dtype) else { throw DiTError("NextDiT computes in fp32, bf16 or fp16, not \(root.dtype)") }
        try config.validate()
        self.config = config
        self.dtype = root.dtype
        self.device = root.device
        rope = RoPE3D(axesDims: config.axesDims, axesLens: config.axesLens, theta: config.ropeTheta)
        let d = config.dim, hd = config.headDim, ada = config.adaLNDim
        func block(_ s: ModuleScope, modulated: Bool) throws -> Block {
            let a = s.scope("attention"), f = s.scope("feed_forward")
            return Block(dtype: s.dtype, attnDType: a.dtype, ffnDType: f.dtype,
                         qkv: try a.linear("qkv", in: d, out: (config.nHeads + 2 * config.nKVHeads) * hd, bias: false),
                         out: try a.linear("out", in: config.nHeads * hd, out: d, bias: false),
                         qNorm: try a.tensor("q_norm.weight", shape: [hd]), kNorm: try a.tensor("k_norm.weight", shape: [hd]),
                         w1: try f.linear("w1", in: d, out: config.ffnHidden, bias: false),
                         w2: try f.linear("w2", in: config.ffnHidden, out: d, bias: false),
                         w3: try f.linear("w3", in: d, out: config.ffnHidden, bias: false),
                         attnNorm1: try s.tensor("attention_norm1.weight", shape: [d]),
                         attnNorm2: try s.tensor("attention_norm2.weight", shape: [d]),
                         ffnNorm1: try s.tensor("ffn_norm1.weight", shape: [d]),
                         ffnNorm2: try s.tensor("ffn_norm2.weight", shape: [d]),
                         adaLN: modulated ? try s.scope("adaLN_modulation").linear("1", in: ada, out: 4 * d, bias: true) : nil)
        }
        func normLinear(_ s: ModuleScope, width: Int, out: Int) throws -> NormLinear {
            NormLinear(dtype: s.dtype, norm: try s.tensor("0.weight", shape: [width]), linear: try s.linear("1", in: width, out: out, bias: true))
        }
        xEmbedder = try root.linear("x_embedder", in: config.patchDim, out: d, bias: true)
        let te = root.scope("t_embedder"), mlp = te.scope("mlp")
        tDType = te.dtype
        tMLP0 = try mlp.linear("0", in: config.frequencySize, out: ada, bias: true)
        tMLP2 = try mlp.linear("2", in: ada, out: ada, bias: true)
        capEmbedder = try normLinear(root.scope("cap_embedder"), width: config.capFeatDim, out: d)
        if let c = config.clipTextDim {
            clipProj = try normLinear(root.scope("clip_text_pooled_proj"), width: c, out: c)
            timeText = try root.scope("time_text_embed").linear("1", in: ada + c, out: ada, bias: true)
        } else {
            clipProj = nil; timeText = nil
        }
        // --offload: each block is built in host memory, then packed into the ring's pinned buffer
        // (one block at a time, so the unpacked copy never exceeds a block)
        let ring = root.loader.offload && !root.isPlanning ? try WeightRing(device: root.device) : nil
        func placed(_ name: String, modulated: Bool) throws -> Block {
            let blk = try block(root.scope(name).offloadable(), modulated: modulated)
            guard let r = ring else { return blk }
            return blk.rebound(try r.add(blk.tensors).host, device: root.device)
        }
        contextRefiner = try (0..<config.nContextRefiner).map { try placed("context_refiner.\($0)", modulated: false) }
        noiseRefiner = try (0..<config.nNoiseRefiner).map { try placed("noise_refiner.\($0)", modulated: true) }
        layers = try (0..<config.nLayers).map { try placed("layers.\($0)", modulated: true) }
        streamedBlocks = ring
        let fl = root.scope("final_layer")
        finalDType = fl.dtype
        finalAdaLN = try fl.scope("adaLN_modulation").linear("1", in: ada, out: d, bias: true)
        finalLinear = try fl.linear("linear", in: d, out: config.outPatchDim, bias: true)
        moduleDTypes = root.loader.modules
    }

    /// The model's tensors (internal names, shapes) and module paths, from the modules themselves.
    public static func plan(_ config: NextDiTConfig, precision: ModulePrecision = .uniform(.f32)) throws -> WeightLoader {
        let loader = WeightLoader(planning: precision)
        _ = try NextDiT(config: config, root: loader.root)
        return loader
    }

    /// Builds the model from tensors handed out by internal (official) name, every module in
    /// `dtype`.
    public convenience init(config: NextDiTConfig, dtype: DType, device: Device = .cpu, tensor: @escaping (String) throws -> Tensor) throws {
        let specs = try NextDiT.plan(config).requested
        let weights = try ModelWeights(source: ClosureWeightSource(specs: specs, tensor: tensor), expected: specs, naming: .identity())
        try self.init(weights: weights, config: config, placement: ModelPlacement(device: device, precision: .uniform(dtype)))
    }

    /// Checked weights (every expected tensor present with its shape, nothing unexpected), placed
    /// on `placement.device` with each module in its dtype; precision rules that name no module
    /// are an error listing the modules.
    public convenience init(weights: ModelWeights, config: NextDiTConfig, placement: ModelPlacement) throws {
        // rules first, on the plan: a misspelt module path fails before anything is read
        try NextDiT.plan(config, precision: placement.precision).checkRules(model: placement.name)
        let loader = try WeightLoader(weights: weights, placement: placement)
        try self.init(config: config, root: loader.root)
    }

    public convenience init(weights: ModelWeights, config: NextDiTConfig, dtype: DType, device: Device = .cpu) throws {
        try self.init(weights: weights, config: config, placement: ModelPlacement(device: device, precision: .uniform(dtype)))
    }

    /// Opens a checkpoint in any published naming (official / ComfyUI with or without
    /// `model.diffusion_model.` or `inner_model.` prefix, diffusers), reads its configuration
    /// (`config.json` beside the file or inside the folder, else the tensor shapes), validates every
    /// tensor, and casts the weights to `dtype`.
    public static func load(path: String, placement: ModelPlacement, configPath: String? = nil) throws -> NextDiT {
        let (source, json) = try openCheckpoint(path: path, configPath: configPath)
        let (weights, config) = try checkedWeights(source: source, json: json)
        return try NextDiT(weights: weights, config: config, placement: placement)
    }

    public static func load(path: String, dtype: DType, device: Device = .cpu, configPath: String? = nil) throws -> NextDiT {
        try load(path: path, placement: ModelPlacement(device: device, precision: .uniform(dtype)), configPath: configPath)
    }

    /// The configuration and validated weights of a weight source.
    public static func checkedWeights(source: WeightSource, json: [String: Any]?) throws -> (ModelWeights, NextDiTConfig) {
        guard let (naming, prefix) = NextDiTNaming.detect(source) else {
            throw DiTError("\(source.sourceDescription): not a NextDiT checkpoint: found neither \"\(NextDiTNaming.official.anchor)\" (official naming) nor \"\(NextDiTNaming.diffusers.anchor)\" (diffusers naming), with or without the prefixes \(NextDiTNaming.prefixes)")
        }
        let config = try NextDiTConfig.resolve(source: source, naming: naming.naming, prefix: prefix, json: json)
        let weights = try ModelWeights(source: source, expected: config.expectedTensors(), naming: naming.naming,
                                       prefixes: NextDiTNaming.prefixes, anchor: "t_embedder.mlp.0.weight")
        return (weights, config)
    }

    /// The weights at `path` (a safetensors file, a sharded folder or its index, a GGUF file: see
    /// `openWeights`) and the parsed config.json in that folder / beside that file, if any.
    public static func openCheckpoint(path: String, configPath: String?) throws -> (WeightSource, [String: Any]?) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw DiTError("\(path): no such file or folder")
        }
        let dir = isDir.boolValue ? path : PathName.parent(path)
        let source = try openWeights(path: path)
        let cfg = configPath ?? (dir as NSString).appendingPathComponent("config.json")
        var json: [String: Any]? = nil
        if FileManager.default.fileExists(atPath: cfg) {
            let data = try Data(contentsOf: URL(fileURLWithPath: cfg))
            guard let obj = try? JSONSerialization.jsonObject(with: data), let d = obj as? [String: Any] else {
                throw DiTError("\(cfg): not a JSON object")
            }
            json = d
        } else if configPath != nil {
            throw DiTError("\(cfg): no such file")
        }
        return (source, json)
    }

    // MARK: forward

    /// One forward pass.
    /// - Parameters:
    ///   - x: latent [B, C, H, W] (any float dtype; H, W multiples of the patch size).
    ///   - t: B times in [0, 1] (0 = noise).
    ///   - capFeats: caption features [B, L, cap_feat_dim], right-padded.
    ///   - capMask: [B, L], nonzero = real token; each row is ones then zeros.
    ///   - clipPooled: [B, clip_text_dim] (required when the model has the CLIP pathway).
    /// - Returns: the velocity [B, C_out, H, W] in Float32.
    public func forward(_ x: Tensor, t: [Float], capFeats: Tensor, capMask: Tensor, clipPooled: Tensor?) throws -> Tensor {
        let v = try forwardRaw(x, t: t, capFeats: capFeats, capMask: capMask, clipPooled: clipPooled).to(.f32)
        try Backends.check(device)
        return v
    }

    /// The forward pass, output in the compute dtype.
    func forwardRaw(_ x: Tensor, t: [Float], capFeats: Tensor, capMask: Tensor, clipPooled: Tensor?) throws -> Tensor {
        try forwardRaw(x, t: Tensor(t, shape: [t.count]), capFeats: capFeats, capMask: capMask, clipPooled: clipPooled)
    }

    /// The forward pass with the times as a Float32 tensor [B] on any device, output in the compute
    /// dtype. With x, t, the caption features and the pooled vector already on the model's device and
    /// the mask on the CPU, it queues device work only (no upload, no wait), so it can be recorded
    /// (`Backend.record`) and replayed with new x and t.
    func forwardRaw(_ x: Tensor, t: Tensor, capFeats: Tensor, capMask: Tensor, clipPooled: Tensor?) throws -> Tensor {
        let cfg = config, p = cfg.patchSize
        guard x.rank == 4, x.shape[1] == cfg.inChannels, x.shape[2] % p == 0, x.shape[3] % p == 0, x.shape[2] > 0, x.shape[3] > 0 else {
            throw DiTError("NextDiT: latent \(x.shape) should be [B, \(cfg.inChannels), H, W] with H, W positive multiples of \(p)")
        }
        let b = x.shape[0], h = x.shape[2], w = x.shape[3]
        guard t.shape == [b] else { throw DiTError("NextDiT: \(t.count) times for a batch of \(b)") }
        guard capFeats.rank == 3, capFeats.shape[0] == b, capFeats.shape[2] == cfg.capFeatDim else {
            throw DiTError("NextDiT: caption features \(capFeats.shape) should be [\(b), L, \(cfg.capFeatDim)]")
        }
        let l = capFeats.shape[1]
        guard capMask.shape == [b, l] else { throw DiTError("NextDiT: caption mask \(capMask.shape) should be [\(b), \(l)]") }
        let capLens = try NextDiT.captionLengths(capMask)
        if let cd = cfg.clipTextDim {
            guard let c = clipPooled, c.shape == [b, cd] else {
                throw DiTError("NextDiT: pooled CLIP text \(clipPooled.map { "\($0.shape)" } ?? "missing") should be [\(b), \(cd)]")
            }
        }
        let layout = DiTSequenceLayout(capLens: capLens, capPadded: l, rows: h / p, cols: w / p)
        let n = layout.imageTokens

        // 1-4: conditioning (adaLN input c) and caption embedding
        var c = timestepEmbedding(t)
        if let proj = clipProj, let timeText = timeText, let clip = clipPooled {
            let clipEmb = embed(clip, proj, eps: cfg.clipNormEps)
            c = timeText(Tensor.concat([c, clipEmb], axis: 1).silu())
        }
        let cSilu = c.silu()
        var cap = embed(capFeats, capEmbedder, eps: cfg.normEps)

        // 5: patchify ([ph][pw][c] per token, row-major tokens) and embed
        let patches = x.to(xEmbedder.dtype, device: device).reshape([b, cfg.inChannels, h / p, p, w / p, p])
            .permute([0, 2, 4, 3, 5, 1]).reshape([b, n, cfg.patchDim])
        var img = xEmbedder(patches).to(dtype)

        let tables = try layoutTables(layout)
        let (capRope, imgRope, jointRope) = (tables.capRope, tables.imgRope, tables.jointRope)
        let capKeyMask = tables.capKeyMask

        let hook = moduleHook
        try hook?("cap_embedder", cap)
        try hook?("x_embedder", img)
        for (i, blk) in contextRefiner.enumerated() {
            cap = onDevice(blk, group: i) { runBlock($0, cap, mask: capKeyMask, rope: capRope, cSilu: nil) }
            try hook?("context_refiner.\(i)", cap)
        }
        for (i, blk) in noiseRefiner.enumerated() {
            img = onDevice(blk, group: contextRefiner.count + i) { runBlock($0, img, mask: nil, rope: imgRope, cSilu: cSilu) }
            try hook?("noise_refiner.\(i)", img)
        }

        // joint sequence [cap_i real tokens | image | zero padding]
        let s = layout.maxSeq
        var rows: [Tensor] = []
        for i in 0..<b {
            var parts = [cap.select(0, i).narrow(0, start: 0, length: capLens[i]), img.select(0, i)]
            let pad = s - capLens[i] - n
            if pad > 0 { parts.append(Tensor.zeros([pad, cfg.dim], dtype: dtype, device: device)) }
            rows.append(Tensor.concat(parts, axis: 0).unsqueeze(0))
        }
        var hs = Tensor.concat(rows, axis: 0)
        let jointMask = tables.jointMask

        func jointBlocks(_ range: Range<Int>, _ x: Tensor) throws -> Tensor {
            var h = x
            for i in range {
                h = onDevice(layers[i], group: layerGroup(i)) { runBlock($0, h, mask: jointMask, rope: jointRope, cSilu: cSilu) }
                try hook?("layers.\(i)", h)
            }
            return h
        }
        if let cache = stepCache, !layers.isEmpty {
            hs = try cache.run(hs, modulatedInput: { [self] x in firstModulatedInput(x, cSilu: cSilu) },
                               first: { try jointBlocks(0..<1, $0) }, rest: { try jointBlocks(1..<layers.count, $0) })
        } else {
            hs = try jointBlocks(0..<layers.count, hs)
        }

        // 7: final layer
        hs = computed(in: finalDType, hs) { h in
            let scale = finalAdaLN(cSilu.to(finalDType)) + 1
            return finalLinear(h.layerNorm(weight: nil, bias: nil, eps: cfg.finalNormEps) * scale.unsqueeze(1))
        }
        try hook?("final_layer", hs)

        // 8: unpatchify
        var outs: [Tensor] = []
        for i in 0..<b {
            let tok = hs.select(0, i).narrow(0, start: capLens[i], length: n)
            outs.append(tok.reshape([h / p, w / p, p, p, cfg.outChannels]).permute([4, 0, 2, 1, 3])
                .reshape([cfg.outChannels, h, w]).unsqueeze(0))
        }
        return Tensor.concat(outs, axis: 0)
    }

    /// t_embedder: [cos(t f_k), sin(t f_k)] with f_k = exp(-ln(1e4) k / half) in Float32, cast to the
    /// compute dtype, Linear -> SiLU -> Linear. `t` is [B] Float32 on any device.
    func timestepEmbedding(_ t: Tensor) -> Tensor {
        let size = config.frequencySize, b = t.count
        let a = t.to(.f32, device: device).reshape([b, 1]) * timestepFrequencies  // [B, half], t f_k in Float32
        var parts = [a.apply(.cos), a.apply(.sin)]
        if size % 2 == 1 { parts.append(Tensor.zeros([b, 1], device: device)) }
        let emb = Tensor.concat(parts, axis: 1).to(tDType)
        return tMLP2(tMLP0(emb).silu()).to(dtype)
    }

    /// RMSNorm then linear in the module's dtype (input cast there from any dtype and device),
    /// result in the model's dtype.
    func embed(_ x: Tensor, _ m: NormLinear, eps: Float) -> Tensor {
        m.linear(x.to(m.dtype, device: device).rmsNorm(weight: m.norm, eps: eps)).to(dtype)
    }

    /// f_k = exp(-ln(1e4) k / half), [1, half] Float32 on the model's device.
    private(set) lazy var timestepFrequencies: Tensor = {
        let half = config.frequencySize / 2
        let lnMax = Float(Foundation.log(10000.0))
        return Tensor((0..<half).map { k in Foundation.exp(-lnMax * Float(k) / Float(half)) }, shape: [1, half], device: device)
    }()

    /// One JointTransformerBlock, modulated when `cSilu` (SiLU of the adaLN input) is given.
    /// The fused ops round where the unfused composition would (see `Backend`).
    func runBlock(_ blk: Block, _ input: Tensor, mask: Tensor?, rope: (cos: Tensor, sin: Tensor), cSilu: Tensor?) -> Tensor {
        computed(in: blk.dtype, input) { x in
            let eps = config.normEps
            var mod: [Tensor]? = nil
            if let ada = blk.adaLN, let cs = cSilu {
                mod = ada(cs.to(blk.dtype)).chunk(4, axis: 1)  // scale_msa, gate_msa, scale_mlp, gate_mlp: [B, D]
            }
            // a and f are the attention's and the feed-forward's outputs; from an fp8 layer fed codes
            // they may still lack their scales, which the gated residual applies as it reads them
            let a: ScaledProduct
            if blk.qkvTakesCodes {
                let h = x.rmsNormModulateE4M3(weight: blk.attnNorm1, eps: eps, scale: mod?[0])
                a = attention(blk, qkv: blk.qkv.product(h), batch: x.shape[0], length: x.shape[1], mask: mask, rope: rope)
            } else {
                let h = x.rmsNormModulate(weight: blk.attnNorm1, eps: eps, scale: mod?[0])
                a = ScaledProduct(computed(in: blk.attnDType, h) { attention(blk, $0, mask: mask, rope: rope) })
            }
            let out = x.rmsNormGatedResidual(a, weight: blk.attnNorm2, eps: eps, gate: mod?[1])
            let f: ScaledProduct
            if blk.ffnTakesCodes {
                let h2 = out.rmsNormModulateE4M3(weight: blk.ffnNorm1, eps: eps, scale: mod?[2])
                f = feedForward(blk, blk.w1.product(h2), blk.w3.product(h2))
            } else {
                let h2 = out.rmsNormModulate(weight: blk.ffnNorm1, eps: eps, scale: mod?[2])
                f = ScaledProduct(computed(in: blk.ffnDType, h2) { h2 in
                    feedForward(blk, ScaledProduct(blk.w1(h2)), ScaledProduct(blk.w3(h2))).scaled()
                })
            }
            return out.rmsNormGatedResidual(f, weight: blk.ffnNorm2, eps: eps, gate: mod?[3])
        }
    }

    /// The ring group of joint block `i`.
    func layerGroup(_ i: Int) -> Int { contextRefiner.count + noiseRefiner.count + i }

    /// Runs `body` with `blk` on the device: itself when resident; with `--offload`, the block over
    /// the device copy of its ring group (queued ahead), released when `body` has queued its work.
    func onDevice<T>(_ blk: Block, group: Int, _ body: (Block) throws -> T) rethrows -> T {
        guard let ring = streamedBlocks else { return try body(blk) }
        return try ring.with(group) { try body(blk.rebound($0, device: device)) }
    }

    /// TeaCache's signal: the first joint block's modulated input, RMSNorm(x) (1 + scale_msa).
    func firstModulatedInput(_ x: Tensor, cSilu: Tensor) -> Tensor {
        onDevice(layers[0], group: layerGroup(0)) { blk in firstModulatedInput(x, cSilu: cSilu, blk) }
    }

    func firstModulatedInput(_ x: Tensor, cSilu: Tensor, _ blk: Block) -> Tensor {
        computed(in: blk.dtype, x) { x in
            let scale = blk.adaLN.map { $0(cSilu.to(blk.dtype)).chunk(4, axis: 1)[0] }
            return x.rmsNormModulate(weight: blk.attnNorm1, eps: config.normEps, scale: scale)
        }
    }

    /// w2(SwiGLU(w1 x, w3 x)) from the gate and up projections.
    func feedForward(_ blk: Block, _ gate: ScaledProduct, _ up: ScaledProduct) -> ScaledProduct {
        blk.w2TakesCodes ? blk.w2.product(gate.swigluE4M3(up)) : ScaledProduct(blk.w2(gate.scaled().swiglu(up.scaled())))
    }

    func attention(_ blk: Block, _ x: Tensor, mask: Tensor?, rope: (cos: Tensor, sin: Tensor)) -> Tensor {
        attention(blk, qkv: ScaledProduct(blk.qkv(x)), batch: x.shape[0], length: x.shape[1], mask: mask, rope: rope).scaled()
    }

    /// Attention from the fused projection qkv [B, L, (Hq + 2 Hkv) * D], through the out projection.
    func attention(_ blk: Block, qkv: ScaledProduct, batch b: Int, length l: Int, mask: Tensor?,
                   rope: (cos: Tensor, sin: Tensor)) -> ScaledProduct {
        let hd = config.headDim, hq = config.nHeads, hkv = config.nKVHeads
        let (q, k, v) = qkv.qkvNormRope(heads: hq, kvHeads: hkv, qNorm: blk.qNorm, kNorm: blk.kNorm, eps: config.qkNormEps,
                                        cos: rope.cos, sin: rope.sin, layout: .interleaved)
        let o = q.attention(k: k, v: v, options: AttentionOptions(keyPaddingMask: mask)).reshape([b, l, hq * hd])
        return blk.outTakesCodes ? blk.out.product(o.quantizedRowsE4M3()) : ScaledProduct(blk.out(o))
    }

    // MARK: helpers

    typealias RoPETables = (cos: Tensor, sin: Tensor)
    /// What a sequence layout fixes: the caption, image and joint RoPE tables and the key padding
    /// masks of the caption refiner and the joint layers (nil where no sample is padded).
    struct LayoutTables {
        let capRope: RoPETables, imgRope: RoPETables, jointRope: RoPETables
        let capKeyMask: Tensor?, jointMask: Tensor?
    }
    private var layoutCache: [DiTSequenceLayout: LayoutTables] = [:]
    private let layoutLock = NSLock()

    /// The layout's tables, on the model's device. Every step of a sampling run has the same layout,
    /// so they are built and uploaded once (a few recent layouts are kept); a recorded forward pass
    /// then finds them without uploading.
    func layoutTables(_ layout: DiTSequenceLayout) throws -> LayoutTables {
        layoutLock.lock(); defer { layoutLock.unlock() }
        if let t = layoutCache[layout] { return t }
        func onDevice(_ t: RoPETables) -> RoPETables { (t.cos.to(device: device), t.sin.to(device: device)) }
        let l = layout.capPadded
        let t = LayoutTables(
            capRope: onDevice(try rope.tables(layout.captionPositions())), imgRope: onDevice(try rope.tables(layout.imagePositions())),
            jointRope: onDevice(try rope.tables(layout.jointPositions())),
            capKeyMask: layout.capLens.allSatisfy({ $0 == l }) ? nil : NextDiT.prefixMask(layout.capLens, length: l).to(device: device),
            jointMask: Set(layout.seqLens).count == 1 ? nil : NextDiT.prefixMask(layout.seqLens, length: layout.maxSeq).to(device: device))
        if layoutCache.count >= 4 { layoutCache.removeAll() }
        layoutCache[layout] = t
        return t
    }

    /// Real caption tokens per sample; the mask must be right-padded (ones, then zeros).
    static func captionLengths(_ mask: Tensor) throws -> [Int] {
        let b = mask.shape[0], l = mask.shape[1]
        let v = mask.toFloats()
        return try (0..<b).map { i in
            let row = v[(i * l)..<((i + 1) * l)].map { $0 != 0 }
            let n = row.prefix(while: { $0 }).count
            if row[n...].contains(true) {
                throw DiTError("NextDiT: caption mask row \(i) is not right-padded (real tokens must come first)")
            }
            return n
        }
    }

    /// [B, length] Float32 mask, 1 for the first `lens[i]` positions.
    static func prefixMask(_ lens: [Int], length: Int) -> Tensor {
        var v = [Float](repeating: 0, count: lens.count * length)
        for (i, n) in lens.enumerated() { for k in 0..<min(n, length) { v[i * length + k] = 1 } }
        return Tensor(v, shape: [lens.count, length])
    }
}
