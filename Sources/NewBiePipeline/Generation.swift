import Foundation
import NewBieDiffusion
import NewBieImage
import NewBieTensor

/// One image to make: prompt, negative prompt, system prompt (preset or literal), settings (with
/// its seed) and where the PNG goes.
public struct GenerationRequest: Sendable {
    public var prompt: String
    public var negativePrompt: String
    /// A `SystemPrompt` preset name or a literal system prompt.
    public var systemPrompt: String
    public var settings: SamplingSettings
    public var output: String
    /// img2img: the PNG to start from (with `settings.strength` < 1).
    public var initImage: String?

    public init(prompt: String, negativePrompt: String = "", systemPrompt: String = "auto", settings: SamplingSettings, output: String,
                initImage: String? = nil) {
        self.prompt = prompt; self.negativePrompt = negativePrompt; self.systemPrompt = systemPrompt
        self.settings = settings; self.output = output; self.initImage = initImage
    }
}

/// What a run reports as it goes (progress bars, --stats); every callback is optional.
public struct PipelineEvents {
    /// A stage ("load text encoders", "encode", "load DiT", "denoise", "load VAE", "decode", "write")
    /// finished after `seconds`.
    public var stageEnded: ((_ stage: String, _ seconds: Double) -> Void)?
    /// A sampler step of image `image` (0-based) of `images`.
    public var step: ((_ step: SamplerStep, _ image: Int, _ images: Int) -> Void)?
    /// Tiled VAE decoding of image `image` of `images`: `done` of `total` windows decoded (all passes).
    public var decodeProgress: ((_ done: Int, _ total: Int, _ image: Int, _ images: Int) -> Void)?
    /// Image `image` was written to `path`.
    public var wrote: ((_ path: String, _ image: Int) -> Void)?
    /// Something the user should know (adapter files read, defaults taken, keys skipped).
    public var note: ((String) -> Void)?
    /// A model evaluation (state, guided velocity, t) of image `image` (`--save-steps`).
    public var evaluation: ((_ evaluation: ModelEvaluation, _ image: Int) -> Void)?
    /// Something the user should know that does not stop the run (e.g. a prompt cut to the
    /// encoders' length limits), for request `request`.
    public var warning: ((_ message: String, _ request: Int) -> Void)?
    public init(stageEnded: ((String, Double) -> Void)? = nil, step: ((SamplerStep, Int, Int) -> Void)? = nil,
                wrote: ((String, Int) -> Void)? = nil, note: ((String) -> Void)? = nil,
                decodeProgress: ((Int, Int, Int, Int) -> Void)? = nil,
                evaluation: ((ModelEvaluation, Int) -> Void)? = nil, warning: ((String, Int) -> Void)? = nil) {
        self.stageEnded = stageEnded; self.step = step; self.wrote = wrote; self.note = note
        self.decodeProgress = decodeProgress; self.evaluation = evaluation; self.warning = warning
    }
}

/// The metadata of one image: every parameter needed to make it again, as key/value pairs for the
/// stage files and the PNG text chunks.
public enum GenerationMetadata {
    public static func sampling(_ s: SamplingSettings) -> [String: String] {
        [MetadataKey.width: "\(s.width)", MetadataKey.height: "\(s.height)", MetadataKey.steps: "\(s.steps)",
         MetadataKey.sampler: s.sampler.rawValue, MetadataKey.shift: "\(s.shift)", MetadataKey.cfg: "\(s.cfg.scale)",
         MetadataKey.cfgTrunc: "\(s.cfg.truncation)", MetadataKey.renorm: "\(s.cfg.renorm)",
         MetadataKey.seed: "\(s.seed)", MetadataKey.rng: s.rng.rawValue, MetadataKey.strength: "\(s.strength)"]
            .merging(s.effectiveScheduler.map { [MetadataKey.scheduler: $0.rawValue] } ?? [:]) { $1 }
            .merging(s.stepCache.map { [MetadataKey.stepCache: $0.recorded] } ?? [:]) { $1 }
    }

    public static func options(_ o: StageOptions) -> [String: String] {
        [MetadataKey.precision: o.placement.precisionSpec, MetadataKey.device: o.placement.deviceSpec]
            .merging(o.adapters.metadata) { $1 }
            .merging(o.placement.quantizeSpec.isEmpty ? [:] : [MetadataKey.quantize: o.placement.quantizeSpec]) { $1 }
    }

