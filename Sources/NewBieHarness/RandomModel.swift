import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor
import NewBieText
import NewBieWeights

// A NewBie with random weights, written as files in the official Hugging Face layout so that the
// real loaders (config.json parsing, safetensors / sharded safetensors, naming checks, LoRA
// merging, dtype casts) and the real pipeline run on it exactly as on the published checkpoint.
// `newbie bench-pipeline` times a whole generation on it; at `full` size it has the published
// configurations, at `tiny` size TinyModel's toy ones (the same code at a size the CPU runs in a
// test).

/// The sizes of a random NewBie: each part's configuration and the tokenizer sizes.
public struct RandomModelSpec: Sendable, Equatable {
    public enum Scale: String, Sendable, CaseIterable, Codable {
        /// TinyModel's toy configurations (DiT dim 48, Gemma 3 with 3 layers, Jina with 2, a 4-level VAE).
        case tiny
        /// The published configurations: NextDiT 3.49 B, the Gemma 3 4B text model
        /// (34 layers), the Jina CLIP v2 text tower (24 layers), the FLUX.1-dev
        /// VAE.
        case full
    }

    public var scale: Scale
    public var dit: NextDiTConfig
    /// Every layer is written (as in the published checkpoint); NewBie runs all but the last.
    public var gemma: Gemma3TextConfig
    public var jina: JinaConfig
    public var vae: VAEConfig
    /// Vocabulary of the written tokenizers: the committed small tokenizers padded with filler
    /// pieces to this size (nil: the small tokenizer as it is).
    public var gemmaTokenizerSize: Int?
    public var jinaTokenizerSize: Int?
    /// Depth cap applied by `cappingDepth` (nil: the configuration's own depth).
    public private(set) var maxLayers: Int?

    public init(scale: Scale) {
        self.scale = scale
        switch scale {
        case .tiny:
            dit = TinyModel.ditConfig
            var g = Gemma3TextConfig()
            g.vocabSize = TinyModel.gemmaVocab; g.hiddenSize = TinyModel.gemmaHidden; g.intermediateSize = 64
            g.numHiddenLayers = TinyModel.gemmaLayers; g.numAttentionHeads = 2; g.numKeyValueHeads = 1; g.headDim = 16
            g.queryPreAttnScalar = 16; g.slidingWindow = 4; g.ropeScalingGlobal = 8
            g.layerTypes = Gemma3TextConfig.layerTypes(count: TinyModel.gemmaLayers, pattern: 2)
            gemma = g
            jina = JinaConfig(vocabSize: TinyModel.jinaVocab, hidden: TinyModel.jinaHidden, layers: TinyModel.jinaLayers,
                              heads: TinyModel.jinaHidden / 64, intermediate: 128)
            vae = TinyModel.vaeConfig
            gemmaTokenizerSize = nil
            jinaTokenizerSize = nil
        case .full:
            dit = .newBieExp01
            gemma = .gemma3_4B
            jina = .clipV2
            vae = .flux1Dev
            // the real tokenizers: Gemma 3 has 262,144 pieces (the embedding has 262,208 rows),
            // XLM-R 250,002 (<mask> last)
            gemmaTokenizerSize = 262_144
            jinaTokenizerSize = jina.vocabSize
        }
    }

    /// The same widths with at most `n` layers in every stack that NewBie runs (DiT main layers
    /// and each refiner, Jina, Gemma's layers before hidden_states[-2]): a quick check of the full
    /// widths. The VAE is left whole.
    public func cappingDepth(_ n: Int) -> RandomModelSpec {
        var s = self
        let n = Swift.max(1, n)
        s.dit.nLayers = Swift.min(s.dit.nLayers, n)
        s.dit.nNoiseRefiner = Swift.min(s.dit.nNoiseRefiner, n)
        s.dit.nContextRefiner = Swift.min(s.dit.nContextRefiner, n)
        s.jina.layers = Swift.min(s.jina.layers, n)
        // NewBie takes hidden_states[-2]: n layers run when n + 1 exist
        let gl = Swift.min(s.gemma.numHiddenLayers, n + 1)
        let pattern = s.scale == .tiny ? 2 : 6
        s.gemma.numHiddenLayers = gl
        s.gemma.layerTypes = Gemma3TextConfig.layerTypes(count: gl, pattern: pattern)
        s.maxLayers = n
        return s
    }

