import Foundation
import NewBieDiffusion
import NewBieImage
import NewBieMetrics
import NewBiePipeline
import NewBieWeights
import NewBieTensor

/// What `newbie precision-report` runs: the same prompts, seeds, sampler and size under several
/// precision configurations (placement-policy specs such as "fp32", "bf16", "fp16,vae=fp32",
/// "fp16,dit.layers.*.attention=fp32"), each measured against the first one (the reference):
/// stage times, peak memory, the first non-finite module output, the latent's relative L2 error,
/// PSNR / SSIM / VIF of the image, and the relative error of every DiT module output at the
/// first, middle and last model evaluation.
public struct PrecisionReportConfig: Sendable {
    public struct Case: Sendable, Codable, Equatable {
        public var prompt: String
        public var negativePrompt: String
        /// A `SystemPrompt` preset name or a literal system prompt.
        public var systemPrompt: String
        public var seed: UInt64
        public init(prompt: String, negativePrompt: String = "", systemPrompt: String = "auto", seed: UInt64) {
            self.prompt = prompt; self.negativePrompt = negativePrompt; self.systemPrompt = systemPrompt; self.seed = seed
        }
    }

    public var paths: ModelPaths
    /// Precision specs (the `--precision` form), the first is the reference.
    public var configs: [String]
    /// The `--device` spec every config runs with.
    public var device: String
    public var cuda: CUDAOptions
    public var cases: [Case]
    /// Size, grid, guidance, noise generator; the seed is each case's.
    public var settings: SamplingSettings
    /// Trace every module output (first non-finite value, per-layer errors); off: the stage
    /// times are the pipeline's own, without the tracer's copies to the CPU.
    public var trace = true
    /// `--offload`: every config streams the DiT's and Gemma's blocks from host memory.
    public var offload = false
    /// With tracing: run each config twice, untraced for the times and memory, then traced for
    /// the rest (the report says whether both passes made the same latent and image).
    public var timingPass = false
    /// Gain of the difference maps in grid.png (|other - reference| times this); 0: chosen from
    /// the differences (their 99th percentile shown at about half brightness).
    public var diffGain = 0
    /// The output folder.
    public var output: String
    /// The command line, for the report.
    public var command: String
    /// The device in words (e.g. "cuda:0 (NVIDIA H200)").
    public var deviceName: String

    public init(paths: ModelPaths, configs: [String], device: String = "cpu", cuda: CUDAOptions = CUDAOptions(), cases: [Case],
                settings: SamplingSettings, output: String, command: String, deviceName: String) {
        self.paths = paths; self.configs = configs; self.device = device; self.cuda = cuda; self.cases = cases
        self.settings = settings; self.output = output; self.command = command; self.deviceName = deviceName
    }

    /// One config's parts. A config is `PRECISION`, `PRECISION+QUANTIZE` (`bf16+dit=int8,gemma=int8`:
    /// the `--quantize` form after the "+", an empty precision meaning auto) or a bare quantization
    /// type (`int8`: auto precision, that type for the DiT and both text encoders, the layers kept in
    /// 16 bits by default excepted), so quantized runs join the table; any of them may end in
    /// `@MODE[:THRESHOLD]` to sample with the step cache (`bf16@teacache:0.3`, `@fbcache`).
    public static func split(config spec: String) -> (precision: String, quantize: String, stepCache: String?) {
        var body = spec, cache: String? = nil
        if let at = spec.firstIndex(of: "@") {
            body = String(spec[..<at]).trimmingCharacters(in: .whitespaces)
            cache = spec[spec.index(after: at)...].trimmingCharacters(in: .whitespaces)
            if body.isEmpty { body = "auto" }
        }
        if let plus = body.firstIndex(of: "+") {
            let p = body[..<plus].trimmingCharacters(in: .whitespaces)
            return (p.isEmpty ? "auto" : p, body[body.index(after: plus)...].trimmingCharacters(in: .whitespaces), cache)
        }
        if let q = QuantScheme(userName: body), q != .none {
            return ("auto", [ModelSlot.dit, .gemma, .jina].map { "\($0.rawValue)=\(q.rawValue)" }.joined(separator: ","), cache)
        }
        return (body, "", cache)
    }

