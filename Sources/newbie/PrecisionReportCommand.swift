import ArgumentParser
import Foundation
import NewBieDiffusion
import NewBieHarness
import NewBieImage
import NewBieMetrics
import NewBiePipeline
import NewBieTensor

/// `newbie compare REFERENCE.png OTHER.png`: PSNR, SSIM and VIF of one image against another.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare an image with a reference image: PSNR, SSIM (luminance and per channel) and VIF.",
        discussion: """
        Both images must have the same size (at least 11x11; VIF needs 41x41). PNGs of any colour type are read as \
        8-bit RGB (alpha dropped). PSNR is over every RGB byte (inf for identical images). SSIM follows Wang et al. \
        (2004) with an 11x11 Gaussian window (sigma 1.5), on the luminance Y = 0.299 R + 0.587 G + 0.114 B and per \
        channel (the mean of R, G, B), matching scikit-image's structural_similarity(gaussian_weights=True, \
        sigma=1.5, use_sample_covariance=False, data_range=255). VIF is Sheikh and Bovik's pixel-domain VIFp on Y, \
        matching piq's vif_p; it is not symmetric (1 for identical images, lower when the second image loses \
        information of the reference, above 1 for a contrast-enhanced one).
        """)

    @Argument(help: "The reference image (PNG).")
    var reference: String

    @Argument(help: "The image to measure (PNG of the same size).")
    var other: String

    @Flag(help: "Print the metrics as one JSON object.")
    var json = false

    func run() throws {
        func load(_ p: String) throws -> RGBImage {
            do { return try PNG.read(p).image } catch { throw PipelineError("\(error)") }
        }
        let a = try load(reference), b = try load(other)
        guard a.width == b.width, a.height == b.height else {
            throw PipelineError("\(reference) is \(a.width)x\(a.height) but \(other) is \(b.width)x\(b.height); the metrics compare images of the same size")
        }
        let m: ImageMetrics
        do { m = try ImageMetrics(reference: a, image: b) } catch { throw PipelineError("\(error)") }
        if json {
            func n(_ v: Double?) -> String {
                guard let v = v else { return "null" }
                return v.isFinite ? "\(v)" : v > 0 ? "\"inf\"" : "\"nan\""
            }
            func s(_ t: String) -> String {
                let d = try! JSONSerialization.data(withJSONObject: [t], options: [.withoutEscapingSlashes])
                return String(decoding: d.dropFirst().dropLast(), as: UTF8.self)
            }
            print("{\"reference\": \(s(reference)), \"image\": \(s(other)), \"width\": \(a.width), \"height\": \(a.height), "
                  + "\"psnr\": \(n(m.psnr)), \"ssim\": \(n(m.ssim)), \"ssim_rgb\": \(n(m.ssimRGB)), \"vif\": \(n(m.vif))}")
        } else {
            print("reference \(reference) (\(a.width)x\(a.height)), image \(other)")
            print("PSNR      " + (m.psnr.isInfinite ? "inf (identical)" : String(format: "%.4f dB", m.psnr)))
            print(String(format: "SSIM      %.6f (luminance Y), %.6f (per channel, mean of R, G, B)", m.ssim, m.ssimRGB))
            print("VIF       " + (m.vif.map { String(format: "%.6f (pixel domain, on Y)", $0) } ?? "- (needs at least 41x41)"))
        }
    }
}

