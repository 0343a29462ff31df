import Foundation
import NewBieDiffusion
import NewBieImage
import NewBieTensor
import NewBieText
import NewBieWeights

// The pipeline as three stages with plain values between them:
//
//   prompt --TextStage--> EncodedPrompt --DenoiseStage--> latent [1, 16, H/8, W/8] --DecodeStage--> RGBImage
//
// Each stage loads its models when it is built and frees them when it is released, so a run holds
// the text encoders, then the DiT, then the VAE. `newbie encode | denoise | decode` run one stage
// each through safetensors files; `newbie generate` runs the three in a row in memory.

/// One prompt's conditioning for the DiT, conditional and unconditional (negative) branch, with
/// what produced it. Tensors are Float32 on the CPU.
public struct EncodedPrompt: @unchecked Sendable {
    public var prompt: String
    public var negativePrompt: String
    /// The system prompt Gemma got in front of `prompt` (resolved, "" for none).
    public var systemPrompt: String
    public var cond: DiTConditioning
    public var uncond: DiTConditioning

    public init(prompt: String, negativePrompt: String, systemPrompt: String, cond: DiTConditioning, uncond: DiTConditioning) {
        self.prompt = prompt; self.negativePrompt = negativePrompt; self.systemPrompt = systemPrompt
        self.cond = cond; self.uncond = uncond
    }

    /// Real Gemma tokens of the conditional / unconditional branch.
    public var condTokens: Int { Int(cond.capMask.toFloats().reduce(0, +)) }
    public var uncondTokens: Int { Int(uncond.capMask.toFloats().reduce(0, +)) }

    // MARK: safetensors form (the `newbie encode` file)

    public func tensors() -> [(String, Tensor)] {
        var t: [(String, Tensor)] = [("cap_feats", cond.capFeats), ("cap_mask", cond.capMask)]
        if let c = cond.clipPooled { t.append(("clip_pooled", c)) }
        t += [("uncond_cap_feats", uncond.capFeats), ("uncond_cap_mask", uncond.capMask)]
        if let c = uncond.clipPooled { t.append(("uncond_clip_pooled", c)) }
        return t
    }

    public var metadata: [String: String] {
        [MetadataKey.prompt: prompt, MetadataKey.negativePrompt: negativePrompt, MetadataKey.systemPrompt: systemPrompt]
    }

    /// Reads a file written by `newbie encode`.
    public static func read(_ path: String) throws -> (EncodedPrompt, [String: String]) {
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: path) } catch {
            throw PipelineError("\(path): not a readable safetensors file (\(error))")
        }
        func t(_ n: String) throws -> Tensor {
            guard file.names.contains(n) else {
                throw PipelineError("\(path): no tensor \"\(n)\"; expected a file written by `newbie encode` (cap_feats, cap_mask, clip_pooled, uncond_*)")
            }
            return try file.tensor(n).to(.f32)
        }
        func opt(_ n: String) throws -> Tensor? { file.names.contains(n) ? try t(n) : nil }
        let cond = DiTConditioning(capFeats: try t("cap_feats"), capMask: try t("cap_mask"), clipPooled: try opt("clip_pooled"))
        let uncond = DiTConditioning(capFeats: try t("uncond_cap_feats"), capMask: try t("uncond_cap_mask"),
                                     clipPooled: try opt("uncond_clip_pooled"))
        for (name, c) in [("cap", cond), ("uncond_cap", uncond)] {
            guard c.capFeats.rank == 3, c.capFeats.shape[0] == 1, c.capMask.shape == [1, c.capFeats.shape[1]] else {
                throw PipelineError("\(path): \(name)_feats \(c.capFeats.shape) / \(name)_mask \(c.capMask.shape) should be [1, L, D] / [1, L]")
            }
        }
        let md = file.metadata
        let e = EncodedPrompt(prompt: md[MetadataKey.prompt] ?? "", negativePrompt: md[MetadataKey.negativePrompt] ?? "",
                              systemPrompt: md[MetadataKey.systemPrompt] ?? "", cond: cond, uncond: uncond)
        return (e, md)
    }
}

