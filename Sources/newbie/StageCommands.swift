import ArgumentParser
import Foundation
import NewBieDiffusion
import NewBieImage
import NewBiePipeline
import NewBieTensor
import NewBieWeights

// The three stages of `newbie generate` as separate commands reading and writing safetensors:
//   newbie encode  PROMPT --model M -o cond.safetensors
//   newbie denoise --cond cond.safetensors --model M -o latent.safetensors [--save-steps DIR]
//   newbie decode  --latent latent.safetensors --model M -o image.png
// They run the same library stages as `generate` (TextStage, DenoiseStage, DecodeStage), and the
// metadata travels from file to file into the PNG.

/// `newbie encode`: both text encoders -> conditioning file.
struct EncodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode",
        abstract: "Stage 1: encode a prompt and its negative with Gemma 3 and Jina CLIP v2 into a conditioning .safetensors.")

    @OptionGroup var promptOptions: PromptOptions
    @OptionGroup var models: TextModelOptions
    @OptionGroup var deviceOptions: DeviceOptions

    @Option(name: [.short, .long, .customLong("out")], help: "Output .safetensors (- for standard output): cap_feats [1, L, D], cap_mask [1, L], clip_pooled [1, C] and the same with uncond_ (fp32).")
    var output: String

    func run() throws {
        do {
            try checkOutput(output)
            let entries = try promptOptions.entries()
            guard entries.count == 1, let e = entries.first else {
                throw PipelineError("newbie encode takes one prompt; the input holds \(entries.count) (use newbie generate for batches)")
            }
            var options = try deviceOptions.stageOptions()
            let preset = try promptOptions.presetOptions.resolved()
            options.jinaSeesSystemPrompt = (preset ?? .demo).jinaSeesSystemPrompt
            let paths = try models.paths()
            let stage = try TextStage(paths: paths, options: options)
            let system = SystemPrompt.resolve(promptOptions.systemPrompt, prompt: e.prompt)
            for w in stage.truncationWarnings(prompt: e.prompt, negativePrompt: e.negative, systemPrompt: system) { printError("warning: \(w)") }
            let enc = try stage.encode(prompt: e.prompt, negativePrompt: e.negative, systemPrompt: system)
            var md = enc.metadata
            md.merge(GenerationMetadata.options(options)) { $1 }
            md[MetadataKey.model(.gemma)] = paths.gemma
            md[MetadataKey.model(.jina)] = paths.jina
            if let p = preset { md[MetadataKey.preset] = p.rawValue }
            try SafeTensorsWriter.write(enc.tensors(), metadata: md, toPath: output)
            reportWrote(output, ": prompt \(enc.condTokens) Gemma tokens, negative \(enc.uncondTokens)")
        } catch let e as PipelineError { throw e }
    }
}