    /// The policy of a run made in stages (`encode`, `denoise`, `decode`): the models this stage
    /// ran (`slots`) as `o` places them, the others as the input file recorded them. A missing or
    /// unreadable record leaves `o` as it is.
    public static func options(_ o: StageOptions, ran slots: Set<ModelSlot>, over recorded: [String: String]) -> [String: String] {
        guard let spec = recorded[MetadataKey.precision],
              let before = try? PlacementPolicy.parse(precision: spec, device: recorded[MetadataKey.device] ?? "cpu",
                                                      quantize: recorded[MetadataKey.quantize] ?? "") else {
            return options(o)
        }
        var merged = before
        for s in slots {
            merged.devices[s] = o.placement.device(s)
            merged.precisions[s] = o.placement.precision(s)
        }
        return [MetadataKey.precision: merged.precisionSpec, MetadataKey.device: merged.deviceSpec]
            .merging(merged.quantizeSpec.isEmpty ? [:] : [MetadataKey.quantize: merged.quantizeSpec]) { $1 }
    }

    public static func models(_ p: ModelPaths) -> [String: String] {
        var m: [String: String] = [:]
        for slot in ModelSlot.allCases { if let v = p.path(slot) { m[MetadataKey.model(slot)] = v } }
        return m
    }

    /// Sampling settings back from metadata (a `newbie denoise` file), for `newbie decode` and checks.
    public static func settings(from m: [String: String]) -> SamplingSettings? {
        guard let w = m[MetadataKey.width].flatMap(Int.init), let h = m[MetadataKey.height].flatMap(Int.init),
              let st = m[MetadataKey.steps].flatMap(Int.init), let sm = m[MetadataKey.sampler].flatMap(SamplerKind.init(name:)),
              let sh = m[MetadataKey.shift].flatMap(Float.init), let c = m[MetadataKey.cfg].flatMap(Float.init),
              let ct = m[MetadataKey.cfgTrunc].flatMap(Float.init), let r = m[MetadataKey.renorm].flatMap(Float.init),
              let seed = m[MetadataKey.seed].flatMap(UInt64.init), let rng = m[MetadataKey.rng].flatMap(NoiseRNG.init(rawValue:))
        else { return nil }
        var s = SamplingSettings(width: w, height: h, steps: st, sampler: sm, shift: sh,
                                 cfg: CFGOptions(scale: c, truncation: ct, renorm: r), seed: seed, rng: rng)
        if let v = m[MetadataKey.strength].flatMap(Float.init) { s.strength = v }
        if let v = m[MetadataKey.scheduler] { s.scheduler = ComfyScheduler(rawValue: v) }
        if let v = m[MetadataKey.stepCache] { s.stepCache = StepCacheOptions(recorded: v) }
        return s
    }

    /// The prompt keys, which a PNG holds once: inside `newbie:command` when the image has one (it
    /// must carry them to run as written), as chunks of their own otherwise.
    static let promptKeys = [MetadataKey.prompt, MetadataKey.negativePrompt, MetadataKey.systemPrompt]

    /// PNG text chunks: the parameters in a fixed order, then anything else under newbie:. With a
    /// `newbie:command`, the prompts are only in it (`parameters(png:)` reads them back).
    public static func pngText(_ m: [String: String], software: String) -> [(key: String, value: String)] {
        var m = m
        // dropped only when the command really carries them, so nothing is lost
        if let cmd = m[MetadataKey.command], let p = prompts(inCommand: cmd), p[MetadataKey.prompt] == m[MetadataKey.prompt],
           (p[MetadataKey.negativePrompt] ?? "") == (m[MetadataKey.negativePrompt] ?? "") {
            for k in promptKeys { m[k] = nil }
        }
        let order = [MetadataKey.prompt, MetadataKey.negativePrompt, MetadataKey.systemPrompt, MetadataKey.width,
                     MetadataKey.height, MetadataKey.steps, MetadataKey.sampler, MetadataKey.scheduler, MetadataKey.shift, MetadataKey.cfg,
                     MetadataKey.cfgTrunc, MetadataKey.renorm, MetadataKey.stepCache, MetadataKey.seed, MetadataKey.rng, MetadataKey.strength,
                     MetadataKey.initImage, MetadataKey.precision,
                     MetadataKey.device, MetadataKey.lora, MetadataKey.loraMode, MetadataKey.pixelRounding] + ModelSlot.allCases.map(MetadataKey.model) + [MetadataKey.command]
        var out: [(key: String, value: String)] = [("Software", software)]
        for k in order { if let v = m[k] { out.append((k, v)) } }
        for k in m.keys.sorted() where k.hasPrefix("newbie:") && !order.contains(k) { out.append((k, m[k]!)) }
        return out
    }

