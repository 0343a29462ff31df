import ArgumentParser
import Foundation
import NewBieCUDA
import NewBieDiffusion
import NewBieImage
import NewBieHarness
import NewBiePipeline
import NewBieQueue
import NewBieTensor
import NewBieText
import NewBieWeights

// `newbie generate` and the stage commands `encode`, `denoise`, `decode` share these option
// groups and run the same library stages (Sources/NewBiePipeline).

/// Help texts of the model options (shared by the commands that take a subset of the parts).
enum ModelHelp {
    static let root = ArgumentHelp("Model folder in the official Hugging Face layout (NewBie-AI/NewBie-image-Exp0.1): transformer/, text_encoder/, clip_model/, vae/.")
    static let dit = ArgumentHelp("The DiT: transformer/ folder or one file (e.g. ComfyUI NewBie-Image-Exp0.1-bf16.safetensors). Overrides --model.")
    static let gemma = ArgumentHelp("Gemma 3 text encoder: text_encoder/ folder, a .safetensors (e.g. gemma_3_4b_it_bf16.safetensors) or a .gguf. Overrides --model.")
    static let gemmaTokenizer = ArgumentHelp("Gemma tokenizer.json or .gguf (default: tokenizer.json beside the Gemma checkpoint or in ../tokenizer/).")
    static let jina = ArgumentHelp("Jina CLIP v2: clip_model/ folder or a .safetensors (e.g. jina_clip_v2_bf16.safetensors). Overrides --model.")
    static let jinaTokenizer = ArgumentHelp("XLM-R tokenizer.json (default: beside the Jina checkpoint).")
    static let vae = ArgumentHelp("FLUX VAE: vae/ folder, diffusion_pytorch_model.safetensors or ae.safetensors. Overrides --model.")
}

/// Where the model parts are: `--model DIR` (official Hugging Face layout) and/or one per part.
struct ModelOptions: ParsableArguments {
    @Option(name: .customLong("model"), help: ModelHelp.root) var root: String?
    @Option(name: .customLong("dit"), help: ModelHelp.dit) var dit: String?
    @Option(name: .customLong("gemma"), help: ModelHelp.gemma) var gemma: String?
    @Option(name: .customLong("gemma-tokenizer"), help: ModelHelp.gemmaTokenizer) var gemmaTokenizer: String?
    @Option(name: .customLong("jina"), help: ModelHelp.jina) var jina: String?
    @Option(name: .customLong("jina-tokenizer"), help: ModelHelp.jinaTokenizer) var jinaTokenizer: String?
    @Option(name: .customLong("vae"), help: ModelHelp.vae) var vae: String?

    func paths() throws -> ModelPaths {
        try ModelPaths.resolve(root: root, dit: dit, gemma: gemma, gemmaTokenizer: gemmaTokenizer, jina: jina,
                               jinaTokenizer: jinaTokenizer, vae: vae)
    }
}

/// The text encoders only (`newbie encode`).
struct TextModelOptions: ParsableArguments {
    @Option(name: .customLong("model"), help: ModelHelp.root) var root: String?
    @Option(name: .customLong("gemma"), help: ModelHelp.gemma) var gemma: String?
    @Option(name: .customLong("gemma-tokenizer"), help: ModelHelp.gemmaTokenizer) var gemmaTokenizer: String?
    @Option(name: .customLong("jina"), help: ModelHelp.jina) var jina: String?
    @Option(name: .customLong("jina-tokenizer"), help: ModelHelp.jinaTokenizer) var jinaTokenizer: String?

    func paths() throws -> ModelPaths {
        try ModelPaths.resolve(root: root, gemma: gemma, gemmaTokenizer: gemmaTokenizer, jina: jina, jinaTokenizer: jinaTokenizer)
    }
}

/// The DiT only (`newbie denoise`).
struct DiTModelOptions: ParsableArguments {
    @Option(name: .customLong("model"), help: ModelHelp.root) var root: String?
    @Option(name: .customLong("dit"), help: ModelHelp.dit) var dit: String?

    func paths() throws -> ModelPaths { try ModelPaths.resolve(root: root, dit: dit) }
}

/// The VAE only (`newbie decode`).
struct VAEModelOptions: ParsableArguments {
    @Option(name: .customLong("model"), help: ModelHelp.root) var root: String?
    @Option(name: .customLong("vae"), help: ModelHelp.vae) var vae: String?

    func paths() throws -> ModelPaths { try ModelPaths.resolve(root: root, vae: vae) }
}

/// Where the models run and in which precision, and the CUDA settings: one parser for every
/// command that runs a model. The environment only seeds defaults (NEWBIE_DEVICE,
/// NEWBIE_PRECISION, NEWBIE_CUDA_GRAPHS=1, NEWBIE_TF32=1, NEWBIE_FLASH, NEWBIE_CUDA_PROFILE=1).
struct DeviceOptions: ParsableArguments {
    static let env = ProcessInfo.processInfo.environment