/// `newbie denoise`: conditioning file -> latent file.
struct DenoiseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "denoise",
        abstract: "Stage 2: sample a latent with the DiT and guidance from a conditioning file (newbie encode).")

    @Option(help: "Conditioning .safetensors written by newbie encode.")
    var cond: String

    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var presetOptions: PresetOptions
    @OptionGroup var models: DiTModelOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var report: ReportOptions

    @Option(name: .customLong("save-steps"), help: "Folder for every model evaluation (eval_NNN.safetensors: x, velocity, t) and every step's state (step_NNN.safetensors).")
    var saveSteps: String?

    @Option(name: .customLong("init-latent"), help: "img2img (with --strength below 1): a .safetensors with \"latent\" (e.g. from newbie vae-encode).")
    var initLatent: String?

    @Option(name: [.short, .long, .customLong("out")], help: "Output .safetensors (- for standard output) with \"latent\" [1, C, H/8, W/8] (fp32) and the parameters as metadata.")
    var output: String

    func run() throws {
        do {
            try checkOutput(output)
            let (enc, inMeta) = try EncodedPrompt.read(cond)
            let preset = try presetOptions.resolved()
            let settings = try sampling.settings(seed: try sampling.firstSeed(), preset: preset ?? .demo)
            var options = try deviceOptions.stageOptions()
            options.adapters = try loraOptions.options()
            let paths = try models.paths()
            // the size must fit the DiT's position tables and this machine's memory (before loading)
            _ = try paths.require(.dit)
            try RunCheck.check([GenerationRequest(prompt: "", settings: settings, output: output)], paths: paths, options: options)
            let progress = ProgressReporter(quiet: report.quiet)
            progress.gridPoints = sampling.sampler == "dpm" ? nil : sampling.steps
            let t0 = ProgressReporter.now()
            let stage = try DenoiseStage(paths: paths, options: options)
            for n in stage.adapterNotes { progress.note(n) }
            stage.tracer = report.tracer(options)
            progress.stage("load DiT", ProgressReporter.now() - t0)
            if let d = saveSteps { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
            var saveError: Error? = nil
            func save(_ name: String, _ tensors: [(String, Tensor)], _ md: [String: String]) {
                guard let d = saveSteps, saveError == nil else { return }
                do { try SafeTensorsWriter.write(tensors, metadata: md, to: URL(fileURLWithPath: d).appendingPathComponent(name)) }
                catch { saveError = error }
            }
            var initial: Tensor? = nil
            if let p = initLatent {
                let f: SafeTensorsFile
                do { f = try SafeTensorsFile(path: p) } catch { throw PipelineError("--init-latent \(p): \(error)") }
                guard f.names.contains("latent") else { throw PipelineError("--init-latent \(p): no tensor \"latent\"") }
                initial = try f.tensor("latent").to(.f32)
            }
            let t1 = ProgressReporter.now()
            let latent = try stage.run(enc, settings: settings, initLatent: initial, onStep: { s in
                progress.step(s, image: 0, images: 1)
                save(String(format: "step_%03d.safetensors", s.index), [("x", s.x)], ["from": "\(s.from)", "to": "\(s.to)"])
            }, onEvaluation: { ev in
                save(String(format: "eval_%03d.safetensors", ev.index), [("x", ev.x), ("velocity", ev.velocity)], ["t": "\(ev.t)"])
            })
            progress.stage("denoise", ProgressReporter.now() - t1)
            if !report.quiet, let st = stage.stepCacheStats, let o = settings.stepCache { print(StepCacheStats.describe(st, o)) }
            if let e = saveError { throw PipelineError("--save-steps \(saveSteps ?? ""): \(e)") }
            var md = inMeta.filter { $0.key.hasPrefix("newbie:") }
            md.merge(GenerationMetadata.sampling(settings)) { $1 }
            md.merge(GenerationMetadata.options(options, ran: [.dit], over: inMeta)) { $1 }
            md[MetadataKey.model(.dit)] = stage.path
            if let p = preset { md[MetadataKey.preset] = p.rawValue }
            try SafeTensorsWriter.write([("latent", latent)], metadata: md, toPath: output)
            if !report.quiet { reportWrote(output, ": latent \(latent.shape)") }
            if report.stats { progress.printStats(device: options.device) }
        } catch let e as PipelineError { throw e }
    }
}

/// `newbie decode`: latent file -> PNG (the parameters carried into the text chunks).
struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Stage 3: decode a latent (newbie denoise) with the FLUX VAE into a PNG carrying its parameters.")

    @Option(help: "Latent .safetensors written by newbie denoise (tensor \"latent\").")
    var latent: String

    @OptionGroup var models: VAEModelOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @OptionGroup var pixels: PixelOptions

    @Option(name: [.short, .long, .customLong("out")], help: "Output PNG (- for standard output).")
    var output: String

    func run() throws {
        do {
            try checkOutput(output)
            let file: SafeTensorsFile
            do { file = try SafeTensorsFile(path: latent) } catch { throw PipelineError("--latent \(latent): \(error)") }
            guard file.names.contains("latent") else {
                throw PipelineError("--latent \(latent): no tensor \"latent\" (holds \(file.names.prefix(6).joined(separator: ", "))); expected a file written by newbie denoise")
            }
            let x = try file.tensor("latent").to(.f32)
            var options = try deviceOptions.stageOptions()
            options.pixelRounding = try pixels.rounding()
            let paths = try models.paths()
            try options.placement.checkRules(paths: paths)
            let stage = try DecodeStage(paths: paths, options: options)
            let progress = ProgressReporter(quiet: false)
            let image = try stage.run(x, progress: { progress.decodeWindows($0, $1, image: 0, images: 1) })
            var md = file.metadata.filter { $0.key.hasPrefix("newbie:") }
            md.merge(GenerationMetadata.options(options, ran: [.vae], over: file.metadata)) { $1 }
            md[MetadataKey.model(.vae)] = stage.path
            md[MetadataKey.pixelRounding] = options.pixelRounding.rawValue
            try PNG.write(image, to: output, text: GenerationMetadata.pngText(md, software: "newbie decode"))
            reportWrote(output, " (\(image.width)x\(image.height))")
        } catch let e as PipelineError { throw e }
    }
}