    /// One line per part, also the fingerprint that decides whether a written model can be reused.
    public var summary: [String] {
        let g = gemma, j = jina, v = vae
        return [
            "DiT: \(dit) = \(formatCount(parameters.dit)) parameters",
            "Gemma 3: hidden \(g.hiddenSize), \(g.numHiddenLayers) layers (\(g.numHiddenLayers - 1) run), heads \(g.numAttentionHeads)/\(g.numKeyValueHeads) kv x \(g.headDim), ffn \(g.intermediateSize), vocab \(g.vocabSize) = \(formatCount(parameters.gemma)) parameters",
            "Jina CLIP v2 text: hidden \(j.hidden), \(j.layers) layers, heads \(j.heads), ffn \(j.intermediate), vocab \(j.vocabSize), LoRA rank \(j.loraRank) = \(formatCount(parameters.jina)) parameters",
            "VAE: channels \(v.blockOutChannels), \(v.layersPerBlock) ResNets per level, latent \(v.latentChannels) = \(formatCount(parameters.vaeDecoder)) decoder + \(formatCount(parameters.vae - parameters.vaeDecoder)) encoder parameters",
            "tokenizers: Gemma \(gemmaTokenizerSize.map(String.init) ?? "small fixture"), XLM-R \(jinaTokenizerSize.map(String.init) ?? "small fixture")",
        ]
    }

    /// Parameters written per part (the DiT's unused norm_final and Gemma's last layer included).
    /// (A configuration that cannot be planned counts 0; `RandomModel.write` reports why.)
    public var parameters: (dit: Int, gemma: Int, jina: Int, vae: Int, vaeDecoder: Int) {
        func count(_ t: [RandomModel.PlannedTensor]?) -> Int { (t ?? []).reduce(0) { $0 + $1.count } }
        let decoder = ((try? VAENaming.expectedTensors(vae, parts: .decoder)) ?? []).reduce(0) { $0 + $1.shape.reduce(1, *) }
        return (count(try? RandomModel.ditTensors(self)), count(try? RandomModel.gemmaTensors(self)),
                count(try? RandomModel.jinaTensors(self)), count(try? RandomModel.vaeTensors(self)), decoder)
    }
}

func formatCount(_ n: Int) -> String {
    if n >= 1_000_000_000 { return String(format: "%.3f B", Double(n) / 1e9) }
    if n >= 1_000_000 { return String(format: "%.1f M", Double(n) / 1e6) }
    if n >= 1_000 { return String(format: "%.1f k", Double(n) / 1e3) }
    return "\(n)"
}

/// The values of the random weights: uniform, from a counter-based hash of (seed, tensor name,
/// element index), so any element can be made on any thread in any order and the same seed gives
/// the same file bytes whatever the thread count or the shard split.
public enum RandomWeights {
    /// SplitMix64's finaliser.
    @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The key of one tensor: the seed and the tensor's (published) name.
    public static func key(seed: UInt64, name: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return mix(h ^ mix(seed &+ 0x9E37_79B9_7F4A_7C15))
    }

    /// Element `i` of the tensor with key `key`: uniform in [-1, 1).
    @inline(__always) public static func unit(_ key: UInt64, _ i: Int) -> Float {
        let h = mix(key &+ UInt64(truncatingIfNeeded: i) &* 0x9E37_79B9_7F4A_7C15)
        return Float(Int32(truncatingIfNeeded: h >> 32)) * (1 / 2_147_483_648)
    }

