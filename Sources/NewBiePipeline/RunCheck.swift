import Foundation
import NewBieDiffusion
import NewBieTensor
import NewBieWeights

/// Checks a run's size against the models and the machine before anything is loaded: the image
/// must fit the DiT's position (RoPE) tables, and the denoise-and-decode stage must fit in memory.
public enum RunCheck {
    /// The largest width and height (pixels) the DiT's position tables cover.
    public static func maxSize(_ c: NextDiTConfig) -> (width: Int, height: Int) {
        let lens = c.axesLens
        let rows = lens.count > 1 ? lens[1] : 0, cols = lens.count > 2 ? lens[2] : 0
        return (cols * c.patchSize * 8, rows * c.patchSize * 8)
    }

    /// What a run of `width` x `height` needs, in bytes, for the parts that live in host memory.
    public struct MemoryEstimate: Sendable, CustomStringConvertible {
        public var ditWeights = 0, ditActivations = 0, vaeWeights = 0, vaeActivations = 0
        public var total: Int { ditWeights + vaeWeights + max(ditActivations, vaeActivations) }
        public var description: String {
            "about \(formatBytes(total)) (DiT weights \(formatBytes(ditWeights)), DiT activations \(formatBytes(ditActivations)), VAE weights \(formatBytes(vaeWeights)), VAE decoding \(formatBytes(vaeActivations)))"
        }
    }

    /// An estimate of the denoise-and-decode stage (the DiT and the VAE decoder are held together)
    /// for the models placed on the CPU (GPU memory is reported by the device when it runs out).
    public static func estimate(width: Int, height: Int, dit c: NextDiTConfig, vae v: VAEConfig?, options: StageOptions,
                                captionTokens: Int) -> MemoryEstimate {
        var e = MemoryEstimate()
        if options.placement.device(.dit) == .cpu {
            let s = options.placement.precision(.dit).base.byteSize
            let params = ((try? c.expectedTensors()) ?? []).reduce(0) { $0 + $1.shape.reduce(1, *) }
            e.ditWeights = params * s
            // guided batch of 2; per block: residual, norms, q/k/v, roped q/k, attention output,
            // projections, the FFN's two inputs and their product (attention itself is tiled)
            let tokens = (height / 8 / c.patchSize) * (width / 8 / c.patchSize) + captionTokens
            let qkv = (c.nHeads + 2 * c.nKVHeads) * c.headDim
            let perToken = 8 * c.dim + qkv + (c.nHeads + c.nKVHeads) * c.headDim + 3 * c.ffnHidden
            // and the sampler's states and velocities in Float32
            e.ditActivations = 2 * tokens * perToken * max(s, 4) + 12 * c.inChannels * (height / 8) * (width / 8) * 4
        }
        if let v, options.placement.device(.vae) == .cpu {
            let s = options.placement.precision(.vae).base.byteSize
            let params = ((try? VAENaming.expectedTensors(v, parts: .decoder)) ?? []).reduce(0) { $0 + $1.shape.reduce(1, *) }
            e.vaeWeights = params * s
            // the widest full-resolution activations, a few at a time (one tile's worth when tiled)
            let latentH = height / 8, latentW = width / 8
            let t = options.vaeTiling
            let (h, w) = t.tiles(latentHeight: latentH, latentWidth: latentW)
                ? (min(height, (t.tileLatent + t.overlapLatent) * 8), min(width, (t.tileLatent + t.overlapLatent) * 8)) : (height, width)
            let widest = v.blockOutChannels.count > 1 ? v.blockOutChannels[1] : (v.blockOutChannels.first ?? 128)
            e.vaeActivations = 4 * widest * h * w * max(s, 4) + 2 * 3 * height * width * 4
        }
        return e
    }

    /// The machine's physical memory in bytes (nil when unknown).
    public static func physicalMemory() -> Int? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0 else { return nil }
        return pages * size
    }

    /// Checks every request against the DiT's size limit and the machine's memory; throws naming
    /// the options and the numbers. `memoryLimit` nil: the physical memory.
    public static func check(_ requests: [GenerationRequest], paths: ModelPaths, options: StageOptions,
                             memoryLimit: Int? = RunCheck.physicalMemory(), checkMemory: Bool = true) throws {
        guard let ditPath = paths.path(.dit) else { return }
        let (source, json) = try NextDiT.openCheckpoint(path: ditPath, configPath: nil)
        let (_, config) = try NextDiT.checkedWeights(source: source, json: json)
        let vae = paths.path(.vae).flatMap { try? AutoencoderKL.readConfig(path: $0) }
        var seen = Set<[Int]>()
        for r in requests {
            let s = r.settings
            guard seen.insert([s.width, s.height]).inserted else { continue }
            try checkSize(width: s.width, height: s.height, dit: config)
            guard checkMemory, let limit = memoryLimit else { continue }
            let e = estimate(width: s.width, height: s.height, dit: config, vae: vae, options: options, captionTokens: options.gemmaMaxLength)
            if e.total > limit {
                var side = 64
                while side + 64 <= maxSize(config).width
                        && estimate(width: side + 64, height: side + 64, dit: config, vae: vae, options: options,
                                    captionTokens: options.gemmaMaxLength).total <= limit { side += 64 }
                throw PipelineError("--width \(s.width) --height \(s.height): the run needs \(e), more than this machine's \(formatBytes(limit)) of memory; the largest square image that fits is about \(side)x\(side) (--skip-memory-check runs it anyway)")
            }
        }
    }

    /// The image must fit the DiT's position tables.
    public static func checkSize(width: Int, height: Int, dit config: NextDiTConfig) throws {
        let (mw, mh) = maxSize(config)
        if width > mw || height > mh {
            throw PipelineError("--width \(width) --height \(height): the DiT's position tables (axes_lens \(config.axesLens), patch \(config.patchSize)) cover at most \(mw)x\(mh) pixels; give --width and --height of at most \(mw) and \(mh)")
        }
    }
}