    @Option(help: "Where the models run: cpu, cuda or cuda:N, optionally per model (\"cuda,vae=cpu\"; models gemma, jina, dit, vae).")
    var device = DeviceOptions.env["NEWBIE_DEVICE"] ?? "cpu"

    @Option(help: ArgumentHelp("Precision per model and per module: a default dtype (fp32, bf16, fp16, or auto = bf16 on CUDA and fp32 on the CPU), then overrides MODEL=DTYPE or MODEL.MODULE_PATH=DTYPE, where * matches within a path component. Default: auto. Examples: bf16; \"fp16,vae=fp32\"; \"bf16,vae.decoder.conv_out=fp32,dit.final_layer=fp32\"; \"fp16,dit.layers.*.attention=fp32\".", valueName: "spec"))
    var precision: String? = DeviceOptions.env["NEWBIE_PRECISION"]

    @Option(help: ArgumentHelp("Quantized linear layers, per model or per module path: MODEL=TYPE or MODEL.MODULE_PATH=TYPE (models gemma, jina, dit, vae; types int8 = one scale per output channel, int8-g128 = per group of 128, fp8, GGUF blocks q8_0, q6_k, q5_k, q5_0, q4_k, q4_0 made at load, none), * matching within a path component. A whole-model rule keeps embedders, adaLN modulation, the final layer and norms in 16 bits (docs/QUANTIZATION.md). Examples: \"dit=int8,gemma=int8,jina=int8\"; \"dit.layers.*=int8\".", valueName: "spec"))
    var quantize: String = DeviceOptions.env["NEWBIE_QUANTIZE"] ?? ""

    @Flag(name: .customLong("offload"), help: "With CUDA: keep the DiT's and Gemma's block weights in pinned host memory and stream each block to the GPU just ahead of use (a ring of 3 blocks on the GPU), for GPUs smaller than the models; same pixels, slower steps (docs/MEMORY.md). Refused when those models run on the CPU.")
    var offload = DeviceOptions.env["NEWBIE_OFFLOAD"] == "1"

    @Option(help: "Shorthand for the default of --precision (fp32, bf16, fp16, auto); --precision items come after it.")
    var dtype: String?

    @Flag(name: .customLong("cuda-graphs"), inversion: .prefixedNo, help: "With CUDA: replay each guided DiT step as a CUDA graph once shapes are fixed (same pixels; holds the step's intermediate buffers, about 1 GiB at 1024x1024).")
    var cudaGraphs = DeviceOptions.env["NEWBIE_CUDA_GRAPHS"] == "1"

    @Flag(name: .customLong("tf32"), inversion: .prefixedNo, help: "With CUDA: fp32 matrix products on the tensor cores in TF32 (faster, about 1e-3 relative error).")
    var tf32 = DeviceOptions.env["NEWBIE_TF32"] == "1"

    @Option(name: .customLong("flash"), help: "With CUDA: flash-attention kernel: auto (wgmma on Hopper, mma.sync elsewhere), or mma.sync forced: mma (= w4) or w8 (warps of 16 query rows).")
    var flash = DeviceOptions.env["NEWBIE_FLASH"] ?? "auto"

    @Flag(name: .customLong("cuda-profile"), help: "With CUDA: time every kernel family and print the profile at the end.")
    var cudaProfile = DeviceOptions.env["NEWBIE_CUDA_PROFILE"] == "1"

    /// The precision spec with --dtype in front (auto when neither is given).
    var precisionSpec: String { [dtype ?? (precision == nil ? "auto" : nil), precision].compactMap { $0 }.joined(separator: ",") }

    func cudaOptions() throws -> CUDAOptions {
        guard CUDAOptions.flashVariants.contains(flash) else {
            throw PipelineError("--flash \(flash) (or NEWBIE_FLASH): use \(CUDAOptions.flashVariants.joined(separator: ", "))")
        }
        return CUDAOptions(graphs: cudaGraphs, tf32: tf32, flashVariant: flash, profile: cudaProfile)
    }

    func placement() throws -> PlacementPolicy {
        try PlacementPolicy.parse(precision: precisionSpec, device: device, quantize: quantize, offload: offload)
    }

    /// The stage options; every device the policy names is opened now, so a missing driver or BLAS
    /// library fails before any file is read.
    func stageOptions() throws -> StageOptions {
        let o = StageOptions(placement: try placement(), cuda: try cudaOptions())
        for d in o.placement.usedDevices { try DeviceSupport.open(d, cuda: o.cuda) }
        return o
    }
}

/// LoRA / LoKr adapters for the DiT (docs/LORA.md).
struct LoRAOptions: ParsableArguments {
    @Option(name: .customLong("lora"), help: ArgumentHelp("A LoRA or LoKr adapter for the DiT, FILE or FILE:STRENGTH (default strength 1), repeatable. Read: PEFT (the official trainer's adapter_model.safetensors, or its folder, with adapter_config.json beside it), kohya/ComfyUI (lora_unet_*, diffusion_model.*: lora_down/lora_up/alpha), LyCORIS LoKr (lycoris_*: lokr_w1/lokr_w2 or their _a/_b factors, alpha), and diffusers names (transformer.layers.N.attn.to_q, ...). Scale = strength x alpha / rank.", valueName: "file[:strength]"))
    var lora: [String] = []