/// Metadata keys shared by the stage files and the PNG text chunks.
public enum MetadataKey {
    public static let prompt = "newbie:prompt"
    public static let negativePrompt = "newbie:negative_prompt"
    public static let systemPrompt = "newbie:system_prompt"
    public static let width = "newbie:width"
    public static let height = "newbie:height"
    public static let steps = "newbie:steps"
    public static let sampler = "newbie:sampler"
    /// ComfyUI's scheduler, when the run used one.
    public static let scheduler = "newbie:scheduler"
    /// `--preset` (demo, sample, comfyui), when given.
    public static let preset = "newbie:preset"
    public static let shift = "newbie:shift"
    public static let cfg = "newbie:cfg"
    public static let cfgTrunc = "newbie:cfg_trunc"
    public static let renorm = "newbie:renorm"
    public static let seed = "newbie:seed"
    public static let rng = "newbie:rng"
    public static let strength = "newbie:strength"
    public static let initImage = "newbie:init_image"
    /// The step cache as `mode:threshold` (`teacache:0.3`); absent when off.
    public static let stepCache = "newbie:step_cache"
    /// The resolved precision policy (`--precision` form).
    public static let precision = "newbie:precision"
    public static let device = "newbie:device"
    /// `--quantize` as resolved (`dit=int8,gemma=int8`); absent when nothing was quantized.
    public static let quantize = "newbie:quantize"
    /// The adapters (`file:strength;...`, in `--lora` order) and how they were applied.
    public static let lora = "newbie:lora"
    public static let loraMode = "newbie:lora_mode"
    /// How the decoded image became 8-bit pixels (`truncate` or `round`).
    public static let pixelRounding = "newbie:pixel_rounding"
    public static let command = "newbie:command"
    public static func model(_ slot: ModelSlot) -> String { "newbie:\(slot.rawValue)" }
}

/// Options every stage shares: where each model runs and in which precision (the placement
/// policy), and the CUDA settings. The values between stages are Float32 on the CPU.
public struct StageOptions: Sendable, Equatable {
    public var placement: PlacementPolicy
    public var cuda = CUDAOptions()
    /// Gemma truncation, including <bos> (official 512).
    public var gemmaMaxLength: Int = 512
    /// Jina truncation, including <s> and </s> (official 2048 in NewBie's code).
    public var jinaMaxLength: Int = 2048
    /// Jina head size (jina-clip-v2: 64).
    public var jinaHeadDim: Int = 64
    public var vaeTiling: VAETiling = .auto
    /// Jina gets the system prompt in front of the prompt too, as ComfyUI's NewBie text encoder
    /// does (`--preset comfyui`); the official pipeline gives Jina the raw prompt.
    public var jinaSeesSystemPrompt = false
    /// LoRA / LoKr adapters for the DiT (`--lora`, `--lora-mode`, `--lora-lenient`).
    public var adapters = AdapterOptions()
    /// How decoded images become 8-bit pixels (`--pixel-rounding`; truncate as the official demo
    /// and ComfyUI).
    public var pixelRounding: PixelRounding = .truncate

    /// Every model on `device` in `dtype` (nil: auto for the device, bf16 on CUDA, fp32 on the CPU).
    public init(dtype: DType? = .f32, device: Device = .cpu) { placement = PlacementPolicy(device: device, dtype: dtype) }
    public init(placement: PlacementPolicy, cuda: CUDAOptions = CUDAOptions()) { self.placement = placement; self.cuda = cuda }

    /// The device every model runs on, when they share one (else the DiT's).
    public var device: Device { placement.singleDevice ?? placement.device(.dit) }

    /// Opens the slot's device (with the CUDA options) and returns what its model is built with.
    public func open(_ slot: ModelSlot) throws -> ModelPlacement {
        try DeviceSupport.open(placement.device(slot), cuda: cuda)
        return placement.placement(slot)
    }
}

// MARK: - stage 1: text