    /// Fills elements `range` of the contiguous CPU tensor `t` (f32, bf16 or f16) with
    /// `center + halfWidth * unit(key, i)`, rounded to its dtype.
    public static func fill(_ t: Tensor, key: UInt64, center: Float, halfWidth: Float, range: Range<Int>) {
        let p = t.hostPointer
        switch t.dtype {
        case .f32:
            let d = p.assumingMemoryBound(to: Float.self)
            for i in range { d[i] = center + halfWidth * unit(key, i) }
        case .bf16:
            let d = p.assumingMemoryBound(to: UInt16.self)
            for i in range { d[i] = Half.bf16Bits(center + halfWidth * unit(key, i)) }
        case .f16:
            let d = p.assumingMemoryBound(to: UInt16.self)
            for i in range { d[i] = Half.f16Bits(center + halfWidth * unit(key, i)) }
        default:
            preconditionFailure("random weights are f32, bf16 or f16, not \(t.dtype)")
        }
    }

    /// Makes the tensors of `plan` (contiguous, on the CPU, in `dtype`) on every core: the work
    /// is cut into pieces of about `chunk` elements across all tensors.
    public static func make(_ plan: [RandomModel.PlannedTensor], dtype: DType, seed: UInt64, chunk: Int = 1 << 20) -> [Tensor] {
        let tensors = plan.map { Tensor.empty($0.shape, dtype: dtype) }
        var work: [(tensor: Int, range: Range<Int>)] = []
        for (k, p) in plan.enumerated() {
            var start = 0
            while start < p.count {
                let end = Swift.min(p.count, start + chunk)
                work.append((k, start..<end))
                start = end
            }
        }
        let keys = plan.map { key(seed: seed, name: $0.name) }
        let ranges = plan.map { $0.role.range }
        DispatchQueue.concurrentPerform(iterations: work.count) { w in
            let (k, r) = work[w]
            fill(tensors[k], key: keys[k], center: ranges[k].center, halfWidth: ranges[k].halfWidth, range: r)
        }
        return tensors
    }
}

/// Writes a `RandomModelSpec` as files (see the top of this file).
public enum RandomModel {
    /// What a parameter is, which decides the range of its random values.
    public enum Role: Sendable, Equatable {
        /// A linear / conv / embedding weight: uniform with standard deviation 1/sqrt(fan_in)
        /// (fan_in = the product of all dimensions but the first), so every layer keeps its
        /// activations near unit size (at full size 0.01-0.06, the 0.02 of usual initialisations).
        case matrix(fanIn: Int)
        /// A bias: uniform with standard deviation 0.02.
        case bias
        /// A norm weight: `center` (1, or 0 for Gemma's (1 + w) norms) plus uniform +-0.1.
        case norm(center: Float)
        /// A LoRA factor (Jina): uniform with standard deviation 0.02.
        case lora

        /// center and half width of the uniform distribution (std = half width / sqrt 3).
        public var range: (center: Float, halfWidth: Float) {
            let root3 = Float(3).squareRoot()
            switch self {
            case .matrix(let fanIn): return (0, root3 / Float(Swift.max(fanIn, 1)).squareRoot())
            case .bias, .lora: return (0, 0.02 * root3)
            case .norm(let c): return (c, 0.1)
            }
        }
    }

    /// One tensor to write, under its published name.
    public struct PlannedTensor: Sendable, Equatable {
        public let name: String
        public let shape: [Int]
        public let role: Role
        public var count: Int { shape.reduce(1, *) }
    }

    static func role(_ name: String, _ shape: [Int], normCenter: Float) -> Role {
        if name.contains("lora_") { return .lora }
        if shape.count >= 2 { return .matrix(fanIn: shape.dropFirst().reduce(1, *)) }
        if name.hasSuffix(".bias") { return .bias }
        return .norm(center: normCenter)
    }

    static func planned(_ specs: [TensorSpec], normCenter: Float, name: (String) -> String = { $0 }) -> [PlannedTensor] {
        specs.map { PlannedTensor(name: name($0.name), shape: $0.shape, role: role($0.name, $0.shape, normCenter: normCenter)) }
    }

