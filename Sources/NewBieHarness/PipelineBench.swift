import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieImage
import NewBieTensor
import NewBieText
#if canImport(Glibc)
import Glibc
#endif

/// What `newbie bench-pipeline` runs: a random NewBie (`RandomModel`) written to a folder (or
/// reused), then one whole generation through `Pipeline.generate` (the code `newbie generate`
/// runs): prompt -> both tokenizers -> Gemma and Jina (prompt and negative prompt) -> Euler steps
/// with classifier-free guidance -> VAE decode -> PNG, timed stage by stage with the peak memory
/// each backend reports.
public struct PipelineBenchConfig: Sendable {
    public var spec: RandomModelSpec
    /// Where the random model is written or found; nil: a temporary folder, removed afterwards.
    public var weightsDir: String?
    public var weightsDType: DType = .bf16
    public var weightsSeed: UInt64 = 0
    /// Write the weights even when `weightsDir` already holds the same random model.
    public var rewrite = false
    /// Tests/Fixtures (the small tokenizers the synthetic ones are made from); nil: looked for.
    public var fixtures: String?
    /// Real tokenizer files to use instead of the synthetic ones (vocabularies no larger than the
    /// model's: Gemma 3's tokenizer.json / a Gemma GGUF, jina-clip-v2's tokenizer.json).
    public var gemmaTokenizer: String?
    public var jinaTokenizer: String?

    public var options: StageOptions
    /// The device in words for the report (e.g. "cuda:0 (NVIDIA H200)").
    public var deviceName: String

    public var width = 1024
    public var height = 1024
    /// Euler steps, i.e. guided DiT calls (the grid has steps + 1 points; `newbie generate
    /// --steps` counts grid points).
    public var steps = 28
    public var shift: Float = 6
    public var cfg: Float = 5
    /// Guidance while t < this; 100 (default): every step runs the prompt and the negative prompt.
    public var cfgTrunc: Float = 100
    public var seed: UInt64 = 0
    public var prompt = PipelineBench.defaultPrompt
    /// Gemma tokens of the prompt, `<bos>` and system prompt included: the prompt is cut (or
    /// repeated, then cut) to give this many with the tokenizer in use, so the text encoders and
    /// the DiT see the same caption length whatever the tokenizer (synthetic ones split words
    /// into more pieces than Gemma's). 0: the prompt as it is. Default 256, the caption length
    /// of the reference workload (a 1024x1024 image from a 256-token caption).
    public var gemmaTokens = 256
    public var negativePrompt = ""
    public var systemPrompt = "auto"
    /// The PNG written.
    public var output: String
    /// Repeat the whole generation this many times in one process (the first run pays the
    /// one-time costs: kernel compilation, page cache).
    public var runs = 1
    /// Check every module output for NaN/Inf (the pipeline's --detect-overflow tracer) and record
    /// the largest magnitudes; the tracing copies every tensor to the CPU, so the times of such a
    /// run are not the pipeline's.
    public var checkFinite = false

    public init(spec: RandomModelSpec, options: StageOptions, deviceName: String, output: String) {
        self.spec = spec; self.options = options; self.deviceName = deviceName; self.output = output
    }

    /// The sampling settings of the run: Euler over steps + 1 grid points.
    public var settings: SamplingSettings {
        SamplingSettings(width: width, height: height, steps: steps + 1, sampler: .euler, shift: shift,
                         cfg: CFGOptions(scale: cfg, truncation: cfgTrunc, renorm: 0), seed: seed, rng: .torch)
    }
}

/// The report of a bench: stage times, per-step times, peak memory, and what was run.
public struct PipelineBenchReport: Codable, Sendable {
    public struct Stage: Codable, Sendable {
        /// Pipeline.generate's stage name: load text encoders, encode, load DiT, denoise, load VAE,
        /// decode, write.
        public var name: String
        public var seconds: Double
        /// Peak bytes the compute device's backend had allocated during the stage (nil on the CPU:
        /// see peakCPUBytes) and at its end.
        public var peakDeviceBytes: Int?
        public var deviceBytesAtEnd: Int?
        /// Peak bytes of CPU-backend tensors during the stage (memory-mapped weights not counted).
        public var peakCPUBytes: Int
    }