    /// The step cache of a config's `@MODE[:THRESHOLD]` part (nil: none); errors name the part.
    public static func stepCache(_ part: String?) throws -> StepCacheOptions? {
        guard let part else { return nil }
        let pieces = part.split(separator: ":", maxSplits: 1).map(String.init)
        var threshold: Float? = nil
        if pieces.count == 2 {
            guard let t = Float(pieces[1]) else { throw PipelineError("step cache \"@\(part)\": the threshold \"\(pieces[1])\" is not a number") }
            threshold = t
        }
        guard let mode = pieces.first, !mode.isEmpty else { throw PipelineError("step cache \"@\(part)\": give teacache or fbcache, e.g. @teacache:0.3") }
        return try StepCacheOptions.parse(mode: mode, threshold: threshold)
    }

    /// Splits a `--configs` list ("fp32;bf16;fp16,vae=fp32"): items separated by ";", blanks dropped.
    public static func parseConfigs(_ s: String) throws -> [String] {
        let items = s.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw PipelineError("--configs \"\(s)\": give at least one precision spec, e.g. \"fp32;bf16;fp16\"") }
        return items
    }
}

/// Everything the report holds (report.json).
public struct PrecisionReport: Codable, Sendable {
    public struct Machine: Codable, Sendable {
        public var hostname: String
        public var os: String
        public var cpu: String
        public var cpuCores: Int
        public var memoryBytes: Int
    }

    public struct Settings: Codable, Sendable {
        public var width: Int, height: Int, steps: Int, sampler: String, shift: Float
        public var cfg: Float, cfgTrunc: Float, renorm: Float, rng: String
        /// Model evaluations per image (the tracer's step numbers run 0 ..< this).
        public var evaluations: Int
    }

    public struct NonFinite: Codable, Sendable, Equatable {
        /// Traced path ("dit.layers.3", "vae.decoder.up_blocks.1", "dit.velocity").
        public var path: String
        /// Model evaluation (DiT paths only).
        public var step: Int?
        public var computeDType: String
        public var nanCount: Int
        public var infCount: Int
    }

    public struct Result: Codable, Sendable {
        public var caseIndex: Int
        /// Why this image was not made (the config's failure, a stage's error, non-finite values).
        public var error: String?
        /// The PNG, relative to the report folder.
        public var image: String?
        public var encodeSeconds: Double?
        public var denoiseSeconds: Double?
        /// Wall time of each sampler step.
        public var stepSeconds: [Double]
        public var decodeSeconds: Double?
        public var firstNonFinite: NonFinite?
        /// ||latent - reference latent|| / ||reference latent||.
        public var latentRelativeL2: Double?
        /// PSNR / SSIM / VIF of the image against the reference config's image.
        public var metrics: ImageMetrics?
        /// With a timing pass: whether its latent and image were the same as the traced pass's.
        public var timingPassMatches: Bool?
    }

    public struct ModuleError: Codable, Sendable {
        public var path: String
        /// ||output - reference output|| / ||reference output|| (+infinity for non-finite values).
        public var relativeError: Double
    }

    public struct LayerErrors: Codable, Sendable {
        /// Model evaluation (0-based).
        public var step: Int
        public var modules: [ModuleError]
    }

    public struct Config: Codable, Sendable {
        public var index: Int
        /// The spec as given.
        public var spec: String
        /// The resolved policy (`--precision` form) and device, nil when the spec did not parse.
        public var precision: String?
        public var device: String?
        public var isReference: Bool
        /// Why the config could not run at all (bad spec, a model that failed to load, out of memory).
        public var error: String?
        public var loadTextSeconds: Double?
        public var loadDiTSeconds: Double?
        public var loadVAESeconds: Double?
        /// Peak resident memory of the process while this config ran (Linux: VmHWM, reset at
        /// the config's start; elsewhere the process's peak so far).
        public var peakHostBytes: Int
        /// Whether peakHostBytes was reset for this config (false: the process peak so far).
        public var peakHostIsPerConfig: Bool
        /// Host bytes the report itself held while this config ran (the reference's DiT module
        /// outputs kept for the per-layer comparison); part of peakHostBytes.
        public var heldByReportBytes: Int?
        /// Peak bytes of CPU-backend tensors (memory-mapped weights not counted).
        public var peakCPUTensorBytes: Int
        /// Peak bytes the GPU backend had allocated (nil on the CPU).
        public var peakDeviceBytes: Int?
        /// Whether the times and memory come from a separate untraced pass.
        public var timingPass: Bool?
        /// The `newbie generate` command that makes this config's first image.
        public var generateCommand: String
        public var results: [Result]
        /// Per DiT module relative error against the reference at the chosen evaluations, for
        /// the first prompt and seed (empty for the reference or without tracing).
        public var layerErrors: [LayerErrors]
    }