    /// transformer/: official names, no prefix, with the unused norm_final the checkpoint carries.
    static func ditTensors(_ s: RandomModelSpec) throws -> [PlannedTensor] {
        planned(try s.dit.expectedTensors() + [TensorSpec("norm_final.weight", [s.dit.dim])], normCenter: 1)
    }

    /// text_encoder/: the whole Gemma 3 text model as Gemma3ForConditionalGeneration saves it
    /// (`language_model.model.*`), every layer and the final norm (NewBie skips the last two).
    static func gemmaTensors(_ s: RandomModelSpec) throws -> [PlannedTensor] {
        planned(try GemmaNaming.expected(s.gemma, layers: s.gemma.numHiddenLayers, finalNorm: true), normCenter: 0) {
            "language_model.model." + $0
        }
    }

    /// clip_model/: the jina-clip-v2 text tower with its retrieval.query LoRA (official naming).
    static func jinaTensors(_ s: RandomModelSpec) throws -> [PlannedTensor] {
        planned(try JinaLayout.official.expected(s.jina), normCenter: 1) { JinaLayout.publishedName($0, layout: .official) }
    }

    /// vae/: diffusers AutoencoderKL, encoder and decoder (the decoding stage loads the decoder).
    static func vaeTensors(_ s: RandomModelSpec) throws -> [PlannedTensor] {
        planned(try VAENaming.expectedTensors(s.vae, parts: .all), normCenter: 1)
    }

    /// The file that marks a folder as a random model this code wrote (and when it is complete).
    public static let markerFile = "random-model.json"

    /// What `write` did.
    public struct WriteResult: Codable, Sendable {
        public var dir: String
        /// false when a complete model of the same spec, seed and dtype was already there.
        public var written: Bool
        public var seconds: Double
        public var bytes: Int
        public var files: Int
    }

    /// The marker's content for a spec: what must match for a written model to be reused.
    static func fingerprint(_ spec: RandomModelSpec, dtype: DType, seed: UInt64) -> [String: Any] {
        ["scale": spec.scale.rawValue, "seed": "\(seed)", "dtype": dtype.description, "spec": spec.summary,
         "max_layers": spec.maxLayers.map { $0 as Any } ?? NSNull(), "format": 1]
    }

    /// The fingerprint as one string (JSON with sorted keys), stored in the marker.
    static func fingerprintString(_ spec: RandomModelSpec, dtype: DType, seed: UInt64) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: fingerprint(spec, dtype: dtype, seed: seed), options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Whether `dir` holds a complete random model of this spec, seed and dtype.
    public static func isWritten(_ spec: RandomModelSpec, dtype: DType, seed: UInt64, at dir: String) -> Bool {
        let marker = (dir as NSString).appendingPathComponent(markerFile)
        guard let data = FileManager.default.contents(atPath: marker),
              let m = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              (m["complete"] as? Bool) == true else { return false }
        return (m["fingerprint"] as? String) == fingerprintString(spec, dtype: dtype, seed: seed)
    }