    /// The prompts inside a recorded `newbie generate` command: the first word after `generate` is
    /// the prompt, `--negative-prompt` and `--system-prompt` follow their flags (the system prompt
    /// as recorded: a preset name or the literal text). Nil when `command` is not such a command.
    public static func prompts(inCommand command: String) -> [String: String]? {
        guard let w = try? ShellWords.split(command), w.count >= 3, w[0] == "newbie", w[1] == "generate", !w[2].hasPrefix("-") else { return nil }
        var out = [MetadataKey.prompt: w[2]]
        var i = 3
        while i + 1 < w.count {
            if w[i] == "--negative-prompt" { out[MetadataKey.negativePrompt] = w[i + 1]; i += 2 }
            else if w[i] == "--system-prompt" { out[MetadataKey.systemPrompt] = w[i + 1]; i += 2 }
            else { i += 1 }
        }
        return out
    }

    /// A PNG's parameters with its prompts in front: the text chunks as written, the prompts read
    /// back out of `newbie:command` when they are not chunks of their own.
    public static func parameters(png text: [(key: String, value: String)]) -> [(key: String, value: String)] {
        guard !text.contains(where: { $0.key == MetadataKey.prompt }),
              let cmd = text.first(where: { $0.key == MetadataKey.command })?.value,
              let p = prompts(inCommand: cmd) else { return text }
        let front = promptKeys.compactMap { k in p[k].map { (key: k, value: $0) } }
        let software = text.filter { $0.key == "Software" }
        return software + front + text.filter { $0.key != "Software" }
    }
}

/// The whole pipeline over several requests: all prompts are encoded first (then the text
/// encoders are freed), then each latent is sampled, decoded and written as a PNG with its
/// parameters before the next one starts (the DiT and the VAE decoder are held together; the DiT
/// is freed before the last decode, so the device's peak is the larger of the stages' peaks, not
/// their sum).
public enum Pipeline {
    public static func generate(_ requests: [GenerationRequest], paths: ModelPaths, options: StageOptions,
                                extraMetadata: (GenerationRequest) -> [String: String] = { _ in [:] },
                                events: PipelineEvents = PipelineEvents(), tracer: PipelineTracer? = nil,
                                checkMemory: Bool = true) throws -> [String] {
        guard !requests.isEmpty else { throw PipelineError("no prompt to generate") }
        for r in requests { try r.settings.validate() }
        // every output is checked before anything is loaded
        try checkOutputs(requests)
        // every part is checked before the first one is loaded, so a wrong slot fails at once
        for slot in ModelSlot.allCases { _ = try paths.require(slot) }
        // the size must fit the DiT's position tables and the machine's memory
        try RunCheck.check(requests, paths: paths, options: options, checkMemory: checkMemory)
        // and precision rules naming modules of the DiT or VAE are checked against their plans
        try options.placement.checkRules(paths: paths)
        // and adapters are read and matched against the DiT's plan (their notes come when it loads)
        _ = try options.adapters.check(paths: paths)
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        func timed<T>(_ stage: String, _ body: () throws -> T) rethrows -> T {
            let t0 = clock()
            let r = try body()
            events.stageEnded?(stage, clock() - t0)
            return r
        }

        // 0. img2img init images
        var initLatents: [Tensor?] = Array(repeating: nil, count: requests.count)
        if requests.contains(where: { $0.settings.strength < 1 }) {
            let enc = try timed("load VAE encoder") { try ImageEncodeStage(paths: paths, options: options) }
            try timed("encode init images") {
                for (i, r) in requests.enumerated() where r.settings.strength < 1 {
                    guard let p = r.initImage else { throw PipelineError("--strength \(r.settings.strength) needs --init-image PATH") }
                    initLatents[i] = try enc.run(png: p, width: r.settings.width, height: r.settings.height)
                }
            }
        }

        // 1. text (one encoding per distinct prompt triple)
        var encoded: [EncodedPrompt] = []
        do {
            let text = try timed("load text encoders") { try TextStage(paths: paths, options: options) }
            text.tracer = tracer
            var cache: [String: EncodedPrompt] = [:]
            try timed("encode") {
                for (i, r) in requests.enumerated() {
                    let system = SystemPrompt.resolve(r.systemPrompt, prompt: r.prompt)
                    let key = [r.prompt, r.negativePrompt, system].joined(separator: "\u{0}")
                    if let e = cache[key] { encoded.append(e); continue }
                    for w in text.truncationWarnings(prompt: r.prompt, negativePrompt: r.negativePrompt, systemPrompt: system) {
                        events.warning?(w, i)
                    }
                    let e = try text.encode(prompt: r.prompt, negativePrompt: r.negativePrompt, systemPrompt: system)
                    cache[key] = e
                    encoded.append(e)
                }
            }
        }  // text encoders released here

        // 2. denoising, decoding and writing, one image after the other: the VAE decoder (small
        // beside the DiT) is loaded with the DiT, so each image is written as soon as it is
        // finished and an interrupt or a later failure keeps the images already made
        var written: [String] = []
        var den: DenoiseStage! = try timed("load DiT") { try DenoiseStage(paths: paths, options: options) }
        for n in den.adapterNotes { events.note?(n) }
        den.tracer = tracer
        for e in encoded { try den.check(e) }
        let dec = try timed("load VAE") { try DecodeStage(paths: paths, options: options) }
        dec.tracer = tracer
        let ditChannels = den.dit.config.outChannels
        guard ditChannels == dec.vae.config.latentChannels else {
            throw PipelineError("the DiT (--dit) makes \(ditChannels)-channel latents but the VAE (--vae) decodes \(dec.vae.config.latentChannels) channels: the VAE does not belong to this DiT")
        }
        for (i, r) in requests.enumerated() {
            let latent = try timed("denoise") {
                try den.run(encoded[i], settings: r.settings, initLatent: initLatents[i], onStep: { events.step?($0, i, requests.count) },
                            onEvaluation: events.evaluation.map { f in { f($0, i) } })
            }
            if let st = den.stepCacheStats, let o = r.settings.stepCache { events.note?(StepCacheStats.describe(st, o)) }
            // the last image decodes without the DiT: freed first, it does not add to the decoder's peak
            if i == requests.count - 1 { den = nil }
            let image = try timed("decode") { try dec.run(latent, progress: events.decodeProgress.map { f in { f($0, $1, i, requests.count) } }) }
            var md = encoded[i].metadata
            md.merge(GenerationMetadata.sampling(r.settings)) { $1 }
            md.merge(GenerationMetadata.options(options)) { $1 }
            md.merge(GenerationMetadata.models(paths)) { $1 }
            if r.settings.strength < 1, let p = r.initImage { md[MetadataKey.initImage] = p }
            md[MetadataKey.pixelRounding] = options.pixelRounding.rawValue
            md.merge(extraMetadata(r)) { $1 }
            try timed("write") {
                try createParentFolder(r.output)
                try PNG.write(image, to: r.output, text: GenerationMetadata.pngText(md, software: "newbie generate"))
            }
            events.wrote?(r.output, i)
            written.append(r.output)
        }
        return written
    }