/// Gemma 3 + Jina CLIP v2 with their tokenizers. Gemma gets system prompt + prompt, Jina the raw
/// prompt; the negative prompt (default "", the unconditional branch) gets no system prompt.
public final class TextStage {
    public let gemma: GemmaTextEncoder
    public let gemmaTokenizer: SentencePieceBPETokenizer
    public let jina: JinaTextTower
    public let jinaTokenizer: UnigramTokenizer
    public let options: StageOptions
    /// `--trace` / `--detect-overflow`: sees Gemma's features and Jina's vectors.
    public var tracer: PipelineTracer?

    public init(paths: ModelPaths, options: StageOptions) throws {
        // every missing part or tokenizer is named before the first (long) load
        _ = try paths.gemmaTokenizerPath(gemma: try paths.require(.gemma))
        _ = try paths.jinaTokenizerPath(jina: try paths.require(.jina))
        self.options = options
        let g = try GemmaComponent.load(paths: paths, placement: try options.open(.gemma))
        let j = try JinaComponent.load(paths: paths, placement: try options.open(.jina), headDim: options.jinaHeadDim)
        gemma = g.encoder; gemmaTokenizer = g.tokenizer
        jina = j.tower; jinaTokenizer = j.tokenizer
    }

    /// What the encoders' length limits cut from a prompt and its negative: one line per text and
    /// encoder that loses tokens, with the counts kept and dropped (empty when nothing is cut).
    public func truncationWarnings(prompt: String, negativePrompt: String = "", systemPrompt: String) -> [String] {
        var out: [String] = []
        for (name, text, system) in [("prompt", prompt, prompt.isEmpty ? "" : systemPrompt), ("negative prompt", negativePrompt, "")] where !text.isEmpty {
            let g = gemmaTokenizer.encode(system + text).count
            if g > options.gemmaMaxLength {
                out.append("the \(name) is longer than Gemma's limit: \(options.gemmaMaxLength) of \(g) tokens kept (system prompt and <bos> included), \(g - options.gemmaMaxLength) dropped from the end")
            }
            let j = jinaTokenizer.encode(text).count
            if j > options.jinaMaxLength {
                out.append("the \(name) is longer than Jina CLIP's limit: \(options.jinaMaxLength) of \(j) tokens kept (<s> and </s> included), \(j - options.jinaMaxLength) dropped from the end")
            }
        }
        return out
    }

    /// Encodes one prompt and its negative.
    public func encode(prompt: String, negativePrompt: String = "", systemPrompt: String) throws -> EncodedPrompt {
        let gemmaInputs = [prompt.isEmpty ? "" : systemPrompt + prompt, negativePrompt]
        let gb = gemmaTokenizer.encodeBatch(gemmaInputs, maxLength: options.gemmaMaxLength, padToMultipleOf: 8)
        // module-level tracing inside both encoders; Jina's forward cannot throw, so its first
        // tracer error is kept and thrown once the forward returns
        var jinaTraceError: Error? = nil
        if let tr = tracer {
            tr.registerModules("gemma", gemma.moduleDTypes)
            tr.registerModules("jina", jina.moduleDTypes)
            gemma.moduleHook = { path, out in try tr.report("gemma." + path, out) }
            jina.moduleHook = { path, out in
                guard jinaTraceError == nil else { return }
                do { try tr.report("jina." + path, out) } catch { jinaTraceError = error }
            }
        }
        defer { gemma.moduleHook = nil; jina.moduleHook = nil }
        let hidden = try gemma.encode(gb).to(.f32, device: .cpu)
        let jb = jinaTokenizer.encodeBatch([options.jinaSeesSystemPrompt ? gemmaInputs[0] : prompt, negativePrompt], maxLength: options.jinaMaxLength)
        let pooled = jina.pooled(ids: jb.ids).to(.f32, device: .cpu)
        try Backends.check(gemma.device)
        try Backends.check(jina.device)
        if let e = jinaTraceError { throw e }
        if let tr = tracer {
            try tr.report("gemma.hidden_states[-2]", hidden)
            try tr.report("jina.pooled", pooled)
        }
        func branch(_ i: Int) -> DiTConditioning {
            // trimmed to the real tokens (padding is masked out by the DiT anyway)
            let n = max(1, gb.mask[i].reduce(0, +))
            let feats = hidden.narrow(0, start: i, length: 1).narrow(1, start: 0, length: n).contiguous()
            return DiTConditioning(capFeats: feats, capMask: Tensor.full([1, n], value: 1),
                                   clipPooled: pooled.narrow(0, start: i, length: 1).contiguous())
        }
        return EncodedPrompt(prompt: prompt, negativePrompt: negativePrompt, systemPrompt: prompt.isEmpty ? "" : systemPrompt,
                             cond: branch(0), uncond: branch(1))
    }
}