    @Option(name: .customLong("lora-mode"), help: "merged (added into the weights at load, fp32 then cast; no cost per step) or unmerged (low-rank side products in each adapted linear layer; the base weights stay as they are).")
    var loraMode = "merged"

    @Flag(name: .customLong("lora-lenient"), help: "Adapter keys that match no module of the DiT are a warning (and skipped) instead of an error.")
    var loraLenient = false

    func options() throws -> AdapterOptions {
        guard let mode = AdapterMode(rawValue: loraMode) else {
            throw PipelineError("--lora-mode \(loraMode): use merged or unmerged")
        }
        do {
            return AdapterOptions(specs: try lora.map(AdapterSpec.parse), mode: mode, lenient: loraLenient)
        } catch let e as WeightsError { throw PipelineError(e.message) }
    }
}

/// 8-bit conversion of decoded images.
struct PixelOptions: ParsableArguments {
    @Option(name: .customLong("pixel-rounding"), help: "How decoded values become 8-bit pixels: truncate (default; the official demo and ComfyUI's SaveImage) or round (half to even, as diffusers). Recorded in the PNG.")
    var pixelRounding = "truncate"

    func rounding() throws -> PixelRounding {
        guard let r = PixelRounding.parse(pixelRounding) else {
            throw PipelineError("--pixel-rounding \(pixelRounding): use truncate or round")
        }
        return r
    }
}

/// `--preset demo|sample|comfyui`: the defaults of one published setup (explicit options win).
struct PresetOptions: ParsableArguments {
    @Option(help: "Every default of a published setup: demo (the official demo.py: the defaults below), sample (the official scripts/sample.sh: --cfg 4 --cfg-trunc 100 --renorm 1), comfyui (ComfyUI's official NewBie template: --steps 20 --sampler res_multistep --scheduler simple --shift 6 --cfg 5.5 --cfg-trunc 100 --renorm 0 --width 1024 --height 1536, its system prompt for Gemma and Jina, its negative prompt). Explicit options win; the PNG records the preset.")
    var preset: String?

    func resolved() throws -> GenerationPreset? { try preset.map(GenerationPreset.parse) }
    var effective: GenerationPreset { (try? resolved()) ?? nil ?? .demo }
}

/// Sampling: size, grid, guidance, noise. Defaults: the official demo.py setup, or the --preset's.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Image width in pixels, a multiple of 16 (default 1024).")
    var width: Int?
    @Option(help: "Image height in pixels, a multiple of 16 (default 1024).")
    var height: Int?
    @Option(help: "euler, midpoint and rk4: points of the official shifted grid (steps - 1 intervals); dpm: model evaluations; with --scheduler: ComfyUI's steps (default 18).")
    var steps: Int?
    @Option(help: "Official grids: euler, midpoint (default), rk4 or dpm (DPM-Solver++ 2M). ComfyUI's (over --scheduler): euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, dpmpp_sde, res_multistep.")
    var sampler: String?
    @Option(help: "ComfyUI's scheduler: simple, normal, karras or beta; the sampler then runs as ComfyUI's (default: none, the official grids; ComfyUI-only samplers take simple).")
    var scheduler: String?
    @Option(help: "Time shift of the grid, t = u / (u + s - s u) (ComfyUI's ModelSamplingAuraFlow shift is the same) (default 6).")
    var shift: Float?
    @Option(help: "Classifier-free guidance scale (default 5).")
    var cfg: Float?
    @Option(name: .customLong("cfg-trunc"), help: "Guidance only while t < this (t: 0 = noise, 1 = clean); 100 = always (official sample.sh) (default 0.25).")
    var cfgTrunc: Float?
    @Option(help: "Guidance renormalisation: cap ||v|| at this times ||v_cond|| (official sample.sh: 1); 0 = off (default).")
    var renorm: Float?
    @Option(help: "Seed of the initial noise (an integer >= 0), or random (the seed picked is recorded in the PNG).")
    var seed = "0"
    @Option(help: "Noise generator: torch (PyTorch CPU torch.randn bit for bit, AVX2 path) or torch-scalar.")
    var rng = "torch"
    @Option(name: .customLong("step-cache"), help: "Opt-in speed over exactness: teacache (skip the DiT's joint blocks while the first block's modulated input changed little since the last full step) or fbcache (First-Block-Cache: run the first block, skip the rest while its residual changed little); off (default). Recorded in the PNG.")
    var stepCache: String?
    @Option(name: .customLong("cache-threshold"), help: "Step cache threshold on the relative L1 change (teacache: accumulated; fbcache: per call); 0 never skips (default: teacache 0.3, fbcache 0.1).")
    var cacheThreshold: Float?
    @Option(help: "img2img strength in [0, 1]: start at t = 1 - strength from the init image mixed with the noise (1 = text-to-image). The official code has no img2img; this follows the usual flow-matching recipe (the init latent mixed with the noise at the start time).")
    var strength: Float = 1

    func settings(seed s: UInt64, preset: GenerationPreset = .demo) throws -> SamplingSettings {
        var st = preset.settings(seed: s, rng: try NoiseRNG.parse(rng))
        if let v = width { st.width = v }
        if let v = height { st.height = v }
        if let v = steps { st.steps = v }
        if let v = sampler {
            st.sampler = try SamplerKind.parse(v)
            // a sampler given without a scheduler runs on the official grids unless it is ComfyUI's only
            if scheduler == nil && !st.sampler.isComfyOnly && st.sampler != .euler { st.scheduler = nil }
        }
        if let v = scheduler { st.scheduler = v.lowercased() == "none" ? nil : try ComfyScheduler.parse(v) }
        if let v = shift { st.shift = v }
        if let v = cfg { st.cfg.scale = v }
        if let v = cfgTrunc { st.cfg.truncation = v }
        if let v = renorm { st.cfg.renorm = v }
        st.strength = strength
        st.stepCache = try StepCacheOptions.parse(mode: stepCache, threshold: cacheThreshold)
        try st.validate()
        return st
    }

    func firstSeed() throws -> UInt64 {
        if seed == "random" { return UInt64(UInt32.random(in: 0...UInt32.max)) }
        guard let s = UInt64(seed) else { throw PipelineError("--seed \(seed): use an integer >= 0 or random") }
        return s
    }
}