    public struct Run: Codable, Sendable {
        public var stages: [Stage]
        /// Wall time of each Euler step (one guided DiT call, batch 2 while guidance runs).
        public var stepSeconds: [Double]
        /// The whole Pipeline.generate call (loads included).
        public var totalSeconds: Double
        /// Summaries of the above: the "encode", "denoise", "decode" stages, the three loads, the
        /// median step after the first, the largest peaks of all stages.
        public var textEncodingSeconds: Double
        public var denoiseSeconds: Double
        public var vaeDecodeSeconds: Double
        public var loadSeconds: Double
        public var firstStepSeconds: Double
        public var medianStepSeconds: Double
        public var peakDeviceBytes: Int?
        public var peakCPUBytes: Int

        public init(stages: [Stage], stepSeconds: [Double], totalSeconds: Double) {
            self.stages = stages; self.stepSeconds = stepSeconds; self.totalSeconds = totalSeconds
            func seconds(_ stage: String) -> Double { stages.filter { $0.name == stage }.reduce(0) { $0 + $1.seconds } }
            textEncodingSeconds = seconds("encode")
            denoiseSeconds = seconds("denoise")
            vaeDecodeSeconds = seconds("decode")
            loadSeconds = seconds("load text encoders") + seconds("load DiT") + seconds("load VAE")
            firstStepSeconds = stepSeconds.first ?? 0
            let rest = (stepSeconds.count > 1 ? Array(stepSeconds.dropFirst()) : stepSeconds).sorted()
            medianStepSeconds = rest.isEmpty ? 0 : rest[rest.count / 2]
            peakDeviceBytes = stages.compactMap(\.peakDeviceBytes).max()
            peakCPUBytes = stages.map(\.peakCPUBytes).max() ?? 0
        }
    }

    public struct Tokens: Codable, Sendable {
        /// Real Gemma tokens of the prompt (system prompt included) and the negative prompt, and
        /// the padded length the encoder runs.
        public var gemmaPrompt: Int, gemmaNegative: Int, gemmaPadded: Int
        /// Real Jina tokens (with <s> and </s>) and the padded length.
        public var jinaPrompt: Int, jinaNegative: Int, jinaPadded: Int
        public var synthetic: Bool
    }

    public struct Weights: Codable, Sendable {
        public var dir: String
        public var dtype: String
        public var bytes: Int
        /// false: an earlier bench's weights were reused.
        public var written: Bool
        public var writeSeconds: Double
        public var parameters: [String: Int]
    }