// MARK: - stage 2: denoising

/// One model evaluation as the sampler made it (for `--save-steps`).
public struct ModelEvaluation {
    public let index: Int
    public let t: Float
    /// The state the model saw and the guided velocity it returned, [1, C, h, w] Float32, on the
    /// DiT's device (the sampler keeps them there).
    public let x: Tensor
    public let velocity: Tensor
}

/// The DiT with guidance, integrated over the shifted grid.
public final class DenoiseStage {
    public let dit: NextDiT
    public let path: String
    /// `--trace` / `--detect-overflow`: sees every model call's input state and guided velocity.
    public var tracer: PipelineTracer?

    /// What loading the adapters said (files, scales, defaults taken, keys skipped); empty without
    /// adapters.
    public private(set) var adapterNotes: [String] = []
    /// The adapters applied (nil: none). In unmerged mode, `adapters.strengths[i].value` changes
    /// adapter i's strength for the next run without reloading the DiT.
    public private(set) var adapters: ModelAdapters?
    /// What the step cache did in the last run (nil when it was off).
    public private(set) var stepCacheStats: StepCacheStats?

    public init(paths: ModelPaths, options: StageOptions) throws {
        path = try paths.require(.dit)
        var placement = try options.open(.dit)
        if options.adapters.specs.isEmpty {
            dit = try NextDiT.load(path: path, placement: placement)
        } else {
            // adapters are read and matched against the DiT's plan before any weight is read
            let (source, json) = try NextDiT.openCheckpoint(path: path, configPath: nil)
            let (weights, config) = try NextDiT.checkedWeights(source: source, json: json)
            let linears = try NextDiT.plan(config, precision: placement.precision).linears
            let adapters = try options.adapters.load(linears: linears, aliases: NextDiTNaming.adapterAliases(config, linears: linears))
            placement.adapters = adapters
            self.adapters = adapters
            adapterNotes = adapters.notes
            dit = try NextDiT(weights: weights, config: config, placement: placement)
        }
        dit.useRecordedSteps = options.cuda.graphs
    }

    public init(dit: NextDiT, path: String) { self.dit = dit; self.path = path }

    /// Checks that the conditioning fits this DiT (Gemma width, Jina width).
    public func check(_ e: EncodedPrompt) throws {
        let c = dit.config
        for (name, b) in [("prompt", e.cond), ("negative prompt", e.uncond)] {
            let d = b.capFeats.shape[2]
            guard d == c.capFeatDim else {
                throw PipelineError("the \(name)'s Gemma features are \(d) wide but the DiT (--dit) expects cap_feat_dim \(c.capFeatDim): the Gemma checkpoint (--gemma) does not belong to this DiT")
            }
            if let cd = c.clipTextDim {
                guard let p = b.clipPooled, p.shape == [1, cd] else {
                    throw PipelineError("the \(name)'s Jina vector is \(b.clipPooled.map { "\($0.shape)" } ?? "missing") but the DiT (--dit) expects [1, \(cd)]: the Jina checkpoint (--jina) does not belong to this DiT")
                }
            }
        }
    }