/// Prompt, negative prompt, system prompt.
struct PromptOptions: ParsableArguments {
    @Argument(help: "The prompt (plain tags, natural language or NewBie XML).")
    var prompt: String?

    @Option(name: .customLong("prompt-file"), help: "Prompts from a file: one ComfyUI template prompt (a JSON object around the XML, see newbie prompt build --template), JSON lines ({\"prompt\": ..., \"negative_prompt\": ..., \"seed\": ...}) when every line starts with {, one XML prompt when the file starts with <, else one prompt per non-empty line.")
    var promptFile: String?

    @Option(name: .customLong("negative-prompt"), help: "Negative prompt for the unconditional branch (default: empty, as in the official demo; --preset comfyui: the template's); it gets no system prompt.")
    var negativePromptOption: String?

    @Option(name: .customLong("system-prompt"), help: "Gemma's system prompt: auto (the XML training prefix for XML prompts, the ComfyUI template's for its JSON prompts, the text one otherwise), xml, text, comfyui, none, or a literal string (default auto; --preset comfyui: comfyui).")
    var systemPromptOption: String?

    @OptionGroup var presetOptions: PresetOptions

    var negativePrompt: String { negativePromptOption ?? presetOptions.effective.negativePrompt }
    var systemPrompt: String { systemPromptOption ?? presetOptions.effective.systemPrompt }

    struct Entry { var prompt: String; var negative: String; var seed: UInt64? }

    func entries() throws -> [Entry] {
        _ = try presetOptions.resolved()
        var out: [Entry] = []
        if let p = prompt { out.append(Entry(prompt: p, negative: negativePrompt, seed: nil)) }
        if let f = promptFile {
            let text = try readTextFile(f, option: "--prompt-file")
            let list = try PromptList.parse(text, source: f, negativePrompt: negativePrompt)
            guard !list.isEmpty else { throw PipelineError("--prompt-file \(f): holds no prompt (the file is empty or only blank lines)") }
            out += list.map { Entry(prompt: $0.prompt, negative: $0.negativePrompt, seed: $0.seed) }
        }
        guard !out.isEmpty else { throw PipelineError("no prompt: give the prompt text or --prompt-file PATH") }
        return out
    }
}

/// Progress and statistics on stderr.
struct ReportOptions: ParsableArguments {
    @Flag(help: "Print nothing but errors.")
    var quiet = false

    @Flag(help: "Report the time of each stage and the peak memory.")
    var stats = false

    @Flag(help: "Print shape, min/max/mean and NaN/Inf counts of every stage output and every DiT call (input state and guided velocity) with its step.")
    var trace = false

    @Flag(name: .customLong("detect-overflow"), help: "Stop at the first non-finite tensor (NaN/Inf), naming the stage/module path, step and compute dtype.")
    var detectOverflow = false

    func tracer(_ options: StageOptions) -> PipelineTracer? {
        trace || detectOverflow ? PipelineTracer(trace: trace, detectOverflow: detectOverflow, computeDType: options.placement.precision(.dit).base) : nil
    }
}