    /// Writes the random model to `dir` (official layout: transformer/, text_encoder/,
    /// clip_model/, vae/, model_index.json; tokenizer.json beside Gemma and Jina), unless it is
    /// already there (`rewrite` false). A folder that holds anything but a model this code wrote
    /// is refused, so a real checkpoint is never overwritten.
    ///
    /// - Parameters:
    ///   - dtype: storage dtype of the weights (bf16 like the published checkpoints: about 16 GB at
    ///     full size).
    ///   - shardBytes: the DiT and Gemma are split into shards of about this size with a
    ///     `*.safetensors.index.json`, as Hugging Face saves large models (only one shard is in
    ///     memory at a time).
    ///   - fixtures: the repository's Tests/Fixtures (the small tokenizers the written ones are
    ///     made from); nil looks for it like `TinyModel.defaultTokenizers`.
    @discardableResult
    public static func write(_ spec: RandomModelSpec, to dir: String, dtype: DType = .bf16, seed: UInt64 = 0,
                             rewrite: Bool = false, shardBytes: Int = 2 << 30, fixtures: String? = nil,
                             log: (String) -> Void = { _ in }) throws -> WriteResult {
        guard [.f32, .bf16, .f16].contains(dtype) else { throw PipelineError("random weights: dtype \(dtype) (use fp32, bf16 or fp16)") }
        let fm = FileManager.default
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let t0 = clock()
        if !rewrite && isWritten(spec, dtype: dtype, seed: seed, at: dir) {
            let bytes = (fm.enumerator(atPath: dir)?.allObjects as? [String] ?? []).reduce(0) { sum, f in
                sum + ((try? fm.attributesOfItem(atPath: (dir as NSString).appendingPathComponent(f))[.size] as? Int) ?? 0)
            }
            return WriteResult(dir: dir, written: false, seconds: clock() - t0, bytes: bytes, files: 0)
        }
        let toks = try tokenizerSources(fixtures)

        var isDir: ObjCBool = false
        if fm.fileExists(atPath: dir, isDirectory: &isDir) {
            guard isDir.boolValue else { throw PipelineError("\(dir): exists and is not a folder") }
            let entries = try fm.contentsOfDirectory(atPath: dir)
            guard entries.isEmpty || entries.contains(markerFile) else {
                throw PipelineError("\(dir): the folder holds files but no \(markerFile), so it is not a random model written by newbie; give an empty or new folder (nothing is overwritten)")
            }
            // a model of other sizes: remove what this code writes, so no stale shard or index stays
            if entries.contains(markerFile) { log("replacing the random model in \(dir) (other sizes, seed or dtype, or --rewrite)") }
            for slot in ModelSlot.allCases {
                let sub = (dir as NSString).appendingPathComponent(slot.folder)
                for f in (try? fm.contentsOfDirectory(atPath: sub)) ?? []
                where f.hasSuffix(".safetensors") || f.hasSuffix(".safetensors.index.json") || f == "config.json" || f == "tokenizer.json" {
                    try fm.removeItem(atPath: (sub as NSString).appendingPathComponent(f))
                }
            }
        }
        let root = URL(fileURLWithPath: dir)
        for slot in ModelSlot.allCases {
            try fm.createDirectory(at: root.appendingPathComponent(slot.folder), withIntermediateDirectories: true)
        }
        var marker = fingerprint(spec, dtype: dtype, seed: seed)
        marker["note"] = note(spec, seed: seed)
        marker["fingerprint"] = fingerprintString(spec, dtype: dtype, seed: seed)
        marker["complete"] = false
        try writeJSON(marker, root.appendingPathComponent(markerFile))

        let metadata = ["note": note(spec, seed: seed), "format": "pt"]
        var bytes = 0, files = 0
        func component(_ plan: [PlannedTensor], _ folder: String, _ base: String, shard: Bool) throws {
            let t = clock()
            let (b, n) = try writeTensors(plan, folder: root.appendingPathComponent(folder), base: base, dtype: dtype, seed: seed,
                                          shardBytes: shard ? shardBytes : Int.max, metadata: metadata)
            bytes += b; files += n
            log(String(format: "  %@/: %d tensors, %@ in %d file%@, %.1f s", folder, plan.count, formatBytes(b), n, n == 1 ? "" : "s", clock() - t))
        }
        try component(try ditTensors(spec), "transformer", "diffusion_pytorch_model", shard: true)
        try writeJSON(ditConfigJSON(spec), root.appendingPathComponent("transformer/config.json"))

        try component(try gemmaTensors(spec), "text_encoder", "model", shard: true)
        try writeJSON(gemmaConfigJSON(spec), root.appendingPathComponent("text_encoder/config.json"))
        let gtok = try spec.gemmaTokenizerSize.map { try synthesizeGemmaTokenizer(from: toks.gemma, size: $0) }
            ?? Data(contentsOf: URL(fileURLWithPath: toks.gemma))
        try gtok.write(to: root.appendingPathComponent("text_encoder/tokenizer.json"))

        try component(try jinaTensors(spec), "clip_model", "model", shard: true)
        try writeJSON(jinaConfigJSON(spec), root.appendingPathComponent("clip_model/config.json"))
        let jtok = try spec.jinaTokenizerSize.map { try synthesizeJinaTokenizer(from: toks.jina, size: $0) }
            ?? Data(contentsOf: URL(fileURLWithPath: toks.jina))
        try jtok.write(to: root.appendingPathComponent("clip_model/tokenizer.json"))

        // the VAE loader reads one file (diffusion_pytorch_model.safetensors)
        try component(try vaeTensors(spec), "vae", "diffusion_pytorch_model", shard: false)
        try writeJSON(vaeConfigJSON(spec), root.appendingPathComponent("vae/config.json"))

        try writeJSON(["_class_name": "NewbiePipeline", "_note": note(spec, seed: seed),
                       "transformer": ["transformer", "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP"],
                       "text_encoder": ["text_encoder", "Gemma3ForConditionalGeneration"],
                       "tokenizer": ["text_encoder", "AutoTokenizer"],
                       "clip_model": ["clip_model", "JinaCLIPModel"], "clip_tokenizer": ["clip_model", "AutoTokenizer"],
                       "vae": ["vae", "AutoencoderKL"]] as [String: Any], root.appendingPathComponent("model_index.json"))
        let seconds = clock() - t0
        marker["complete"] = true
        marker["bytes"] = bytes
        marker["write_seconds"] = seconds
        try writeJSON(marker, root.appendingPathComponent(markerFile))
        return WriteResult(dir: dir, written: true, seconds: seconds, bytes: bytes, files: files)
    }