    /// Samples one latent [1, C, H/8, W/8] (Float32, CPU) from `settings.seed`'s noise (or
    /// `noise` when given). `onStep` sees every sampler step, `onEvaluation` every model call.
    public func run(_ e: EncodedPrompt, settings: SamplingSettings, noise: Tensor? = nil, initLatent: Tensor? = nil,
                    onStep: ((SamplerStep) -> Void)? = nil, onEvaluation: ((ModelEvaluation) -> Void)? = nil) throws -> Tensor {
        try settings.validate()
        try check(e)
        let shape = [1, dit.config.inChannels, settings.height / 8, settings.width / 8]
        let z = noise ?? settings.noise(channels: dit.config.inChannels)
        guard z.shape == shape else { throw PipelineError("initial noise \(z.shape) does not fit \(shape)") }
        var x0 = z
        if settings.strength < 1 {
            guard let data = initLatent else { throw PipelineError("--strength \(settings.strength) needs an init image (--init-image)") }
            guard data.shape == shape else {
                throw PipelineError("the init image's latent \(data.shape) does not fit \(shape) (--width \(settings.width) --height \(settings.height))")
            }
            x0 = try img2imgStart(data: data.to(.f32, device: .cpu), noise: z, strength: settings.strength)
        }
        let sampler = try settings.makeSampler()
        let clip = dit.config.clipTextDim != nil
        let cond = clip ? e.cond : DiTConditioning(capFeats: e.cond.capFeats, capMask: e.cond.capMask, clipPooled: nil)
        let uncond = clip ? e.uncond : DiTConditioning(capFeats: e.uncond.capFeats, capMask: e.uncond.capMask, clipPooled: nil)
        var evaluations = 0
        var currentT: Float = 0
        let tracer = self.tracer
        if let tr = tracer {
            tr.registerModules("dit", dit.moduleDTypes)
            // module outputs inside the DiT (the guided batch: [cond | uncond] while guidance runs)
            dit.moduleHook = { path, out in try tr.report("dit." + path, step: evaluations, t: currentT, out) }
        }
        defer { dit.moduleHook = nil }
        // a fresh cache per run: nothing of another image's residual may leak in
        let stepCache = settings.stepCache.map(StepCache.init)
        dit.stepCache = stepCache
        defer { dit.stepCache = nil; stepCacheStats = stepCache?.stats }
        let model: VelocityFunction = { [dit] x, t in
            currentT = t
            try tracer?.report("dit.input", step: evaluations, t: t, x)
            // the state and the velocity stay on the DiT's device in Float32: the guidance and the
            // sampler's update are device work, nothing is downloaded or uploaded per step (the host
            // runs ahead as far as the launch queue lets it; errors surface at the next check)
            let v = try dit.guidedVelocity(x, t: t, cond: cond, uncond: uncond, options: settings.cfg).to(.f32)
            try Backends.check(dit.device)
            try tracer?.report("dit.velocity", step: evaluations, t: t, v)
            onEvaluation?(ModelEvaluation(index: evaluations, t: t, x: x, velocity: v))
            evaluations += 1
            return v
        }
        return try sampler.sample(x0.to(.f32, device: dit.device), model: model, onStep: onStep).to(device: .cpu)
    }
}

/// img2img's first step: the FLUX VAE encoder, image -> NewBie latent ((mean - 0.1159) * 0.3611).
public final class ImageEncodeStage {
    public let vae: AutoencoderKL
    public init(paths: ModelPaths, options: StageOptions) throws {
        vae = try AutoencoderKL.load(path: try paths.require(.vae), placement: try options.open(.vae), parts: .encoder)
    }

    /// Reads a PNG of exactly `width` x `height` and encodes it.
    public func run(png path: String, width: Int, height: Int) throws -> Tensor {
        let d: PNG.Decoded
        do { d = try PNG.read(path) } catch { throw PipelineError("--init-image \(error)") }
        guard d.image.width == width, d.image.height == height else {
            throw PipelineError("--init-image \(path) is \(d.image.width)x\(d.image.height) but the run makes \(width)x\(height); give the same --width/--height or resize the image")
        }
        let latent = vae.encode(d.image.tensor()).to(.f32, device: .cpu)
        try Backends.check(vae.device)
        return latent
    }
}