    public var scale: String
    public var model: [String]
    public var device: String
    public var dtype: String
    public var width: Int
    public var height: Int
    public var steps: Int
    public var gridPoints: Int
    public var cfg: Float
    public var cfgTrunc: Float
    public var seed: UInt64
    public var prompt: String
    public var tokens: Tokens
    public var weights: Weights
    public var runs: [Run]
    public var peakRSSBytes: Int
    public var image: String
    public var imageWidth: Int
    public var imageHeight: Int
    /// With checkFinite: the largest |value| seen per traced module group (all finite, else the run
    /// stopped with an error).
    public var largestMagnitudes: [String: Float]?

    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try e.encode(self)
    }

    /// The short table printed after a run.
    public func table() -> String {
        var l: [String] = []
        l.append("NewBie pipeline bench: \(scale) random model on \(device), compute \(dtype), \(width)x\(height), \(steps) Euler steps (\(gridPoints)-point grid, shift 6), CFG \(cfg)"
                 + (cfgTrunc >= 1 ? " on every step" : " while t < \(cfgTrunc)") + ", seed \(seed)")
        for m in model { l.append("  " + m) }
        l.append("  weights: \(weights.dir) (\(weights.dtype), \(formatBytes(weights.bytes)); "
                 + (weights.written ? String(format: "written in %.1f s", weights.writeSeconds) : "reused") + ")")
        l.append("  tokens: Gemma \(tokens.gemmaPrompt) prompt / \(tokens.gemmaNegative) negative, padded to \(tokens.gemmaPadded); Jina \(tokens.jinaPrompt) / \(tokens.jinaNegative), padded to \(tokens.jinaPadded)"
                 + (tokens.synthetic ? " (synthetic tokenizers: counts of a small vocabulary, ids arbitrary)" : ""))
        for (k, r) in runs.enumerated() {
            if runs.count > 1 { l.append("run \(k + 1) of \(runs.count):") }
            let hasDevice = r.stages.contains { $0.peakDeviceBytes != nil }
            func row(_ name: String, _ s: String, _ dev: String, _ cpu: String) -> String {
                pad(name, 34) + pad(s, 11, left: true) + (hasDevice ? pad(dev, 14, left: true) : "") + pad(cpu, 14, left: true)
            }
            l.append(row("stage", "wall s", "peak device", "peak CPU"))
            let labels = ["load text encoders": "load text encoders", "encode": "text encoding (Gemma + Jina)",
                          "load DiT": "load DiT", "denoise": "denoise (\(r.stepSeconds.count) steps)", "load VAE": "load VAE",
                          "decode": "VAE decode", "write": "write PNG"]
            for s in r.stages {
                l.append(row(labels[s.name] ?? s.name, String(format: "%.3f", s.seconds),
                             s.peakDeviceBytes.map(formatBytes) ?? "", formatBytes(s.peakCPUBytes)))
                if s.name == "denoise", let first = r.stepSeconds.first {
                    l.append(row("  step 1", String(format: "%.3f", first), "", ""))
                    let rest = Array(r.stepSeconds.dropFirst()).sorted()
                    if !rest.isEmpty {
                        let med = rest[rest.count / 2], mean = rest.reduce(0, +) / Double(rest.count)
                        l.append(row("  steps 2-\(r.stepSeconds.count) median", String(format: "%.3f", med), "", ""))
                        l.append(row("  steps 2-\(r.stepSeconds.count) mean / min / max",
                                     String(format: "%.3f", mean), "", "") + String(format: "  (%.3f / %.3f)", rest.first!, rest.last!))
                    }
                }
            }
            l.append(row("total (Pipeline.generate)", String(format: "%.3f", r.totalSeconds),
                         r.peakDeviceBytes.map(formatBytes) ?? "", formatBytes(r.peakCPUBytes)))
        }
        l.append("process peak RSS \(formatBytes(peakRSSBytes)); image \(image) (\(imageWidth)x\(imageHeight))")
        if let m = largestMagnitudes {
            let top = m.sorted { $0.value > $1.value }.prefix(8).map { String(format: "%@ %.4g", $0.key, $0.value) }
            l.append("finite check passed; largest |value|: " + top.joined(separator: ", "))
        }
        return l.joined(separator: "\n")
    }

    func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
        s.count >= n ? s + " " : (left ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
    }
}

public enum PipelineBench {
    /// A NewBie XML prompt of the usual length (the official README's form).
    public static let defaultPrompt = """
    <character_1>
    <n>$character_1$</n>
    <gender>1girl</gender>
    <appearance>long_hair, silver_hair, blue_eyes, hair_ribbon, medium_breasts</appearance>
    <clothing>school_uniform, white_shirt, pleated_skirt, black_thighhighs</clothing>
    <expression>smile, looking_at_viewer, blush</expression>
    <action>standing, holding_book, hand_on_own_chest</action>
    <position>center</position>
    </character_1>
    <general_tags>
    <count>1girl, solo</count>
    <style>anime_style, detailed, soft_lighting</style>
    <background>library, bookshelf, window, sunlight, dust_particles</background>
    <atmosphere>warm, peaceful</atmosphere>
    <quality>masterpiece, best_quality, high_resolution, newest</quality>
    </general_tags>
    """