    static func note(_ spec: RandomModelSpec, seed: UInt64) -> String {
        "NewBie random model, \(spec.scale.rawValue) size (newbie bench-pipeline, seed \(seed)): random weights and synthetic tokenizers, the images mean nothing"
    }

    /// Writes `plan` into `folder` as `base.safetensors`, or, above `shardBytes`, as
    /// `base-0000k-of-0000n.safetensors` shards with `base.safetensors.index.json`. Returns the
    /// bytes of tensor data and the number of files.
    static func writeTensors(_ plan: [PlannedTensor], folder: URL, base: String, dtype: DType, seed: UInt64,
                             shardBytes: Int, metadata: [String: String]) throws -> (Int, Int) {
        var shards: [[PlannedTensor]] = [[]]
        var size = 0, total = 0
        for p in plan {
            let b = p.count * dtype.byteSize
            if size > 0 && size + b > shardBytes { shards.append([]); size = 0 }
            shards[shards.count - 1].append(p)
            size += b; total += b
        }
        let n = shards.count
        var weightMap: [String: String] = [:]
        for (k, shard) in shards.enumerated() {
            let file = n == 1 ? "\(base).safetensors" : String(format: "%@-%05d-of-%05d.safetensors", base, k + 1, n)
            let tensors = RandomWeights.make(shard, dtype: dtype, seed: seed)
            try SafeTensorsWriter.write(Array(zip(shard.map(\.name), tensors)), metadata: metadata,
                                        to: folder.appendingPathComponent(file))
            for p in shard { weightMap[p.name] = file }
        }
        if n > 1 {
            try writeJSON(["metadata": ["total_size": total], "weight_map": weightMap] as [String: Any],
                          folder.appendingPathComponent("\(base).safetensors.index.json"))
        }
        return (total, n + (n > 1 ? 1 : 0))
    }