/// `newbie precision-report`: the same prompts and seeds under several precision configs,
/// measured against the first.
struct PrecisionReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "precision-report",
        abstract: "Run the same prompts and seeds under several precisions and report time, memory and image quality against the first.",
        discussion: """
        Every config in --configs is a precision spec as --precision takes it (fp32, bf16, fp16, "bf16,vae=fp32", \
        "fp16,dit.layers.*.attention=fp32", ...), optionally with quantized weights after a "+" in the --quantize form \
        ("bf16+dit=int8,gemma=int8"), or a bare quantization type ("int8": the DiT and both text encoders), and may end in @teacache[:X] or \
        @fbcache[:X] to sample with the step cache ("bf16@teacache:0.3"); the first is the reference (--precision and --dtype do not apply here). Each config runs the text encoders, \
        the DiT sampling and the VAE on every prompt and seed with the same sampler and size. Per config and \
        prompt the report holds the wall time of each stage and DiT step, the peak host memory (and the GPU's), \
        the first module output with NaN or Inf (path and model evaluation), the latent's relative L2 error \
        against the reference and the image's PSNR, SSIM and VIF against the reference image (see `newbie \
        compare`); and, for the first prompt and seed, the relative error of every DiT module output at the \
        first, middle and last model evaluation, so the blocks that lose precision show. A config that fails \
        (bad spec, out of memory, NaN) is reported in its row and the run goes on.
        Output folder: report.md (the table), report.json (every number, with the machine, device, versions and \
        commands), grid.png (the images side by side with their labels, and under each one its difference from \
        the reference, amplified), report.html (self-contained: images inline, a sortable table, the per-layer \
        errors drawn as SVG) and images/ (each PNG). Numbers other than times and memory are the same from run to run.
        Tracing copies every module output to the CPU, which slows the stages (notably on a GPU): --timing-pass \
        runs each config once more untraced and takes the times and memory from that pass; --no-trace runs only \
        untraced (no non-finite location, no per-layer errors). The per-layer comparison holds the reference's DiT \
        module outputs at three model evaluations in host memory (up to about 10 GB at 1024x1024 for the full-size model).
        """)

    @OptionGroup var models: ModelOptions

    @Option(name: .customLong("prompt"), help: "A prompt (plain tags, natural language or NewBie XML); repeat for several.")
    var prompts: [String] = []

    @Option(name: .customLong("prompt-file"), help: "Prompts from a file: JSON lines ({\"prompt\": ..., \"negative_prompt\": ..., \"seed\": ...}), one XML prompt when the file starts with <, else one prompt per non-empty line.")
    var promptFile: String?

    @Option(name: .customLong("negative-prompt"), help: "Negative prompt for the unconditional branch (default: empty).")
    var negativePrompt = ""

    @Option(name: .customLong("system-prompt"), help: "Gemma's system prompt: auto, xml, text, none, or a literal string.")
    var systemPrompt = "auto"

    @Option(name: .customLong("seed"), help: "Seed of the initial noise; repeat for several (every prompt runs every seed; a JSON-lines prompt with its own seed runs that one).")
    var seeds: [UInt64] = []

    @Option(help: "Precision specs separated by \";\", the first being the reference, e.g. \"fp32;bf16;fp16;bf16,vae=fp32;fp16,dit.layers.*.attention=fp32\".")
    var configs = "fp32;bf16;fp16"

    @Option(help: "Image width in pixels, a multiple of 16.")
    var width = 1024
    @Option(help: "Image height in pixels, a multiple of 16.")
    var height = 1024
    @Option(help: "euler, midpoint and rk4: points of the official shifted grid; dpm: model evaluations.")
    var steps = 18
    @Option(help: "euler, midpoint (official default), rk4 or dpm.")
    var sampler = "midpoint"
    @Option(help: "Time shift of the grid.")
    var shift: Float = 6
    @Option(help: "Classifier-free guidance scale.")
    var cfg: Float = 5
    @Option(name: .customLong("cfg-trunc"), help: "Guidance only while t < this (t: 0 = noise, 1 = clean); 100 = always.")
    var cfgTrunc: Float = 0.25
    @Option(help: "Guidance renormalisation (0 = off).")
    var renorm: Float = 0
    @Option(help: "Noise generator: torch or torch-scalar.")
    var rng = "torch"

    @OptionGroup var deviceOptions: DeviceOptions

    @Flag(name: .customLong("trace"), inversion: .prefixedNo, help: "Trace every module output: the first non-finite value's place and the per-layer errors (on by default; --no-trace for untraced stage times).")
    var trace = true

    @Flag(name: .customLong("timing-pass"), help: "Run each config twice: untraced for the stage times and memory, then traced for the rest (the report says whether both passes made the same image).")
    var timingPass = false

    @Option(name: .customLong("diff-gain"), help: "Gain of the difference maps in grid.png: an integer >= 1, or auto (the 99th percentile of the differences at about half brightness, 1 to 64).")
    var diffGain = "auto"

    @Option(name: [.short, .customLong("output")], help: "Folder for the report (created; must be empty unless --force).")
    var output: String

    @Flag(help: "Write into a folder that is not empty (files of the same names are replaced).")
    var force = false

    @Flag(help: "Print nothing but errors.")
    var quiet = false

    func run() throws {
        try report()
    }

    func report() throws {
        let env = ProcessInfo.processInfo.environment
        if deviceOptions.dtype != nil || (deviceOptions.precision != nil && deviceOptions.precision != env["NEWBIE_PRECISION"]) {
            throw PipelineError("precision-report takes its precisions from --configs (\"fp32;bf16;fp16,vae=fp32\"), not --precision or --dtype")
        }
        let gain: Int
        if diffGain == "auto" { gain = 0 } else if let g = Int(diffGain), g >= 1 { gain = g } else {
            throw PipelineError("--diff-gain \(diffGain): an integer >= 1 or auto")
        }
        let configList = try PrecisionReportConfig.parseConfigs(configs)
        try PrecisionReportRunner.checkOutput(output, force: force)

        var entries: [(prompt: String, negative: String, seed: UInt64?)] = prompts.map { ($0, negativePrompt, nil) }
        if let f = promptFile {
            guard let text = try? String(contentsOfFile: f, encoding: .utf8) else { throw PipelineError("--prompt-file \(f): cannot read it as UTF-8 text") }
            entries += try PromptList.parse(text, source: f, negativePrompt: negativePrompt).map { ($0.prompt, $0.negativePrompt, $0.seed) }
        }
        guard !entries.isEmpty else { throw PipelineError("no prompt: give --prompt TEXT (repeatable) or --prompt-file PATH") }
        let seedList = seeds.isEmpty ? [UInt64(0)] : seeds
        var cases: [PrecisionReportConfig.Case] = []
        for e in entries {
            for s in e.seed.map({ [$0] }) ?? seedList {
                cases.append(.init(prompt: e.prompt, negativePrompt: e.negative, systemPrompt: systemPrompt, seed: s))
            }
        }
        let settings = SamplingSettings(width: width, height: height, steps: steps, sampler: try SamplerKind.parse(sampler), shift: shift,
                                        cfg: CFGOptions(scale: cfg, truncation: cfgTrunc, renorm: renorm), seed: seedList[0],
                                        rng: try NoiseRNG.parse(rng))
        try settings.validate()
        let cuda = try deviceOptions.cudaOptions()
        guard deviceOptions.quantize.isEmpty else {
            throw PipelineError("precision-report: quantization is part of each config, not a --quantize for all: write \"fp32;bf16;bf16+dit=int8,gemma=int8\" or \"fp32;bf16;int8\"")
        }
        // every config's syntax is checked before any model runs (module paths when its turn comes)
        for spec in configList {
            let parts = PrecisionReportConfig.split(config: spec)
            do {
                _ = try PlacementPolicy.parse(precision: parts.precision, device: deviceOptions.device, quantize: parts.quantize,
                                              offload: deviceOptions.offload)
                _ = try PrecisionReportConfig.stepCache(parts.stepCache)
            } catch {
                throw PipelineError("--configs: config \"\(spec)\": \(error)")
            }
        }
        // the device spec is checked here (a bad one fails before any model runs); precisions per config later
        let placement = try PlacementPolicy.parse(precision: "auto", device: deviceOptions.device)
        var parts: [String] = []
        for d in placement.usedDevices {
            if case .cuda(let i) = d {
                let g = try DeviceSupport.openCUDA(i, cuda: cuda)
                parts.append("\(d): \(g.name), sm_\(g.computeCapability)")
            } else {
                parts.append("\(d): \(ProcessInfo.processInfo.activeProcessorCount) cores")
            }
        }
        let deviceName = parts.joined(separator: "; ")
        let command = CommandLine.arguments.enumerated().map { $0.offset == 0 ? "newbie" : shellQuote($0.element) }.joined(separator: " ")
        var config = PrecisionReportConfig(paths: try models.paths(), configs: configList, device: deviceOptions.device, cuda: cuda,
                                           cases: cases, settings: settings, output: output, command: command, deviceName: deviceName)
        config.trace = trace
        config.offload = deviceOptions.offload
        config.timingPass = timingPass
        if timingPass && !trace { throw PipelineError("--timing-pass separates the times from a traced pass; with --no-trace every pass is untraced already") }
        config.diffGain = gain
        let quiet = self.quiet
        try PrecisionReportRunner.run(config, log: { line in
            if !quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) }
        })
        if !quiet { print("wrote \(output)/report.md, report.json, report.html, grid.png") }
    }
}
