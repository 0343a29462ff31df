import Foundation
import NewBieDiffusion
import NewBieTensor
import NewBieText

/// The system prompts Gemma can be given. Gemma sees `system + prompt`; Jina always
/// sees the raw prompt; an empty prompt (the unconditional branch) and the negative prompt get no
/// system prompt, as in the official demo.
public enum SystemPrompt {
    /// Training prefix for XML-captioned data (`finetune.py`), trailing space included.
    public static let xml = "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> "
    /// Training prefix for the other (tag / natural-language) data.
    public static let text = "You are an assistant designed to generate high-quality anime images with the highest degree of image-text alignment based on textual prompts. <Prompt Start> "

    /// The system prompt of ComfyUI's official NewBie template, for its JSON prompts (see
    /// `TemplatePrompt`): its own wording, ending in a line break.
    public static let comfyui = TemplatePrompt.systemPrompt

    /// Preset names: `auto` (for a ComfyUI template prompt, the template's system prompt unless the
    /// prompt carries one itself; else xml when the prompt starts with `<` after white space, else
    /// text), `xml`, `text`, `comfyui`, `none`; anything else is taken as the literal system prompt.
    public static let presets = ["auto", "xml", "text", "comfyui", "none"]

    /// The system prompt a preset (or literal) gives for `prompt`.
    public static func resolve(_ preset: String, prompt: String) -> String {
        switch preset {
        case "auto":
            if TemplatePrompt.looksLikeTemplate(prompt) {
                return TemplatePrompt.split(prompt).system.isEmpty ? comfyui : ""
            }
            return prompt.drop(while: { $0.isWhitespace }).hasPrefix("<") ? xml : text
        case "comfyui": return comfyui
        case "xml": return xml
        case "text": return text
        case "none", "": return ""
        default: return preset
        }
    }
}

/// Everything the denoising stage needs besides the conditioning: size, grid, guidance, noise.
public struct SamplingSettings: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// Euler / midpoint / RK4: grid points of the official ODE grid (so steps - 1 intervals);
    /// DPM-Solver++ 2M: model evaluations (the official `--solver dpm` meaning).
    public var steps: Int
    public var sampler: SamplerKind
    public var shift: Float
    public var cfg: CFGOptions
    public var seed: UInt64
    public var rng: NoiseRNG
    /// img2img (a design choice): start at t0 = 1 - strength from the init latent mixed
    /// with the noise, and integrate the rest of the grid. 1 = text-to-image.
    public var strength: Float = 1
    /// ComfyUI's scheduler: with one, `sampler` runs as ComfyUI's k-diffusion sampler over that
    /// schedule of `steps` steps (`ComfyKSampler`); nil: the official grids. ComfyUI-only samplers
    /// (euler_ancestral, dpmpp_2m, res_multistep) take `simple` when none is given.
    public var scheduler: ComfyScheduler? = nil
    /// The opt-in step cache (`--step-cache`): nil computes every DiT block at every call.
    public var stepCache: StepCacheOptions? = nil

    /// The scheduler the run uses (nil: the official grids).
    public var effectiveScheduler: ComfyScheduler? { scheduler ?? (sampler.isComfyOnly ? .simple : nil) }

    public init(width: Int, height: Int, steps: Int, sampler: SamplerKind, shift: Float, cfg: CFGOptions,
                seed: UInt64, rng: NoiseRNG) {
        self.width = width; self.height = height; self.steps = steps; self.sampler = sampler
        self.shift = shift; self.cfg = cfg; self.seed = seed; self.rng = rng
    }

    /// The defaults: the official Gradio `demo.py` setup: midpoint on the 18-point
    /// shift-6 grid (17 intervals, 34 guided model calls), CFG 5.0 truncated at t = 0.25, renorm
    /// off, 1024 x 1024.
    public static let officialDemo = SamplingSettings(width: 1024, height: 1024, steps: 18, sampler: .midpoint, shift: 6,
                                                      cfg: CFGOptions(scale: 5.0, truncation: 0.25, renorm: 0),
                                                      seed: 0, rng: .torch)

    /// Checks every value, naming the option at fault.
    public func validate() throws {
        for (name, v) in [("width", width), ("height", height)] where v <= 0 || v % 16 != 0 {
            let lower = max(16, v / 16 * 16), upper = (max(v, 0) / 16 + 1) * 16
            throw PipelineError("--\(name) \(v): width and height must be positive multiples of 16 (the latent is 1/8 of the image and the DiT cuts it into 2 x 2 patches); try \(lower == upper ? "\(lower)" : "\(lower) or \(upper)")")
        }
        if effectiveScheduler != nil {
            guard sampler.comfy != nil else {
                throw PipelineError("--sampler \(sampler.rawValue) with --scheduler: ComfyUI's schedules run euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, dpmpp_sde or res_multistep")
            }
            guard strength == 1 else { throw PipelineError("--strength \(strength): img2img works with the official grids (no --scheduler), not ComfyUI's samplers yet") }
        }
        let minSteps = effectiveScheduler != nil ? 1 : 2
        guard steps >= minSteps else {
            throw PipelineError("--steps \(steps): need at least \(minSteps) (\(sampler == .dpm ? "DPM-Solver++ 2M model evaluations" : "grid points, i.e. at least one interval"))")
        }
        guard steps <= 10_000 else { throw PipelineError("--steps \(steps): at most 10000") }
        guard shift.isFinite, shift >= 0, sampler != .dpm || shift > 0 else {
            throw PipelineError("--shift \(shift): must be a finite number >= 0 (> 0 for dpm)")
        }
        guard cfg.scale.isFinite else { throw PipelineError("--cfg \(cfg.scale): must be a finite number") }
        guard cfg.truncation.isFinite, cfg.truncation >= 0 else {
            throw PipelineError("--cfg-trunc \(cfg.truncation): must be a finite number >= 0 (guidance runs while t < cfg-trunc; 100 = always)")
        }
        guard cfg.renorm.isFinite, cfg.renorm >= 0 else { throw PipelineError("--renorm \(cfg.renorm): must be >= 0 (0 = off)") }
        guard strength >= 0, strength <= 1 else { throw PipelineError("--strength \(strength): must be in [0, 1] (1 = all noise, text-to-image)") }
        guard strength == 1 || sampler != .dpm else {
            throw PipelineError("--strength \(strength) with --sampler dpm: img2img works with euler, midpoint and rk4 (on the shifted grid)")
        }
    }

    /// The initial noise: `torch.manual_seed(seed); torch.randn([1, channels, H/8, W/8])` on the CPU
    /// generator, bit for bit (docs/SAMPLING.md).
    public func noise(channels: Int) -> Tensor {
        var g = TorchGenerator(seed: seed, mode: rng)
        return g.randn([1, channels, height / 8, width / 8])
    }

    /// The sampler over the official grid.
    public func makeSampler() throws -> FlowSampler {
        if let sched = effectiveScheduler, let k = sampler.comfy {
            do {
                let sigmas = try ComfyFlowModelSampling(shift: shift).schedule(sched, steps: steps)
                return ComfyKSampler(sampler: k, sigmas: sigmas, seed: seed, rng: rng, shift: shift)
            } catch let e as SamplingError {
                throw PipelineError("sampler \(sampler.rawValue), scheduler \(sched.rawValue), \(steps) steps, shift \(shift): \(e.message)")
            }
        }
        do {
            if strength < 1 {
                let grid = try FlowSchedule.img2imgGrid(points: steps, shift: shift, strength: strength)
                switch sampler {
                case .euler: return EulerSampler(grid: grid)
                case .midpoint: return MidpointSampler(grid: grid)
                case .rk4: return RK4Sampler(grid: grid)
                case .dpm: throw PipelineError("img2img does not work with dpm")
                case .eulerAncestral, .dpmpp2m, .dpmpp2mSDE, .dpmppSDE, .resMultistep: throw PipelineError("img2img does not work with ComfyUI's samplers yet")
                }
            }
            return try sampler.make(steps: steps, shift: shift)
        } catch let e as SamplingError {
            throw PipelineError("sampler \(sampler.rawValue), \(steps) steps, shift \(shift): \(e.message)")
        }
    }
}

