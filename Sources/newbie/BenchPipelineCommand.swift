import ArgumentParser
import Foundation
import NewBieCUDA
import NewBieHarness
import NewBiePipeline
import NewBieTensor

/// `newbie bench-pipeline`: one whole generation on a random NewBie at full (or tiny) size,
/// timed stage by stage (library: NewBiePipeline/PipelineBench.swift, RandomModel.swift).
struct BenchPipelineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-pipeline",
        abstract: "Time one whole generation (text encoders, Euler steps with CFG, VAE, PNG) on a random-weight NewBie.",
        discussion: """
        Writes a NewBie with random weights in the official Hugging Face layout to --weights DIR (reused by later \
        runs with the same sizes, seed and dtype), then runs the real pipeline (the code of `newbie generate`) on it: \
        prompt -> Gemma and XLM-R tokenizers -> Gemma 3 and Jina CLIP v2 (prompt and negative prompt) -> --steps grid points (steps - 1 Euler \
        steps) with classifier-free guidance (batch 2 on every step by default) -> VAE decode -> PNG. Reports the wall \
        time of every stage and step and the peak memory each backend reports, as a table and optionally JSON.
        --scale full has the published configurations (DiT 3.49 B, Gemma 3 4B text model, Jina CLIP v2 text tower, \
        FLUX.1-dev VAE; about 16 GB of bf16 weights); --scale tiny the toy ones of make-tiny-model. The tokenizers are \
        the committed small ones padded to the real vocabulary sizes (token ids arbitrary, more tokens per word than \
        the real ones) unless --gemma-tokenizer / --jina-tokenizer name real files. The images mean nothing.
        """)

    @Option(help: "tiny or full (the published configurations).")
    var scale = "full"

    @Option(help: "Folder for the random model (created; reused when it already holds the same one). Default: a temporary folder, removed afterwards.")
    var weights: String?

    @Flag(help: "Write the random model even when --weights already holds it.")
    var rewrite = false

    @Flag(name: .customLong("weights-only"), help: "Write (or check) the random model and stop.")
    var weightsOnly = false

    @Option(name: .customLong("weights-dtype"), help: "Storage dtype of the random weights: bf16 (as published), fp16 or fp32.")
    var weightsDType = "bf16"

    @Option(name: .customLong("max-layers"), help: "At most this many layers in each stack (DiT layers and refiners, Gemma, Jina): a quick check at full width.")
    var maxLayers: Int?

    @Option(name: .customLong("fixtures"), help: "The repository's Tests/Fixtures (the small tokenizers); default: found from the source location or the working directory.")
    var fixtures: String?

    @Option(name: .customLong("gemma-tokenizer"), help: "A real Gemma 3 tokenizer.json (or Gemma GGUF) instead of the synthetic one.")
    var gemmaTokenizer: String?

    @Option(name: .customLong("jina-tokenizer"), help: "A real jina-clip-v2 (XLM-R) tokenizer.json instead of the synthetic one.")
    var jinaTokenizer: String?

    @OptionGroup var deviceOptions: DeviceOptions

    @Option(help: "Image width and height in pixels (a multiple of 16).")
    var size = 1024

    @Option(help: "Points of the shifted grid, as for generate --steps: the Euler sampler makes steps - 1 guided DiT calls (default 29: 28 calls).")
    var steps = 29

    @Option(help: "Classifier-free guidance scale.")
    var cfg: Float = 5

    @Option(name: .customLong("cfg-trunc"), help: "Guidance only while t < this; 100 = on every step (batch 2 throughout).")
    var cfgTrunc: Float = 100

    @Option(help: "Seed of the initial noise.")
    var seed: UInt64 = 0

    @Option(name: .customLong("weights-seed"), help: "Seed of the random weights.")
    var weightsSeed: UInt64 = 0

    @Option(help: "The prompt (default: a NewBie XML prompt of the usual length).")
    var prompt: String?

    @Option(name: .customLong("gemma-tokens"), help: "Cut (or repeat, then cut) the prompt to this many Gemma tokens, <bos> and system prompt included, with the tokenizer in use; 0 = the prompt as given. 256 is about the length of a typical XML prompt with the system prompt.")
    var gemmaTokens = 256

    @Option(name: .customLong("negative-prompt"), help: "Negative prompt (default empty, as in the official demo).")
    var negativePrompt = ""

    @Option(help: "Times to run the whole generation in this process (the first pays kernel compilation and cold caches).")
    var runs = 1

    @Flag(name: .customLong("check-finite"), help: "Stop at the first NaN/Inf in any module output and report the largest magnitudes (slow: copies every tensor to the CPU; times not representative).")
    var checkFinite = false

    @Option(name: [.short, .long], help: "The PNG to write.")
    var output = "bench-pipeline.png"

    @Option(help: "Also write the report as JSON to this file.")
    var json: String?

    @Flag(help: "Print only the table.")
    var quiet = false

    func run() throws {
        do { try bench() } catch let e as PipelineError { throw e }
    }

    func bench() throws {
        if !weightsOnly { try checkOutput(output) }
        if let j = json { try checkOutput(j, option: "--json", binary: false) }
        guard let sc = RandomModelSpec.Scale(rawValue: scale) else { throw PipelineError("--scale \(scale): use tiny or full") }
        guard let wdt = DType(userName: weightsDType), [.f32, .bf16, .f16].contains(wdt) else {
            throw PipelineError("--weights-dtype \(weightsDType): use bf16, fp16 or fp32")
        }
        var spec = RandomModelSpec(scale: sc)
        if let n = maxLayers {
            guard n >= 1 else { throw PipelineError("--max-layers \(n): at least 1") }
            spec = spec.cappingDepth(n)
        }
        let log: (String) -> Void = { line in if !quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) } }
        if weightsOnly {
            guard let dir = weights else { throw PipelineError("--weights-only needs --weights DIR") }
            for line in spec.summary { log("  " + line) }
            let w = try RandomModel.write(spec, to: dir, dtype: wdt, seed: weightsSeed, rewrite: rewrite, fixtures: fixtures, log: log)
            print(w.written ? String(format: "wrote %@ of random weights to %@ in %.1f s", formatBytes(w.bytes), dir, w.seconds)
                            : "\(dir) already holds this random model (--rewrite to write it again)")
            return
        }
        let options = try deviceOptions.stageOptions()
        var deviceName = "\(options.device)"
        if case .cuda(let i) = options.device, let cuda = try? DeviceSupport.openCUDA(i) {
            deviceName += " (\(cuda.name), sm_\(cuda.computeCapability))"
        } else if options.device == .cpu {
            deviceName += " (\(ProcessInfo.processInfo.activeProcessorCount) cores)"
        }
        var config = PipelineBenchConfig(spec: spec, options: options, deviceName: deviceName, output: output)
        config.weightsDir = weights
        config.weightsDType = wdt
        config.weightsSeed = weightsSeed
        config.rewrite = rewrite
        config.fixtures = fixtures
        config.gemmaTokenizer = gemmaTokenizer
        config.jinaTokenizer = jinaTokenizer
        config.width = size
        config.height = size
        guard steps >= 2 else { throw PipelineError("--steps \(steps): need at least 2 grid points (one Euler step)") }
        config.steps = steps - 1
        config.cfg = cfg
        config.cfgTrunc = cfgTrunc
        config.seed = seed
        if let p = prompt { config.prompt = p }
        config.gemmaTokens = gemmaTokens
        config.negativePrompt = negativePrompt
        config.runs = runs
        config.checkFinite = checkFinite
        let report = try PipelineBench.run(config, log: log)
        print(report.table())
        if let j = json {
            try writeText(String(decoding: try report.json(), as: UTF8.self), to: j, option: "--json")
            if !quiet { reportWrote(j) }
        }
    }
}