/// A progress bar with steps/s and ETA when stderr is a terminal, one plain line per step
/// otherwise, nothing with --quiet.
final class ProgressReporter {
    let quiet: Bool
    let terminal = isatty(2) != 0
    var start: Double = 0
    /// When the last stage or image ended: the first step of the next image is timed from here.
    var mark: Double = ProgressReporter.now()
    var stageTimes: [(String, Double)] = []
    /// Peak bytes of device tensors during each stage (the largest over repeats), when `device` is a GPU.
    var stagePeaks: [String: Int] = [:]
    /// The device whose memory is followed per stage (set before the run; the CPU: none).
    var device: Device = .cpu
    /// The --steps the user gave when it counts grid points (euler, midpoint, rk4): shown beside
    /// the sampler's step count, which is one less.
    var gridPoints: Int?

    init(quiet: Bool) { self.quiet = quiet }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    func line(_ s: String) { if !quiet { FileHandle.standardError.write(Data((s + "\n").utf8)) } }

    func stage(_ name: String, _ seconds: Double) {
        mark = ProgressReporter.now()
        if let i = stageTimes.firstIndex(where: { $0.0 == name }) { stageTimes[i].1 += seconds } else { stageTimes.append((name, seconds)) }
        if device != .cpu {
            // the peak since the last stage ended, then a fresh count for the next one
            let b = Backends.backend(for: device)
            stagePeaks[name] = max(stagePeaks[name] ?? 0, b.memoryStats.peakBytes)
            b.resetPeakMemory()
        }
    }