    public var tool = "newbie precision-report"
    public var created: String
    public var command: String
    public var machine: Machine
    public var device: String
    public var deviceSpec: String
    public var versions: [String: String]
    public var models: [String: String]
    public var settings: Settings
    public var cases: [PrecisionReportConfig.Case]
    /// Model evaluations whose DiT module outputs were compared (first, middle, last).
    public var layerSteps: [Int]
    public var traced: Bool
    public var diffGain: Int
    public var configs: [Config]

    /// JSON with +infinity as "inf" (PSNR of identical images), NaN as "nan", keys sorted.
    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try e.encode(self)
    }

    public static func decode(_ data: Data) throws -> PrecisionReport {
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try d.decode(PrecisionReport.self, from: data)
    }
}

public enum PrecisionReportRunner {
    /// The files the report writes (besides images/).
    public static let files = ["report.md", "report.json", "report.html", "grid.png"]

    /// Refuses a folder that exists and holds anything, unless `force`; says what is there.
    public static func checkOutput(_ dir: String, force: Bool) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDir) else { return }
        guard isDir.boolValue else { throw PipelineError("-o \(dir): a file of that name exists; give a folder path") }
        let items = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).sorted()
        if items.isEmpty || force { return }
        let shown = items.prefix(6).joined(separator: ", ") + (items.count > 6 ? ", ... (\(items.count) entries)" : "")
        throw PipelineError("-o \(dir) is not empty (\(shown)); give an empty or new folder, or --force to write the report into it (its files of the same names are replaced)")
    }

    /// Sampler steps of the whole run, done and to do, for the progress lines.
    final class Progress {
        let total: Int
        var done = 0
        let start = Double(DispatchTime.now().uptimeNanoseconds) / 1e9
        init(total: Int) { self.total = total }

        /// Counts a step; "12/90 steps of the run, ETA 1m20s".
        func step() -> String {
            done += 1
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds) / 1e9 - start
            let eta = elapsed / Double(done) * Double(max(total - done, 0))
            let e = eta < 60 ? String(format: "%.0fs", eta) : String(format: "%dm%02ds", Int(eta) / 60, Int(eta) % 60)
            return "\(done)/\(total) steps of the run, ETA \(e)"
        }
    }

    /// One config's pass over every case.
    struct Pass {
        var row: PrecisionReport.Config
        var results: [PrecisionReport.Result]
        var latents: [Tensor?]
        var images: [RGBImage?]
    }

    /// Where the per-layer comparison stands: the reference's chosen module outputs (case 0), in
    /// the order they were reported, and the current config's errors against them.
    final class LayerCompare {
        var reference: [String: Tensor] = [:]
        var order: [(path: String, step: Int)] = []
        var errors: [String: Double] = [:]
        static func key(_ path: String, _ step: Int) -> String { "\(step) \(path)" }
        var heldBytes: Int { reference.values.reduce(0) { $0 + $1.shape.reduce(1, *) * 4 } }

        func observer(isReference: Bool, steps: [Int]) -> (String, Int?, Tensor) -> Void {
            { [self] path, step, tensor in
                guard let s = step, steps.contains(s), path.hasPrefix("dit."), path != "dit.input" else { return }
                let k = LayerCompare.key(path, s)
                if isReference {
                    if reference[k] == nil { order.append((path, s)) }
                    reference[k] = Tensor(tensor.toFloats(), shape: tensor.shape)
                } else if let r = reference[k] {
                    errors[k] = r.shape == tensor.shape ? Numerics.relativeL2(tensor.toFloats(), r.toFloats()) : .infinity
                }
            }
        }

        /// The current config's errors by evaluation, in the reference's module order (a module
        /// the config never reported counts as +infinity); empty when nothing was compared.
        func take(steps: [Int]) -> [PrecisionReport.LayerErrors] {
            defer { errors = [:] }
            guard !errors.isEmpty else { return [] }
            return steps.compactMap { s in
                let mods = order.filter { $0.step == s }.map { PrecisionReport.ModuleError(path: $0.path, relativeError: errors[LayerCompare.key($0.path, s)] ?? .infinity) }
                return mods.isEmpty ? nil : PrecisionReport.LayerErrors(step: s, modules: mods)
            }
        }
    }

    /// Runs every config on every case and writes the report; a config or case that fails is
    /// recorded and the run goes on. `log` gets the progress.
    @discardableResult
    public static func run(_ c: PrecisionReportConfig, log: @escaping (String) -> Void = { _ in }) throws -> PrecisionReport {
        guard !c.cases.isEmpty else { throw PipelineError("no prompt: give --prompt TEXT or --prompt-file PATH") }
        guard !c.configs.isEmpty else { throw PipelineError("no config: give --configs, e.g. \"fp32;bf16;fp16\"") }
        try c.settings.validate()
        for slot in ModelSlot.allCases { _ = try c.paths.require(slot) }
        try FileManager.default.createDirectory(atPath: c.output + "/images", withIntermediateDirectories: true)

        let evaluations = try c.settings.makeSampler().evaluationCount
        let layerSteps = Array(Set([0, evaluations / 2, max(evaluations - 1, 0)])).sorted()
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let layers = LayerCompare()
        let progress = Progress(total: c.configs.count * c.cases.count * (try c.settings.makeSampler().stepCount)
                                       * (c.trace && c.timingPass ? 2 : 1))
        var configs: [PrecisionReport.Config] = []
        var refLatents: [Tensor?] = Array(repeating: nil, count: c.cases.count)
        var refImages: [RGBImage?] = Array(repeating: nil, count: c.cases.count)
        var images: [[RGBImage?]] = []
        let runStart = clock()

        for (ci, spec) in c.configs.enumerated() {
            let isRef = ci == 0
            log("config \(ci + 1)/\(c.configs.count): \(spec)" + (isRef ? " (reference)" : ""))
            var pass: Pass
            if c.trace && c.timingPass {
                log("  timing pass (untraced)")
                let timed = runPass(c, index: ci, spec: spec, traced: false, observer: nil, progress: progress, log: log)
                log("  traced pass")
                pass = runPass(c, index: ci, spec: spec, traced: true,
                               observer: layers.observer(isReference: isRef, steps: layerSteps), progress: progress, log: log)
                // times and memory from the untraced pass, everything else from the traced one
                pass.row.loadTextSeconds = timed.row.loadTextSeconds
                pass.row.loadDiTSeconds = timed.row.loadDiTSeconds
                pass.row.loadVAESeconds = timed.row.loadVAESeconds
                pass.row.peakHostBytes = timed.row.peakHostBytes
                pass.row.peakHostIsPerConfig = timed.row.peakHostIsPerConfig
                pass.row.peakCPUTensorBytes = timed.row.peakCPUTensorBytes
                pass.row.peakDeviceBytes = timed.row.peakDeviceBytes
                pass.row.timingPass = true
                for i in pass.results.indices {
                    let t = timed.results[i]
                    pass.results[i].encodeSeconds = t.encodeSeconds
                    pass.results[i].denoiseSeconds = t.denoiseSeconds
                    pass.results[i].stepSeconds = t.stepSeconds
                    pass.results[i].decodeSeconds = t.decodeSeconds
                    pass.results[i].timingPassMatches = timed.images[i] == pass.images[i]
                        && (timed.latents[i]?.toFloats() ?? []) == (pass.latents[i]?.toFloats() ?? [])
                    if let e = t.error, pass.results[i].error == nil { pass.results[i].error = "timing pass: \(e)" }
                }
            } else {
                pass = runPass(c, index: ci, spec: spec, traced: c.trace,
                               observer: c.trace ? layers.observer(isReference: isRef, steps: layerSteps) : nil, progress: progress, log: log)
            }
            var row = pass.row
            var results = pass.results
            if !isRef { row.heldByReportBytes = layers.heldBytes }
            if !isRef { row.layerErrors = layers.take(steps: layerSteps) }

            // measurements against the reference
            for i in c.cases.indices {
                if isRef { refLatents[i] = pass.latents[i]; refImages[i] = pass.images[i] }
                if let z = pass.latents[i], let r = refLatents[i] {
                    results[i].latentRelativeL2 = z.shape == r.shape ? Numerics.relativeL2(z.toFloats(), r.toFloats()) : .infinity
                }
                if let im = pass.images[i] {
                    let name = "images/\(ci)-\(slug(spec))-case\(i).png"
                    try PNG.write(im, to: c.output + "/" + name, text: [
                        ("Software", "newbie precision-report"), ("newbie:precision", row.precision ?? spec),
                        ("newbie:prompt", c.cases[i].prompt), ("newbie:seed", "\(c.cases[i].seed)")])
                    results[i].image = name
                    if let r = refImages[i] {
                        do { results[i].metrics = try ImageMetrics(reference: r, image: im) } catch {
                            results[i].error = "metrics: \(describe(error))"
                        }
                    }
                }
                if results[i].error == nil && pass.images[i] == nil { results[i].error = "no image" }
            }
            for r in results {
                var line = "  case \(r.caseIndex + 1): "
                if let e = r.error { line += "failed: \(e)" } else if let m = r.metrics {
                    line += String(format: "PSNR %@ dB, SSIM %.4f, VIF %@, latent rel. L2 %.3g", fmtPSNR(m.psnr), m.ssim,
                                   m.vif.map { String(format: "%.4f", $0) } ?? "-", r.latentRelativeL2 ?? .nan)
                }
                if let n = r.firstNonFinite { line += "; first non-finite: \(n.path)" + (n.step.map { " step \($0)" } ?? "") }
                log(line)
            }
            row.results = results
            configs.append(row)
            images.append(pass.images)
        }
        log(String(format: "all configs ran in %.1f s; writing the report", clock() - runStart))

        let s = c.settings
        let report = PrecisionReport(
            created: ISO8601DateFormatter().string(from: Date()), command: c.command, machine: machine(),
            device: c.deviceName, deviceSpec: c.device, versions: versions(),
            models: Dictionary(uniqueKeysWithValues: ModelSlot.allCases.compactMap { sl in c.paths.path(sl).map { (sl.rawValue, $0) } }),
            settings: .init(width: s.width, height: s.height, steps: s.steps, sampler: s.sampler.rawValue, shift: s.shift, cfg: s.cfg.scale,
                            cfgTrunc: s.cfg.truncation, renorm: s.cfg.renorm, rng: s.rng.rawValue, evaluations: evaluations),
            cases: c.cases, layerSteps: layerSteps, traced: c.trace,
            diffGain: c.diffGain > 0 ? c.diffGain : PrecisionReportGrid.autoGain(images: images), configs: configs)

        let grid = PrecisionReportGrid.make(report: report, images: images, gain: report.diffGain)
        try PNG.write(grid, to: c.output + "/grid.png", text: [("Software", "newbie precision-report")])
        try report.json().write(to: URL(fileURLWithPath: c.output + "/report.json"))
        try Data(PrecisionReportText.markdown(report).utf8).write(to: URL(fileURLWithPath: c.output + "/report.md"))
        let gridPNG = try Data(contentsOf: URL(fileURLWithPath: c.output + "/grid.png"))
        try Data(PrecisionReportText.html(report, gridPNG: gridPNG, gridWidth: grid.width).utf8).write(to: URL(fileURLWithPath: c.output + "/report.html"))
        return report
    }

    /// Text encoders, DiT and VAE of one config over every case, stage by stage (each model is
    /// freed before the next loads). Never throws: failures are recorded in the row or the case.
    static func runPass(_ c: PrecisionReportConfig, index ci: Int, spec: String, traced: Bool,
                        observer: ((String, Int?, Tensor) -> Void)?, progress: Progress, log: @escaping (String) -> Void) -> Pass {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let cpu = Backends.backend(for: .cpu)
        var row = PrecisionReport.Config(index: ci, spec: spec, precision: nil, device: nil, isReference: ci == 0, error: nil,
                                         peakHostBytes: 0, peakHostIsPerConfig: false, peakCPUTensorBytes: 0, peakDeviceBytes: nil,
                                         generateCommand: "", results: [], layerErrors: [])
        var results = c.cases.indices.map { PrecisionReport.Result(caseIndex: $0, stepSeconds: []) }
        var latents: [Tensor?] = Array(repeating: nil, count: c.cases.count)
        var images: [RGBImage?] = Array(repeating: nil, count: c.cases.count)
        var tracers: [PipelineTracer?] = Array(repeating: nil, count: c.cases.count)
        var deviceBackend: Backend? = nil
        row.peakHostIsPerConfig = HostMemory.resetPeak()
        cpu.resetPeakMemory()
        do {
            let parts = PrecisionReportConfig.split(config: spec)
            let policy = try PlacementPolicy.parse(precision: parts.precision, device: c.device, quantize: parts.quantize, offload: c.offload)
            let stepCache = try PrecisionReportConfig.stepCache(parts.stepCache)
            row.precision = policy.precisionSpec
            row.device = policy.deviceSpec
            let options = StageOptions(placement: policy, cuda: c.cuda)
            row.generateCommand = generateCommand(c, case: c.cases[0], options: options, stepCache: stepCache)
            for d in policy.usedDevices {
                _ = try DeviceSupport.open(d, cuda: c.cuda)
                if d != .cpu { deviceBackend = Backends.backend(for: d) }
            }
            deviceBackend?.resetPeakMemory()
            try policy.checkRules(paths: c.paths)
            for i in c.cases.indices where traced {
                let tr = PipelineTracer(trace: false, detectOverflow: false, computeDType: policy.precision(.dit).base, sink: { _ in })
                if i == 0 { tr.observer = observer }
                tracers[i] = tr
            }

            // 1. text: every case, then the encoders are freed
            var encoded: [EncodedPrompt?] = Array(repeating: nil, count: c.cases.count)
            do {
                var t0 = clock()
                let text = try TextStage(paths: c.paths, options: options)
                row.loadTextSeconds = clock() - t0
                for (i, k) in c.cases.enumerated() {
                    text.tracer = tracers[i]
                    t0 = clock()
                    do {
                        encoded[i] = try text.encode(prompt: k.prompt, negativePrompt: k.negativePrompt,
                                                     systemPrompt: SystemPrompt.resolve(k.systemPrompt, prompt: k.prompt))
                        results[i].encodeSeconds = clock() - t0
                    } catch {
                        results[i].error = "text encoders: \(describe(error))"
                    }
                }
            }
            // 2. the DiT
            do {
                var t0 = clock()
                let den = try DenoiseStage(paths: c.paths, options: options)
                row.loadDiTSeconds = clock() - t0
                for (i, k) in c.cases.enumerated() {
                    guard let e = encoded[i] else { continue }
                    den.tracer = tracers[i]
                    var s = c.settings
                    s.seed = k.seed
                    s.stepCache = stepCache
                    var mark = clock()
                    t0 = mark
                    do {
                        let z = try den.run(e, settings: s, onStep: { st in
                            let now = clock()
                            results[i].stepSeconds.append(now - mark)
                            mark = now
                            log("  case \(i + 1)/\(c.cases.count) step \(st.index + 1)/\(st.count) " + String(format: "%.3f s", results[i].stepSeconds.last!)
                                + " (\(progress.step()))")
                        })
                        results[i].denoiseSeconds = clock() - t0
                        let bad = z.toFloats().reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
                        if bad > 0 {
                            results[i].error = "the latent has \(bad) non-finite values (NaN/Inf); not decoded"
                            results[i].latentRelativeL2 = .infinity
                        } else {
                            latents[i] = z
                        }
                    } catch {
                        results[i].error = "DiT: \(describe(error))"
                    }
                }
            }
            // 3. the VAE
            do {
                var t0 = clock()
                let dec = try DecodeStage(paths: c.paths, options: options)
                row.loadVAESeconds = clock() - t0
                for i in c.cases.indices {
                    guard let z = latents[i] else { continue }
                    dec.tracer = tracers[i]
                    t0 = clock()
                    do {
                        images[i] = try dec.run(z)
                        results[i].decodeSeconds = clock() - t0
                    } catch {
                        results[i].error = "VAE: \(describe(error))"
                    }
                }
            }
        } catch {
            row.error = describe(error)
            log("  failed: \(row.error!)")
            for i in results.indices where results[i].error == nil { results[i].error = "config failed: \(row.error!)" }
        }
        // a device failure not yet thrown belongs to this config, not to the next one
        if let b = deviceBackend {
            do { try Backends.check(b.device) } catch {
                if row.error == nil { row.error = "after the run: \(describe(error))" }
                log("  device error after the run: \(describe(error))")
            }
        }
        row.peakHostBytes = HostMemory.peak()
        row.peakCPUTensorBytes = cpu.memoryStats.peakBytes
        row.peakDeviceBytes = deviceBackend?.memoryStats.peakBytes
        for i in c.cases.indices {
            if let tr = tracers[i], let bad = tr.firstNonFinite {
                results[i].firstNonFinite = .init(path: bad.path, step: bad.step, computeDType: tr.computeDType(of: bad.path).userName,
                                                  nanCount: bad.summary.nanCount, infCount: bad.summary.infCount)
            }
        }
        return Pass(row: row, results: results, latents: latents, images: images)
    }

    static func describe(_ e: Error) -> String {
        if let d = e as? CustomStringConvertible { return d.description }
        return e.localizedDescription
    }

    static func fmtPSNR(_ v: Double) -> String { v.isInfinite ? "inf" : String(format: "%.2f", v) }

    /// A file-name form of a spec ("fp16,dit.layers.*.attention=fp32" -> "fp16_dit.layers.x.attention-fp32").
    static func slug(_ spec: String) -> String {
        String(spec.map { c -> Character in
            if c.isLetter || c.isNumber || c == "." || c == "-" { return c }
            if c == "=" { return "-" }
            if c == "*" { return "x" }
            return "_"
        }.prefix(60))
    }

    static func generateCommand(_ c: PrecisionReportConfig, case k: PrecisionReportConfig.Case, options: StageOptions,
                                stepCache: StepCacheOptions? = nil) -> String {
        let s = c.settings
        var a = ["newbie", "generate", quote(k.prompt)]
        if !k.negativePrompt.isEmpty { a += ["--negative-prompt", quote(k.negativePrompt)] }
        if k.systemPrompt != "auto" { a += ["--system-prompt", quote(k.systemPrompt)] }
        a += ["--width", "\(s.width)", "--height", "\(s.height)", "--steps", "\(s.steps)", "--sampler", s.sampler == .dpm ? "dpm" : s.sampler.rawValue,
              "--shift", "\(s.shift)", "--cfg", "\(s.cfg.scale)", "--cfg-trunc", "\(s.cfg.truncation)", "--renorm", "\(s.cfg.renorm)",
              "--seed", "\(k.seed)", "--rng", s.rng.rawValue, "--precision", quote(options.placement.precisionSpec),
              "--device", quote(options.placement.deviceSpec)]
        if !options.placement.quantizeSpec.isEmpty { a += ["--quantize", quote(options.placement.quantizeSpec)] }
        if let sc = stepCache { a += ["--step-cache", sc.mode.rawValue, "--cache-threshold", "\(sc.threshold)"] }
        for slot in ModelSlot.allCases { if let p = c.paths.path(slot) { a += ["--\(slot.rawValue)", quote(p)] } }
        return a.joined(separator: " ")
    }

    static func quote(_ s: String) -> String { ShellWords.quote(s) }

    static func machine() -> PrecisionReport.Machine {
        var u = utsname()
        uname(&u)
        func field<T>(_ v: T) -> String {
            withUnsafeBytes(of: v) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
        }
        var cpuName = "unknown"
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
           let colon = line.firstIndex(of: ":") {
            cpuName = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return .init(hostname: ProcessInfo.processInfo.hostName, os: "\(field(u.sysname)) \(field(u.release)) \(field(u.machine))",
                     cpu: cpuName, cpuCores: ProcessInfo.processInfo.activeProcessorCount,
                     memoryBytes: Int(ProcessInfo.processInfo.physicalMemory))
    }

    static func versions() -> [String: String] {
        var v: [String: String] = [:]
        #if compiler(>=6.3)
        v["swift"] = ">= 6.3"
        #elseif compiler(>=6.0)
        v["swift"] = "6.0 ..< 6.3"
        #else
        v["swift"] = "< 6.0"
        #endif
        v["os"] = ProcessInfo.processInfo.operatingSystemVersionString
        v["metrics"] = "PSNR; SSIM 11x11 Gaussian sigma 1.5 (scikit-image 0.26.0 checked); VIFp (piq 0.8.0 checked)"
        return v
    }
}

/// Peak resident memory of the process, resettable on Linux (VmHWM in /proc/self/status,
/// reset by writing 5 to /proc/self/clear_refs).
enum HostMemory {
    /// Resets the peak; false where that is not possible (the peak then covers the whole process).
    static func resetPeak() -> Bool {
        guard let fd = fopen("/proc/self/clear_refs", "w") else { return false }
        let ok = fputs("5", fd) >= 0
        return fclose(fd) == 0 && ok
    }

    static func peak() -> Int {
        if let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kib = Int(parts[1]) { return kib * 1024 }
        }
        return PipelineBench.peakRSS()
    }
}