    static func writeJSON(_ obj: Any, _ url: URL) throws {
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: url)
    }

    // MARK: configs (the keys the published files have, read back by the loaders)

    static func ditConfigJSON(_ s: RandomModelSpec) -> [String: Any] { s.dit.officialConfigJSON(extra: ["_note": note(s, seed: 0)]) }
    static func gemmaConfigJSON(_ s: RandomModelSpec) -> [String: Any] { s.gemma.huggingFaceConfigJSON(extra: ["_note": note(s, seed: 0)]) }
    static func jinaConfigJSON(_ s: RandomModelSpec) -> [String: Any] { s.jina.huggingFaceConfigJSON(extra: ["_note": note(s, seed: 0)]) }
    static func vaeConfigJSON(_ s: RandomModelSpec) -> [String: Any] { s.vae.diffusersConfigJSON(extra: ["_note": note(s, seed: 0)]) }

    // MARK: tokenizers

    /// The committed small tokenizers (Tests/Fixtures/gemma/small_tokenizer.json,
    /// Tests/Fixtures/jina/tokenizer.json) in `fixtures`, or found like TinyModel finds them.
    public static func tokenizerSources(_ fixtures: String?) throws -> (gemma: String, jina: String) {
        if let f = fixtures {
            let t = (f + "/gemma/small_tokenizer.json", f + "/jina/tokenizer.json")
            for p in [t.0, t.1] where !FileManager.default.fileExists(atPath: p) {
                throw PipelineError("--fixtures \(f): no \(p) (give the repository's Tests/Fixtures folder)")
            }
            return t
        }
        guard let t = TinyModel.defaultTokenizers() else {
            throw PipelineError("cannot find Tests/Fixtures (the committed small tokenizers the random model's tokenizers are made from); run from the repository root or give --fixtures PATH")
        }
        return t
    }

    /// A Gemma tokenizer.json of `size` pieces: the small BPE tokenizer (its pieces, merges,
    /// special tokens and ids 0-4 as in Gemma 3: <pad> <eos> <bos> <unk> <mask>) with filler
    /// pieces `<synthetic_N>` up to `size`. No text ever produces a filler, so the token ids a
    /// prompt gets are the small tokenizer's (arbitrary as far as the model is concerned), and
    /// the token counts are those of a small-vocabulary BPE (more tokens per word than Gemma's).
    public static func synthesizeGemmaTokenizer(from path: String, size: Int) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path),
              var root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              var model = root["model"] as? [String: Any], var vocab = model["vocab"] as? [String: Any] else {
            throw PipelineError("\(path): not a BPE tokenizer.json")
        }
        let n = vocab.count
        guard size >= n else { throw PipelineError("\(path): \(n) pieces, more than the \(size) asked for") }
        vocab.reserveCapacity(size)
        for id in n..<size { vocab["<synthetic_\(id)>"] = id }
        model["vocab"] = vocab
        root["model"] = model
        return try JSONSerialization.data(withJSONObject: root, options: [])
    }

    /// An XLM-R (Jina) tokenizer.json of `size` pieces: the small Unigram tokenizer with filler
    /// pieces inserted before its last piece `<mask>`, which moves to id size - 1 as in XLM-R
    /// (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 250001). The fillers are private-use characters
    /// no text holds, scored at the lowest existing score, so segmentation is the small
    /// tokenizer's.
    public static func synthesizeJinaTokenizer(from path: String, size: Int) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path),
              var root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              var model = root["model"] as? [String: Any], var vocab = model["vocab"] as? [[Any]],
              let last = vocab.last, (last.first as? String) == "<mask>" else {
            throw PipelineError("\(path): not a Unigram tokenizer.json ending in <mask>")
        }
        let n = vocab.count
        guard size >= n else { throw PipelineError("\(path): \(n) pieces, more than the \(size) asked for") }
        let minScore = vocab.compactMap { ($0.count == 2 ? $0[1] as? NSNumber : nil)?.doubleValue }.min() ?? -20
        vocab.removeLast()
        vocab.reserveCapacity(size)
        for id in (n - 1)..<(size - 1) { vocab.append(["\u{F0000}\(id)", minScore]) }
        vocab.append(last)
        model["vocab"] = vocab
        root["model"] = model
        if var added = root["added_tokens"] as? [[String: Any]] {
            for i in added.indices where (added[i]["content"] as? String) == "<mask>" { added[i]["id"] = size - 1 }
            root["added_tokens"] = added
        }
        return try JSONSerialization.data(withJSONObject: root, options: [])
    }
}
