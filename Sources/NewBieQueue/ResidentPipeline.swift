import Foundation
import NewBieDiffusion
import NewBieImage
import NewBiePipeline
import NewBieTensor
import NewBieText

/// Which models stay loaded between jobs (`--resident`).
public enum Residency: String, Sendable, CaseIterable {
    /// All three stages loaded once at start and kept: no load time in a job (the default).
    case all
    /// One stage at a time, in stage order, for a device that cannot hold all three: each job
    /// loads the text encoders, encodes, frees them; loads the DiT, samples every image, frees it;
    /// loads the VAE, decodes, frees it. Jobs pay the loads; the images are the same.
    case stage

    public static func parse(_ s: String) throws -> Residency {
        guard let r = Residency(rawValue: s) else { throw PipelineError("--resident \(s): expected all or stage") }
        return r
    }
}

/// The pipeline stages of a server or worker: loaded once and kept (`Residency.all`), so a job
/// runs text encoding, sampling and decoding with no load time (what `Pipeline.generate` does per
/// process, minus the loads), or loaded per job in stage order (`Residency.stage`). Sampling is
/// `DenoiseStage.run`'s loop with a cancel check before every model evaluation, so a cancel takes
/// effect within one step.
public final class ResidentPipeline: JobExecutor {
    public let paths: ModelPaths
    public let options: StageOptions
    public let residency: Residency
    /// The stages kept between jobs (nil with `Residency.stage`).
    public let text: TextStage?
    public let denoise: DenoiseStage?
    public let decode: DecodeStage?
    /// The DiT's configuration (read from the checkpoint without loading it in stage mode).
    public let ditConfig: NextDiTConfig
    /// Seconds each load took (text encoders, DiT, VAE), for /v1/models and the log; with
    /// `Residency.stage`, the loads of the last job.
    public private(set) var loadSeconds: [(String, Double)]
    /// Latent -> RGB for previews (nil: previews off).
    public var previewMap: LatentPreview?

    public init(paths: ModelPaths, options: StageOptions, residency: Residency = .all) throws {
        for slot in ModelSlot.allCases { _ = try paths.require(slot) }
        try options.placement.checkRules(paths: paths)
        self.paths = paths; self.options = options; self.residency = residency
        var times: [(String, Double)] = []
        func timed<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
            let t0 = Date()
            let r = try body()
            times.append((name, Date().timeIntervalSince(t0)))
            return r
        }
        switch residency {
        case .all:
            let text = try timed("text encoders") { try TextStage(paths: paths, options: options) }
            let denoise = try timed("dit") { try DenoiseStage(paths: paths, options: options) }
            let decode = try timed("vae") { try DecodeStage(paths: paths, options: options) }
            guard denoise.dit.config.inChannels == decode.vae.config.latentChannels else {
                throw PipelineError("the DiT (--dit) makes \(denoise.dit.config.inChannels)-channel latents but the VAE (--vae) decodes \(decode.vae.config.latentChannels) channels: the VAE does not belong to this DiT")
            }
            self.text = text; self.denoise = denoise; self.decode = decode
            ditConfig = denoise.dit.config
        case .stage:
            // the checkpoint's header and config only (memory-mapped, nothing on the device): a
            // wrong DiT path fails here, before the first job
            let (source, json) = try NextDiT.openCheckpoint(path: try paths.require(.dit), configPath: nil)
            ditConfig = try NextDiT.checkedWeights(source: source, json: json).1
            text = nil; denoise = nil; decode = nil
        }
        loadSeconds = times
    }

    public func run(_ job: Job, outputs: [String], context: JobRunContext) throws {
        let p = job.parameters
        guard outputs.count == p.count else { throw PipelineError("job \(job.id): \(outputs.count) output paths for \(p.count) images") }
        let system = SystemPrompt.resolve(p.systemPrompt, prompt: p.prompt)
        try context.checkCancelled()
        var times: [(String, Double)] = []
        // each stage is the resident one, or loaded now and released when the closure returns
        func withStage<S, R>(_ resident: S?, _ name: String, _ load: () throws -> S, _ body: (S) throws -> R) throws -> R {
            if let s = resident { return try body(s) }
            let t0 = Date()
            let s = try load()
            times.append((name, Date().timeIntervalSince(t0)))
            return try body(s)
        }
        let encoded = try withStage(text, "text encoders", { try TextStage(paths: paths, options: options) }) {
            try $0.encode(prompt: p.prompt, negativePrompt: p.negativePrompt, systemPrompt: system)
        }
        func write(_ image: RGBImage, _ i: Int, _ settings: SamplingSettings) throws {
            var m = encoded.metadata
            m.merge(GenerationMetadata.sampling(settings)) { $1 }
            m.merge(GenerationMetadata.options(options)) { $1 }
            m.merge(GenerationMetadata.models(paths)) { $1 }
            m["newbie:job"] = job.id
            // PNG.write goes through a temporary file renamed into place: never a half-written image
            try PNG.write(image, to: outputs[i], text: GenerationMetadata.pngText(m, software: "newbie serve"))
            context.wrote(image: i)
        }
        if residency == .all, let denoise, let decode {
            try denoise.check(encoded)
            for i in 0..<p.count {
                try context.checkCancelled()
                let settings = try p.settings(image: i)
                let latent = try sample(denoise, encoded, settings: settings, image: i, context: context)
                try context.checkCancelled()
                try write(try decode.run(latent), i, settings)
            }
            return
        }
        // stage order: every latent first, then every decode (one model on the device at a time)
        try context.checkCancelled()
        let latents: [(Tensor, SamplingSettings)] = try withStage(nil as DenoiseStage?, "dit", { try DenoiseStage(paths: paths, options: options) }) { denoise in
            try denoise.check(encoded)
            return try (0..<p.count).map { i in
                try context.checkCancelled()
                let settings = try p.settings(image: i)
                return (try sample(denoise, encoded, settings: settings, image: i, context: context), settings)
            }
        }
        try context.checkCancelled()
        try withStage(nil as DecodeStage?, "vae", { try DecodeStage(paths: paths, options: options) }) { decode in
            for (i, (latent, settings)) in latents.enumerated() {
                try context.checkCancelled()
                try write(try decode.run(latent), i, settings)
            }
        }
        loadSeconds = times
    }

    /// `DenoiseStage.run` for text-to-image, with the cancel check and step reports.
    func sample(_ denoise: DenoiseStage, _ e: EncodedPrompt, settings: SamplingSettings, image: Int, context: JobRunContext) throws -> Tensor {
        let dit = denoise.dit
        let z = settings.noise(channels: dit.config.inChannels)
        let sampler = try settings.makeSampler()
        let clip = dit.config.clipTextDim != nil
        let cond = clip ? e.cond : DiTConditioning(capFeats: e.cond.capFeats, capMask: e.cond.capMask, clipPooled: nil)
        let uncond = clip ? e.uncond : DiTConditioning(capFeats: e.uncond.capFeats, capMask: e.uncond.capMask, clipPooled: nil)
        let model: VelocityFunction = { x, t in
            try context.checkCancelled()
            // on the DiT's device, as the state (DenoiseStage.run)
            let v = try dit.guidedVelocity(x, t: t, cond: cond, uncond: uncond, options: settings.cfg).to(.f32)
            try Backends.check(dit.device)
            return v
        }
        let preview = previewMap
        return try sampler.sample(z.to(.f32, device: dit.device), model: model, onStep: { s in
            context.step(image: image, step: s.index + 1, steps: s.count, t: Double(s.to))
            if let map = preview, context.previewEvery > 0, (s.index + 1) % context.previewEvery == 0 || s.index + 1 == s.count,
               let png = try? map.png(latent: s.x) {
                context.preview(image: image, step: s.index + 1, png: png)
            }
        }).to(device: .cpu)
    }
}