// MARK: - stage 3: decoding

/// The FLUX VAE decoder with NewBie's scaling (x / 0.3611 + 0.1159), on the stage's device; the
/// image comes back to the CPU.
public final class DecodeStage {
    public let vae: AutoencoderKL
    public let path: String
    public let tiling: VAETiling
    public let pixelRounding: PixelRounding
    /// `--trace` / `--detect-overflow`: sees each decoder module (untiled decoding) and the image.
    public var tracer: PipelineTracer?

    public init(paths: ModelPaths, options: StageOptions) throws {
        path = try paths.require(.vae)
        vae = try AutoencoderKL.load(path: path, placement: try options.open(.vae), parts: .decoder)
        tiling = options.vaeTiling
        pixelRounding = options.pixelRounding
    }

    /// Latent [1, C, h, w] -> 8-bit RGB image ((x + 1) / 2, clamped, times 255, truncated or
    /// rounded by `pixelRounding`).
    /// `progress` sees each window of a tiled decode (done, total).
    public func run(_ latent: Tensor, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> RGBImage {
        var x = latent.to(.f32, device: .cpu)
        if x.rank == 3 { x = x.unsqueeze(0) }
        guard x.rank == 4, x.shape[0] == 1, x.shape[1] == vae.config.latentChannels else {
            throw PipelineError("latent \(latent.shape) does not fit the VAE (--vae): expected [1, \(vae.config.latentChannels), h, w]")
        }
        var traceError: Error? = nil
        if let tr = tracer {
            tr.registerModules("vae", vae.moduleDTypes)
            vae.moduleHook = { path, out in
                guard traceError == nil else { return }
                do { try tr.report("vae." + path, out) } catch { traceError = error }
            }
        }
        defer { vae.moduleHook = nil }
        let img = vae.decode(x, tiling: tiling, progress: progress).to(device: .cpu)
        try Backends.check(vae.device)
        if let e = traceError { throw e }
        try tracer?.report("vae.decoder", img)
        let v = img.toFloats()
        let bad = v.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
        if bad > 0 { throw PipelineError("the VAE produced \(bad) non-finite values (NaN/Inf); the latent or the VAE weights are broken") }
        return RGBImage(tensor: img, rounding: pixelRounding)
    }
}


// MARK: - adapters

/// LoRA / LoKr adapters for the DiT as chosen on the command line.
public struct AdapterOptions: Sendable, Equatable {
    public var specs: [AdapterSpec]
    public var mode: AdapterMode
    /// Keys matching no module are a warning (skipped) instead of an error.
    public var lenient: Bool
    public init(specs: [AdapterSpec] = [], mode: AdapterMode = .merged, lenient: Bool = false) {
        self.specs = specs; self.mode = mode; self.lenient = lenient
    }

    /// Reads the files and matches them against a model's linear layers (module path -> [out, in]).
    public func load(linears: [String: [Int]], aliases: [String: AdapterAlias] = [:]) throws -> ModelAdapters {
        try ModelAdapters.load(specs, mode: mode, lenient: lenient, linears: linears, aliases: aliases, model: "dit")
    }

    /// Reads and matches the adapters against the DiT at `paths` (headers and config only, no
    /// weights), so that a bad adapter fails before the text encoders run.
    public func check(paths: ModelPaths) throws -> [String] {
        guard !specs.isEmpty, let p = paths.path(.dit) else { return [] }
        let (source, json) = try NextDiT.openCheckpoint(path: p, configPath: nil)
        let (_, config) = try NextDiT.checkedWeights(source: source, json: json)
        let linears = try NextDiT.plan(config).linears
        return try load(linears: linears, aliases: NextDiTNaming.adapterAliases(config, linears: linears)).notes
    }

    /// The metadata recorded in stage files and PNGs (nothing without adapters).
    public var metadata: [String: String] {
        guard !specs.isEmpty else { return [:] }
        return [MetadataKey.lora: specs.map { "\($0.path):\($0.strength)" }.joined(separator: ";"), MetadataKey.loraMode: mode.rawValue]
    }
}