    func step(_ s: SamplerStep, image: Int, images: Int) {
        if s.index == 0 { start = mark }
        if s.index + 1 == s.count { mark = ProgressReporter.now() }
        if quiet { return }
        let done = s.index + 1
        let elapsed = max(ProgressReporter.now() - start, 1e-9)
        let rate = Double(done) / elapsed
        let eta = Double(s.count - done) / max(rate, 1e-9)
        let head = images > 1 ? "image \(image + 1)/\(images) " : ""
        // --steps N of euler/midpoint/rk4 is an N-point grid: N - 1 steps (fewer with img2img)
        let points = gridPoints.map { String(format: " (grid point %d/%d)", $0 - (s.count - done), $0) } ?? ""
        let stats = String(format: "%d/%d steps%@, %.2f steps/s, ETA %@, t=%.4f", done, s.count, points, rate, ProgressReporter.duration(eta), s.to)
        if terminal {
            let width = 30, filled = width * done / max(s.count, 1)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r\(head)[\(bar)] \(stats)\u{1B}[K".utf8))
            if done == s.count { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            line("\(head)step \(stats)")
        }
    }

    /// Tiled VAE decoding: a bar of windows on a terminal, a line every tenth otherwise.
    func decodeWindows(_ done: Int, _ total: Int, image: Int, images: Int) {
        if quiet { return }
        let head = images > 1 ? "image \(image + 1)/\(images) " : ""
        if terminal {
            let width = 30, filled = width * done / max(total, 1)
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r\(head)decode [\(bar)] \(done)/\(total) tile windows\u{1B}[K".utf8))
            if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else if done == total || done % max(total / 10, 1) == 0 {
            line("\(head)decode: \(done)/\(total) tile windows")
        }
    }

    static func duration(_ s: Double) -> String {
        if !s.isFinite { return "?" }
        if s < 60 { return String(format: "%.1fs", s) }
        return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60)
    }

    func printStats(device: Device) {
        var lines = ["stage times:"]
        func row(_ name: String, _ t: Double) -> String {
            "  " + name.padding(toLength: 20, withPad: " ", startingAt: 0) + String(format: "%9.3f s", t)
                + (stagePeaks[name].map { ", peak \(device) tensors " + formatBytes($0) } ?? "")
        }
        for (name, t) in stageTimes { lines.append(row(name, t)) }
        lines.append(row("total", stageTimes.reduce(0) { $0 + $1.1 }))
        let devicePeak = max(stagePeaks.values.max() ?? 0, device == .cpu ? 0 : Backends.backend(for: device).memoryStats.peakBytes)
        lines.append("peak memory: process RSS \(formatBytes(PipelineBench.peakRSS())), CPU tensors \(formatBytes(Backends.backend(for: .cpu).memoryStats.peakBytes))"
                     + (device == .cpu ? "" : ", \(device) tensors \(formatBytes(devicePeak))"))
        FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    }

    var events: PipelineEvents {
        PipelineEvents(stageEnded: { [self] in stage($0, $1) }, step: { [self] in step($0, image: $1, images: $2) },
                       wrote: { [self] path, _ in
                           if quiet { return }
                           // the image itself may be on standard output
                           if path == "-" { line("wrote the image to standard output") } else { print("wrote \(path)"); fflush(stdout) }
                       },
                       note: { [self] in note($0) },
                       decodeProgress: { [self] in decodeWindows($0, $1, image: $2, images: $3) },
                       warning: { [self] message, request in line("warning: image \(request + 1): \(message)") })
    }

    /// Adapter notes: warnings always (stderr), the rest unless --quiet.
    func note(_ s: String) {
        if quiet && !s.hasPrefix("warning") { return }
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}

/// Single-quotes a string for a POSIX shell.
func shellQuote(_ s: String) -> String { ShellWords.quote(s) }

/// `newbie generate`: prompt -> PNG.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate images from a prompt: text encoders -> DiT sampling with guidance -> VAE -> PNG.",
        discussion: """
        Defaults reproduce the official Gradio demo.py setup: midpoint sampler on the 18-point grid \
        with shift 6 (34 guided DiT calls), CFG 5.0 truncated at t = 0.25, renorm off, 1024x1024. The system \
        prompt is the official training prefix (xml or text, by the prompt's form); the demo's dropdown offers \
        Lumina-2 style strings instead. The noise is PyTorch's CPU torch.randn for the seed (the demo draws \
        on CUDA, whose generator differs). The official scripts/sample.sh setup is --cfg 4 --cfg-trunc 100 --renorm 1.
        Each PNG carries every parameter (text chunks newbie:*), including newbie:command to run it again.
        """)

    @OptionGroup var promptOptions: PromptOptions
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var models: ModelOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var pixels: PixelOptions
    @OptionGroup var report: ReportOptions

    @Option(help: "Images per prompt (seeds seed, seed+1, ...).")
    var count = 1

    @Option(name: .customLong("init-image"), help: "img2img: a PNG of --width x --height to start from (with --strength below 1).")
    var initImage: String?

    @Option(name: [.short, .long, .customLong("out")], help: "Output PNG path pattern: {seed}, {index} and {prompt} are replaced; with several images and no placeholder, -N is added. - writes the one image to standard output. Existing regular files are replaced (symbolic links are written through); anything else is refused.")
    var output = "newbie-{seed}.png"

    @Option(name: .customLong("save-steps"), help: "Folder for every model evaluation (eval_NNN.safetensors: x, velocity, t) and every step's state (step_NNN.safetensors); with several images, one sub-folder image-N per image.")
    var saveSteps: String?

    @Option(name: .customLong("preview"), help: "Live preview: a PNG of the current latent (1/8 of the image size, through --preview-map, no VAE), rewritten atomically every --preview-every sampler steps and at the last; with several images, the one being sampled.")
    var preview: String?
    @Option(name: .customLong("preview-every"), help: "With --preview: rewrite it every N sampler steps.")
    var previewEvery = 1
    @Option(name: .customLong("preview-map"), help: "With --preview: the latent->RGB map written by `newbie fit-preview` (JSON).")
    var previewMap: String?

    @Flag(name: .customLong("skip-memory-check"), help: "Run even when the memory estimate for the size is larger than this machine's memory.")
    var skipMemoryCheck = false

    @Flag(name: .customLong("allow-invalid-xml"), help: "Generate even when an XML prompt has errors (it is used as written); without it, XML errors stop the run before anything is loaded.")
    var allowInvalidXML = false

    func run() throws {
        do { try generate() } catch let e as PipelineError { throw e }
    }

    func generate() throws {
        guard count >= 1, count <= GenerateCommand.maxCount else { throw PipelineError("--count \(count): must be between 1 and \(GenerateCommand.maxCount)") }
        if initImage != nil && sampling.strength >= 1 {
            throw PipelineError("--init-image needs --strength below 1 (how much of the image is replaced by noise; e.g. 0.6)")
        }
        if initImage == nil && sampling.strength < 1 { throw PipelineError("--strength \(sampling.strength) needs --init-image PATH") }
        let entries = try promptOptions.entries()
        // XML errors stop the run before anything is loaded (unless asked to go on); warnings are shown
        var xmlErrors = 0
        for (i, e) in entries.enumerated() {
            for issue in PromptList.xmlIssues(e.prompt) {
                let fatal = issue.severity == .error && !allowInvalidXML
                if fatal { xmlErrors += 1 }
                if fatal || !report.quiet {
                    let tail = fatal ? "" : " (the prompt is used as written)"
                    FileHandle.standardError.write(Data("prompt \(i + 1): \(issue)\(tail)\n".utf8))
                }
            }
        }
        if xmlErrors > 0 {
            throw PipelineError("\(xmlErrors) error(s) in the XML prompt; fix them (newbie prompt check shows them), or pass --allow-invalid-xml to use the prompt as written")
        }
        let first = try sampling.firstSeed()
        let presetGiven = try promptOptions.presetOptions.resolved()
        let preset = presetGiven ?? .demo
        var requests: [GenerationRequest] = []
        var promptIndex: [Int] = []
        for (pi, e) in entries.enumerated() {
            for k in 0..<count {
                let seed = (e.seed ?? first) &+ UInt64(k)
                requests.append(GenerationRequest(prompt: e.prompt, negativePrompt: e.negative, systemPrompt: promptOptions.systemPrompt,
                                                  settings: try sampling.settings(seed: seed, preset: preset), output: "", initImage: initImage))
                promptIndex.append(pi)
            }
        }
        let outs = Pipeline.outputPaths(pattern: output, seeds: requests.map(\.settings.seed), promptIndices: promptIndex)
        for i in requests.indices { requests[i].output = outs[i] }
        try Pipeline.checkOutputs(requests)
        var options = try deviceOptions.stageOptions()
        options.adapters = try loraOptions.options()
        options.pixelRounding = try pixels.rounding()
        options.jinaSeesSystemPrompt = preset.jinaSeesSystemPrompt
        let paths = try models.paths()
        let progress = ProgressReporter(quiet: report.quiet)
        if report.stats { progress.device = options.device }   // peak device memory per stage in the stats
        progress.gridPoints = requests.first.flatMap { $0.settings.sampler == .dpm || $0.settings.effectiveScheduler != nil ? nil : $0.settings.steps }
        var events = progress.events
        let livePreview = try livePreviewSetup(outputs: outs)
        var previewError: Error? = nil
        if let (file, map) = livePreview {
            let step = events.step
            let every = previewEvery
            events.step = { s, image, images in
                step?(s, image, images)
                guard previewError == nil, (s.index + 1) % every == 0 || s.index + 1 == s.count else { return }
                // PNG.write renames a finished temporary file over the last preview: a viewer
                // never reads a half-written one
                do { try PNG.write(try map.image(latent: s.x), to: file, text: [(key: "newbie:preview-step", value: "\(s.index + 1)/\(s.count)")]) } catch {
                    previewError = error
                }
            }
        }
        var saveError: Error? = nil
        if let d = saveSteps {
            let folders = requests.count == 1 ? [d] : requests.indices.map { PathName.join(d, "image-\($0)") }
            for f in folders {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: f, isDirectory: &isDir) {
                    guard isDir.boolValue else { throw PipelineError("--save-steps \(f): exists and is not a folder") }
                } else {
                    do { try FileManager.default.createDirectory(atPath: f, withIntermediateDirectories: true) } catch {
                        throw PipelineError("--save-steps \(f): cannot create the folder (\(error.localizedDescription))")
                    }
                }
            }
            func save(_ image: Int, _ name: String, _ tensors: [(String, Tensor)], _ md: [String: String]) {
                guard saveError == nil else { return }
                do { try SafeTensorsWriter.write(tensors, metadata: md, toPath: PathName.join(folders[image], name)) } catch { saveError = error }
            }
            let step = events.step
            events.step = { s, image, images in
                step?(s, image, images)
                save(image, String(format: "step_%03d.safetensors", s.index), [("x", s.x)], ["from": "\(s.from)", "to": "\(s.to)"])
            }
            events.evaluation = { ev, image in
                save(image, String(format: "eval_%03d.safetensors", ev.index), [("x", ev.x), ("velocity", ev.velocity)], ["t": "\(ev.t)"])
            }
        }
        _ = try Pipeline.generate(requests, paths: paths, options: options, extraMetadata: { r in
            var md = [MetadataKey.command: reproduceCommand(r, options: options, preset: presetGiven)]
            if let p = presetGiven { md[MetadataKey.preset] = p.rawValue }
            return md
        }, events: events, tracer: report.tracer(options), checkMemory: !skipMemoryCheck)
        if let e = saveError { throw PipelineError("--save-steps \(saveSteps ?? ""): \(e)") }
        if let e = previewError { throw PipelineError("--preview \(preview ?? ""): \(e)") }
        if report.stats { progress.printStats(device: options.device) }
        if deviceOptions.cudaProfile {
            for line in DeviceSupport.profileLines(Array(options.placement.devices.values)) { FileHandle.standardError.write(Data((line + "\n").utf8)) }
        }
    }

    static let maxCount = 10_000

    /// --preview, --preview-every and --preview-map checked before anything loads: the map read,
    /// the file's folder present, the file not one of the outputs.
    func livePreviewSetup(outputs: [String]) throws -> (file: String, map: LatentPreview)? {
        guard let file = preview else {
            if previewMap != nil { throw ValidationError("--preview-map needs --preview FILE") }
            return nil
        }
        guard previewEvery >= 1 else { throw ValidationError("--preview-every \(previewEvery): expected 1 or more") }
        guard file != "-" else { throw ValidationError("--preview -: the preview is rewritten as sampling goes; give a file") }
        guard let mapPath = previewMap else {
            throw ValidationError("--preview needs --preview-map MAP.json (fit one with `newbie fit-preview`, docs/SERVER.md)")
        }
        let map: LatentPreview
        do { map = try LatentPreview.load(mapPath) } catch { throw ValidationError("--preview-map \(mapPath): \(error)") }
        let folder = PathName.parent(file).isEmpty ? "." : PathName.parent(file)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
            throw ValidationError("--preview \(file): the folder \(folder) does not exist")
        }
        let standard = { (p: String) in URL(fileURLWithPath: p).standardizedFileURL.path }
        guard !outputs.map(standard).contains(standard(file)) else {
            throw ValidationError("--preview \(file): is also an output image; give another file")
        }
        return (file, map)
    }