/// Live previews: a fixed linear map of the latent channels to RGB plus bias (`rgb = W x + b`, W
/// 3 x C), applied per latent pixel: an image 1/8 of the final size, no VAE. The map is fitted by
/// least squares against the VAE decoder (tools/preview/fit_latent_rgb.py, docs/SERVER.md).
public struct LatentPreview: Sendable {
    /// 3 rows of C weights, then 3 biases.
    public var weights: [[Float]]
    public var bias: [Float]
    public init(weights: [[Float]], bias: [Float]) { self.weights = weights; self.bias = bias }

    /// The RGB image (values in [-1, 1] mapped to 0...255) of a latent [1, C, h, w].
    public func image(latent: Tensor) throws -> RGBImage {
        let x = latent.to(.f32, device: .cpu).contiguous()
        guard x.rank == 4, x.shape[0] == 1, x.shape[1] == weights.first?.count ?? -1 else {
            throw PipelineError("preview: latent \(x.shape) does not fit a \(weights.first?.count ?? 0)-channel map")
        }
        let c = x.shape[1], h = x.shape[2], w = x.shape[3]
        let v = x.toFloats()
        var pixels = [UInt8](repeating: 0, count: h * w * 3)
        for i in 0..<(h * w) {
            for k in 0..<3 {
                var s = bias[k]
                for ch in 0..<c { s += weights[k][ch] * v[ch * h * w + i] }
                pixels[i * 3 + k] = UInt8(max(0, min(255, ((s + 1) / 2 * 255).rounded())))
            }
        }
        return RGBImage(width: w, height: h, pixels: pixels)
    }