extension SamplerKind {
    /// By name, with an error listing the choices.
    public static func parse(_ name: String) throws -> SamplerKind {
        guard let k = SamplerKind(name: name) else {
            throw PipelineError("--sampler \(name): unknown sampler; use euler, midpoint, rk4 or dpm (DPM-Solver++ 2M) on the official grids, or ComfyUI's euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, dpmpp_sde, res_multistep (with --scheduler)")
        }
        return k
    }
}

extension NoiseRNG {
    public static func parse(_ name: String) throws -> NoiseRNG {
        guard let r = NoiseRNG(rawValue: name) else {
            throw PipelineError("--rng \(name): use torch (PyTorch's CPU torch.randn, AVX2 path) or torch-scalar (its non-vectorised path)")
        }
        return r
    }
}

extension ComfyScheduler {
    /// By name, with an error listing the choices.
    public static func parse(_ name: String) throws -> ComfyScheduler {
        guard let s = ComfyScheduler(rawValue: name.lowercased()) else {
            throw PipelineError("--scheduler \(name): unknown scheduler; use simple, normal, karras or beta (ComfyUI's)")
        }
        return s
    }
}

/// `--preset`: every default of one published setup; explicit options win over it.
public enum GenerationPreset: String, CaseIterable, Sendable {
    /// The official Gradio demo.py (the engine's defaults).
    case demo
    /// The official scripts/sample.sh: CFG 4 on every step with renorm 1 (the rest as the demo).
    case sample
    /// ComfyUI's official NewBie template (image_newbieimage_exp0_1-t2i.json): 20 steps of
    /// res_multistep over the simple schedule, shift 6 (ModelSamplingAuraFlow), CFG 5.5 on every
    /// step without renorm, 1024 x 1536, the template's system prompt in front of the prompt for
    /// Gemma and Jina alike (ComfyUI's NewBie text encoder hands both the same text), and its
    /// negative prompt.
    case comfyui

    public static func parse(_ name: String) throws -> GenerationPreset {
        guard let p = GenerationPreset(rawValue: name.lowercased()) else {
            throw PipelineError("--preset \(name): use demo, sample or comfyui")
        }
        return p
    }

    /// The sampling settings of the preset (seed and rng as given).
    public func settings(seed: UInt64, rng: NoiseRNG = .torch) -> SamplingSettings {
        var s = SamplingSettings.officialDemo
        s.seed = seed; s.rng = rng
        switch self {
        case .demo: break
        case .sample: s.cfg = CFGOptions(scale: 4, truncation: 100, renorm: 1)
        case .comfyui:
            s.width = 1024; s.height = 1536; s.steps = 20; s.sampler = .resMultistep; s.scheduler = .simple; s.shift = 6
            s.cfg = CFGOptions(scale: 5.5, truncation: 100, renorm: 0)
        }
        return s
    }

    /// The `--system-prompt` default.
    public var systemPrompt: String { self == .comfyui ? "comfyui" : "auto" }
    /// The `--negative-prompt` default.
    public var negativePrompt: String { self == .comfyui ? TemplatePrompt.negativePrompt : "" }
    /// Whether Jina sees the system prompt too (ComfyUI's NewBie text encoder: yes).
    public var jinaSeesSystemPrompt: Bool { self == .comfyui }
}