    /// The command line that makes this image again, as written: every setting, the model paths
    /// and the output path (absolute, so it runs from any folder).
    func reproduceCommand(_ r: GenerationRequest, options: StageOptions, preset: GenerationPreset? = nil) -> String {
        let s = r.settings
        let system = SystemPrompt.resolve(r.systemPrompt, prompt: r.prompt)
        func abs(_ p: String) -> String { p.hasPrefix("/") ? p : PathName.join(FileManager.default.currentDirectoryPath, p) }
        var a = ["newbie", "generate", shellQuote(r.prompt)]
        if let p = preset { a += ["--preset", p.rawValue] }
        if !r.negativePrompt.isEmpty { a += ["--negative-prompt", shellQuote(r.negativePrompt)] }
        a += ["--system-prompt", system.isEmpty ? "none" : system == SystemPrompt.xml ? "xml" : system == SystemPrompt.text ? "text" : system == SystemPrompt.comfyui ? "comfyui" : shellQuote(system)]
        a += ["--width", "\(s.width)", "--height", "\(s.height)", "--steps", "\(s.steps)", "--sampler", s.sampler == .dpm ? "dpm" : s.sampler.rawValue,
              "--scheduler", s.effectiveScheduler?.rawValue ?? "none",
              "--shift", "\(s.shift)", "--cfg", "\(s.cfg.scale)", "--cfg-trunc", "\(s.cfg.truncation)", "--renorm", "\(s.cfg.renorm)",
              "--seed", "\(s.seed)", "--rng", s.rng.rawValue, "--precision", shellQuote(options.placement.precisionSpec),
              "--device", shellQuote(options.placement.deviceSpec)]
        if options.cuda.tf32 { a.append("--tf32") }
        if !options.placement.quantizeSpec.isEmpty { a += ["--quantize", shellQuote(options.placement.quantizeSpec)] }
        if options.placement.offload { a.append("--offload") }
        if s.strength < 1, let p = r.initImage { a += ["--init-image", shellQuote(abs(p)), "--strength", "\(s.strength)"] }
        for spec in options.adapters.specs { a += ["--lora", shellQuote("\(abs(spec.path)):\(spec.strength)")] }
        if !options.adapters.specs.isEmpty && options.adapters.mode != .merged { a += ["--lora-mode", options.adapters.mode.rawValue] }
        if options.pixelRounding != .truncate { a += ["--pixel-rounding", options.pixelRounding.rawValue] }
        for (flag, value) in [("--model", models.root), ("--dit", models.dit), ("--gemma", models.gemma), ("--gemma-tokenizer", models.gemmaTokenizer),
                              ("--jina", models.jina), ("--jina-tokenizer", models.jinaTokenizer), ("--vae", models.vae)] {
            if let v = value { a += [flag, shellQuote(abs(v))] }
        }
        if allowInvalidXML { a.append("--allow-invalid-xml") }
        if skipMemoryCheck { a.append("--skip-memory-check") }
        a += ["-o", r.output == OutputFile.standardOutput ? "-" : shellQuote(abs(r.output))]
        return a.joined(separator: " ")
    }
}