    /// Writes (or reuses) the random model, runs the generation `config.runs` times and returns
    /// the report. `log` gets progress lines.
    public static func run(_ config: PipelineBenchConfig, log: @escaping (String) -> Void = { _ in }) throws -> PipelineBenchReport {
        guard config.steps >= 1 else { throw PipelineError("--steps \(config.steps): at least 1 Euler step") }
        guard config.runs >= 1 else { throw PipelineError("--runs \(config.runs): at least 1") }
        try config.settings.validate()
        let fm = FileManager.default
        let temporary = config.weightsDir == nil
        let dir = config.weightsDir ?? NSTemporaryDirectory() + "newbie-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { if temporary { try? fm.removeItem(atPath: dir) } }

        let spec = config.spec
        for line in spec.summary { log("  " + line) }
        log("random weights (\(config.weightsDType)) in \(dir)" + (temporary ? " (temporary)" : ""))
        let w = try RandomModel.write(spec, to: dir, dtype: config.weightsDType, seed: config.weightsSeed,
                                      rewrite: config.rewrite, fixtures: config.fixtures, log: log)
        log(w.written ? String(format: "wrote %@ of random weights in %.1f s", formatBytes(w.bytes), w.seconds)
                      : "reusing the random model already in \(dir) (same sizes, seed and dtype; --rewrite to write it again)")
        let p = spec.parameters
        let weights = PipelineBenchReport.Weights(dir: dir, dtype: config.weightsDType.description, bytes: w.bytes, written: w.written,
                                                  writeSeconds: w.seconds,
                                                  parameters: ["dit": p.dit, "gemma": p.gemma, "jina": p.jina, "vae": p.vae, "vae_decoder": p.vaeDecoder])

        var paths = try ModelPaths.resolve(root: dir)
        if let t = config.gemmaTokenizer { paths.gemmaTokenizer = t }
        if let t = config.jinaTokenizer { paths.jinaTokenizer = t }
        var config = config
        if config.gemmaTokens > 0 {
            let gt = try SentencePieceBPETokenizer.load(try paths.gemmaTokenizerPath(gemma: try paths.require(.gemma)))
            config.prompt = try fitPrompt(config.prompt, systemPrompt: config.systemPrompt, tokenizer: gt, tokens: config.gemmaTokens,
                                          maxLength: config.options.gemmaMaxLength)
        }
        let tokens = try countTokens(config, paths: paths)
        log("tokens: Gemma \(tokens.gemmaPrompt) / \(tokens.gemmaNegative) (padded \(tokens.gemmaPadded)), Jina \(tokens.jinaPrompt) / \(tokens.jinaNegative)")

        let device = config.options.device
        let deviceBackend: Backend? = device == .cpu ? nil : Backends.backend(for: device)
        let cpu = Backends.backend(for: .cpu)
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        var runs: [PipelineBenchReport.Run] = []
        var magnitudes: [String: Float]? = nil
        for k in 0..<config.runs {
            if config.runs > 1 { log("run \(k + 1) of \(config.runs)") }
            var stages: [PipelineBenchReport.Stage] = []
            var steps: [Double] = []
            var mark = clock()
            cpu.resetPeakMemory()
            deviceBackend?.resetPeakMemory()
            let events = PipelineEvents(
                stageEnded: { name, seconds in
                    let d = deviceBackend?.memoryStats
                    stages.append(.init(name: name, seconds: seconds, peakDeviceBytes: d?.peakBytes, deviceBytesAtEnd: d?.currentBytes,
                                        peakCPUBytes: cpu.memoryStats.peakBytes))
                    cpu.resetPeakMemory()
                    deviceBackend?.resetPeakMemory()
                    log(String(format: "  %@: %.3f s", name, seconds))
                    mark = clock()
                },
                step: { s, _, _ in
                    let now = clock()
                    steps.append(now - mark)
                    mark = now
                    log(String(format: "  step %d/%d: %.3f s (t %.4f -> %.4f)", s.index + 1, s.count, steps.last!, s.from, s.to))
                })
            let tracer = config.checkFinite
                ? PipelineTracer(trace: false, detectOverflow: true, computeDType: config.options.placement.precision(.dit).base, sink: { _ in }) : nil
            let request = GenerationRequest(prompt: config.prompt, negativePrompt: config.negativePrompt,
                                            systemPrompt: config.systemPrompt, settings: config.settings, output: config.output)
            let t0 = clock()
            _ = try Pipeline.generate([request], paths: paths, options: config.options, extraMetadata: { _ in
                [MetadataKey.command: "newbie bench-pipeline (random \(spec.scale.rawValue) model)"]
            }, events: events, tracer: tracer)
            let total = clock() - t0
            runs.append(.init(stages: stages, stepSeconds: steps, totalSeconds: total))
            if let tr = tracer {
                var m: [String: Float] = [:]
                for r in tr.records {
                    let group = r.path.replacingOccurrences(of: #"\.[0-9]+"#, with: ".N", options: .regularExpression)
                    let v = Swift.max(abs(r.summary.min), abs(r.summary.max))
                    if v.isFinite { m[group] = Swift.max(m[group] ?? 0, v) }
                }
                magnitudes = m
            }
        }
        let png = try PNG.read(config.output)
        return PipelineBenchReport(
            scale: spec.scale.rawValue + (spec.maxLayers.map { ", at most \($0) layers per stack" } ?? ""),
            model: spec.summary, device: config.deviceName, dtype: config.options.placement.precisionSpec,
            width: config.width, height: config.height, steps: config.steps, gridPoints: config.steps + 1,
            cfg: config.cfg, cfgTrunc: config.cfgTrunc, seed: config.seed, prompt: config.prompt, tokens: tokens,
            weights: weights, runs: runs, peakRSSBytes: peakRSS(), image: config.output,
            imageWidth: png.image.width, imageHeight: png.image.height, largestMagnitudes: magnitudes)
    }

    /// `base` cut (after repeating it as often as needed) so that `<bos>` + system prompt + the
    /// result is `tokens` Gemma tokens (give or take a token where a merge spans the cut).
    public static func fitPrompt(_ base: String, systemPrompt: String, tokenizer: SentencePieceBPETokenizer, tokens: Int,
                                 maxLength: Int = 512) throws -> String {
        guard !base.isEmpty else { throw PipelineError("--gemma-tokens \(tokens) needs a non-empty prompt") }
        let system = SystemPrompt.resolve(systemPrompt, prompt: base)
        let special = tokenizer.encode("", addSpecialTokens: true).count
        let budget = tokens - special - tokenizer.encode(system, addSpecialTokens: false).count
        guard tokens <= maxLength, budget >= 1 else {
            throw PipelineError("--gemma-tokens \(tokens): must leave room for the prompt after <bos> and the system prompt, and be at most \(maxLength)")
        }
        var body = base
        while tokenizer.encode(body, addSpecialTokens: false).count < budget { body += "\n" + base }
        var ids = Array(tokenizer.encode(body, addSpecialTokens: false).prefix(budget))
        var text = tokenizer.decode(ids)
        // a cut inside a merge can re-tokenise to one token more: shorten until it fits
        while ids.count > 1 && tokenizer.encode(system + text, addSpecialTokens: true).count > tokens {
            ids.removeLast()
            text = tokenizer.decode(ids)
        }
        return text
    }

    /// The token counts of the run, tokenized as TextStage does (same files, same limits); for
    /// the report only, outside the timed stages.
    static func countTokens(_ c: PipelineBenchConfig, paths: ModelPaths) throws -> PipelineBenchReport.Tokens {
        let g = try paths.require(.gemma), j = try paths.require(.jina)
        let gt = try SentencePieceBPETokenizer.load(try paths.gemmaTokenizerPath(gemma: g))
        let jt = try UnigramTokenizer(path: try paths.jinaTokenizerPath(jina: j))
        let system = SystemPrompt.resolve(c.systemPrompt, prompt: c.prompt)
        let gb = gt.encodeBatch([c.prompt.isEmpty ? "" : system + c.prompt, c.negativePrompt],
                                maxLength: c.options.gemmaMaxLength, padToMultipleOf: 8)
        let jb = jt.encodeBatch([c.prompt, c.negativePrompt], maxLength: c.options.jinaMaxLength)
        return .init(gemmaPrompt: gb.mask[0].reduce(0, +), gemmaNegative: gb.mask[1].reduce(0, +), gemmaPadded: gb.ids[0].count,
                     jinaPrompt: jb.mask[0].reduce(0, +), jinaNegative: jb.mask[1].reduce(0, +), jinaPadded: jb.ids[0].count,
                     synthetic: c.gemmaTokenizer == nil || c.jinaTokenizer == nil)
    }

    /// Peak resident set size of this process (Linux reports ru_maxrss in KiB).
    public static func peakRSS() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
    }
}