    /// Checks every output path before any work: `-` (standard output) for a single image only,
    /// else absent or a regular file (through symbolic links) in a folder that exists or can be
    /// made; two images never share a path.
    public static func checkOutputs(_ requests: [GenerationRequest]) throws {
        var seen: [String: Int] = [:]
        for (i, r) in requests.enumerated() {
            if r.output == OutputFile.standardOutput && requests.count > 1 {
                throw PipelineError("--output -: standard output takes one image, but this run makes \(requests.count); give a file pattern such as out-{seed}.png")
            }
            if let j = seen[r.output] {
                throw PipelineError("--output: images \(j + 1) and \(i + 1) would both be written to \(r.output); use {seed}, {index} or {prompt} in the pattern")
            }
            seen[r.output] = i
            do { try OutputFile.check(r.output, createFolders: true) } catch let e as OutputError {
                throw PipelineError("--output \(e.description)")
            }
        }
    }

    static func createParentFolder(_ path: String) throws {
        guard path != OutputFile.standardOutput else { return }
        let dir = PathName.parent(path)
        guard !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) else { return }
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw PipelineError("--output \(path): cannot create the folder \(dir) (\(error.localizedDescription))")
        }
    }

    /// Output paths from a pattern: `{seed}`, `{index}` (0-based image number) and `{prompt}`
    /// (0-based prompt number) are replaced; when several images would share one path, `-{index}`
    /// is added before the extension.
    public static func outputPaths(pattern: String, seeds: [UInt64], promptIndices: [Int]) -> [String] {
        let n = seeds.count
        // standard output stays itself (checkOutputs refuses it for several images)
        if pattern == OutputFile.standardOutput { return Array(repeating: pattern, count: n) }
        var paths = (0..<n).map { i in
            pattern.replacingOccurrences(of: "{seed}", with: "\(seeds[i])")
                .replacingOccurrences(of: "{index}", with: "\(i)")
                .replacingOccurrences(of: "{prompt}", with: "\(promptIndices[i])")
        }
        if Set(paths).count < n {
            paths = (0..<n).map { i in
                let ext = PathName.pathExtension(paths[i])
                let base = ext.isEmpty ? paths[i] : PathName.deletingExtension(paths[i])
                return ext.isEmpty ? "\(base)-\(i)" : "\(base)-\(i).\(ext)"
            }
        }
        return paths
    }
}