    /// The least-squares map from latents [1, C, h, w] to their decoded images (h*8 x w*8): each
    /// latent pixel's target is the mean of its 8x8 image block in [-1, 1]; W and b minimise the
    /// squared error over every latent pixel of every pair (normal equations in Double, a small
    /// ridge of 1e-6 to keep them solvable).
    public static func fit(latents: [Tensor], images: [RGBImage]) throws -> (map: LatentPreview, rmse: Double, biasOnlyRMSE: Double) {
        guard !latents.isEmpty, latents.count == images.count else { throw PipelineError("preview fit: give as many images as latents (at least one)") }
        let c = latents[0].shape[1]
        let n = c + 1
        var ata = [Double](repeating: 0, count: n * n)
        var atb = [Double](repeating: 0, count: n * 3)
        var rows: [([Double], [Double])] = []
        for (lat, img) in zip(latents, images) {
            let x = lat.to(.f32, device: .cpu).contiguous()
            guard x.rank == 4, x.shape[0] == 1, x.shape[1] == c else { throw PipelineError("preview fit: latent \(x.shape) is not [1, \(c), h, w]") }
            let h = x.shape[2], w = x.shape[3]
            guard img.width == w * 8, img.height == h * 8 else {
                throw PipelineError("preview fit: image \(img.width)x\(img.height) is not 8 x the latent \(w)x\(h)")
            }
            let v = x.toFloats()
            for py in 0..<h {
                for px in 0..<w {
                    var a = [Double](repeating: 1, count: n)
                    for ch in 0..<c { a[ch] = Double(v[ch * h * w + py * w + px]) }
                    var t = [Double](repeating: 0, count: 3)
                    for yy in 0..<8 {
                        for xx in 0..<8 {
                            let o = ((py * 8 + yy) * img.width + px * 8 + xx) * 3
                            for k in 0..<3 { t[k] += Double(img.pixels[o + k]) }
                        }
                    }
                    for k in 0..<3 { t[k] = t[k] / 64 / 255 * 2 - 1 }
                    for i in 0..<n {
                        for j in 0..<n { ata[i * n + j] += a[i] * a[j] }
                        for k in 0..<3 { atb[i * 3 + k] += a[i] * t[k] }
                    }
                    rows.append((a, t))
                }
            }
        }
        for i in 0..<n { ata[i * n + i] += 1e-6 }
        // Gaussian elimination with partial pivoting on [ata | atb]
        var m = ata, r = atb
        for col in 0..<n {
            let p = (col..<n).max { abs(m[$0 * n + col]) < abs(m[$1 * n + col]) }!
            if p != col {
                for j in 0..<n { m.swapAt(col * n + j, p * n + j) }
                for k in 0..<3 { r.swapAt(col * 3 + k, p * 3 + k) }
            }
            let d = m[col * n + col]
            guard abs(d) > 1e-12 else { throw PipelineError("preview fit: the latents do not determine the map (singular system)") }
            for i in 0..<n where i != col {
                let f = m[i * n + col] / d
                if f == 0 { continue }
                for j in col..<n { m[i * n + j] -= f * m[col * n + j] }
                for k in 0..<3 { r[i * 3 + k] -= f * r[col * 3 + k] }
            }
        }
        var weights = [[Float]](repeating: [Float](repeating: 0, count: c), count: 3)
        var bias = [Float](repeating: 0, count: 3)
        for i in 0..<n {
            for k in 0..<3 {
                let v = Float(r[i * 3 + k] / m[i * n + i])
                if i < c { weights[k][i] = v } else { bias[k] = v }
            }
        }
        // errors: the fit, and the best constant colour (what the map must beat)
        var mean = [Double](repeating: 0, count: 3)
        for (_, t) in rows { for k in 0..<3 { mean[k] += t[k] / Double(rows.count) } }
        var e = 0.0, e0 = 0.0
        for (a, t) in rows {
            for k in 0..<3 {
                var y = Double(bias[k])
                for ch in 0..<c { y += Double(weights[k][ch]) * a[ch] }
                e += (y - t[k]) * (y - t[k])
                e0 += (mean[k] - t[k]) * (mean[k] - t[k])
            }
        }
        let count = Double(rows.count * 3)
        return (LatentPreview(weights: weights, bias: bias), (e / count).squareRoot(), (e0 / count).squareRoot())
    }

    /// `{"weights": [[...C], [...C], [...C]], "bias": [r, g, b]}`.
    public func json() -> Data {
        let o: [String: Any] = ["weights": weights.map { $0.map { Double($0) } }, "bias": bias.map { Double($0) }]
        return (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data()
    }

    public static func load(_ path: String) throws -> LatentPreview {
        guard let d = FileManager.default.contents(atPath: path),
              let o = (try? JSONSerialization.jsonObject(with: d)) as? [String: Any],
              let w = o["weights"] as? [[Double]], let b = o["bias"] as? [Double],
              w.count == 3, b.count == 3, let c = w.first?.count, c > 0, w.allSatisfy({ $0.count == c }) else {
            throw PipelineError("--preview-map \(path): expected {\"weights\": 3 rows of C numbers, \"bias\": 3 numbers} (newbie fit-preview writes it)")
        }
        return LatentPreview(weights: w.map { $0.map(Float.init) }, bias: b.map(Float.init))
    }

    public func png(latent: Tensor) throws -> Data {
        let img = try image(latent: latent)
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("newbie-preview-\(Job.newID()).png").path
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try PNG.write(img, to: tmp, compressionLevel: 1)
        return try Data(contentsOf: URL(fileURLWithPath: tmp))
    }
}