/// `newbie make-tiny-model DIR`: a tiny random NewBie in the official layout.
struct MakeTinyModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "make-tiny-model",
        abstract: "Write a tiny NewBie with random weights (official Hugging Face layout) to try the pipeline without downloads.",
        discussion: "The architecture is NewBie's at toy sizes (DiT dim 48, Gemma 3 with 3 layers, Jina with 2, a 4-level VAE); the weights are random, so its images are noise-like pictures that mean nothing. The tokenizers are the small ones committed under Tests/Fixtures.")

    @Argument(help: "Folder to write (created).")
    var dir: String

    @Option(help: "Seed of the random weights.")
    var seed: UInt64 = 0

    @Option(name: .customLong("fixtures"), help: "The repository's Tests/Fixtures folder (default: found from the source location or the working directory).")
    var fixtures: String?

    @Option(name: .customLong("gemma-tokenizer"), help: "A Gemma tokenizer.json to use instead of the committed small one (the model's vocabulary follows it).")
    var gemmaTokenizer: String?

    @Option(name: .customLong("jina-tokenizer"), help: "An XLM-R tokenizer.json to use instead of the committed small one.")
    var jinaTokenizer: String?

    func run() throws {
        var toks: (gemma: String, jina: String)
        if let g = gemmaTokenizer, let j = jinaTokenizer {
            toks = (g, j)
        } else if let f = fixtures {
            toks = (f + "/gemma/small_tokenizer.json", f + "/jina/tokenizer.json")
        } else if let t = TinyModel.defaultTokenizers() {
            toks = t
        } else {
            throw PipelineError("cannot find Tests/Fixtures (the committed tokenizers); run from the repository root or give --fixtures PATH")
        }
        toks = (gemmaTokenizer ?? toks.gemma, jinaTokenizer ?? toks.jina)
        do { try TinyModel.write(to: dir, seed: seed, gemmaTokenizer: toks.gemma, jinaTokenizer: toks.jina) }
        catch let e as PipelineError { throw e }
        print("wrote a tiny random NewBie to \(dir) (transformer/, text_encoder/, clip_model/, vae/): random weights, the images mean nothing")
    }
}
