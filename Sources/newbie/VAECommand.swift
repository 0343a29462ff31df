import ArgumentParser
import Foundation
import NewBieDiffusion
import NewBieImage
import NewBiePipeline
import NewBieTensor
import NewBieWeights

/// Options shared by the VAE commands.
struct VAEOptions: ParsableArguments {
    @Option(name: .customLong("vae"), help: "FLUX VAE: diffusers vae/ folder or diffusion_pytorch_model.safetensors (config.json beside it is used), or BFL/ComfyUI ae.safetensors.")
    var path: String

    @OptionGroup var deviceOptions: DeviceOptions

    @Option(name: .customLong("norm-groups"), help: "GroupNorm groups when the configuration is inferred from the shapes (FLUX: 32).")
    var normGroups = 32

    func load(_ parts: VAEParts) throws -> AutoencoderKL {
        let options = try deviceOptions.stageOptions()
        return try AutoencoderKL.load(path: path, placement: try options.open(.vae), parts: parts, normGroups: normGroups)
    }

    /// The VAE's precision as given back to --precision.
    var dtype: String { (try? deviceOptions.placement().precision(.vae).description) ?? "?" }
}

struct TilingOptions: ParsableArguments {
    @Option(help: "Tiled decoding: auto (above 1536x1536), always or never.")
    var tiled = "auto"

    @Option(help: "Largest tile side in latent cells (x8 pixels); tiles shrink to the fewest that cover the image.")
    var tile = 128

    @Option(help: "Minimum overlap of tiles in latent cells (half of it is context for each tile).")
    var overlap = 32

    @Option(help: "Width of the blend across tile boundaries, in latent cells.")
    var blend = 4

    @Flag(name: .customLong("per-tile-norm"), help: "Normalise each tile with its own GroupNorm statistics (one pass; faster, tiles may differ in tone).")
    var perTileNorm = false

    func tiling() throws -> VAETiling {
        guard let mode = VAETiling.Mode(rawValue: tiled) else { throw ValidationError("--tiled \(tiled): use auto, always or never") }
        guard tile >= 1, overlap >= 0, overlap < tile, blend >= 0, blend <= 2 * (overlap / 2) else {
            throw ValidationError("need 0 <= --overlap < --tile and --blend <= the overlap (rounded down to even)")
        }
        return VAETiling(mode: mode, tileLatent: tile, overlapLatent: overlap, blendLatent: blend, globalNormStatistics: !perTileNorm)
    }
}

/// `newbie vae-decode`: a NewBie latent (safetensors) -> PNG, through the FLUX VAE decoder with
/// NewBie's scaling (x / 0.3611 + 0.1159).
struct VAEDecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae-decode", abstract: "Decode a latent (.safetensors) to a PNG with the FLUX VAE.")

    @OptionGroup var vae: VAEOptions
    @OptionGroup var tiling: TilingOptions

    @Option(help: "Latent .safetensors holding a [1, 16, h, w] (or [16, h, w]) tensor.")
    var latent: String

    @Option(help: "Tensor name in the latent file (default: the only tensor, or \"latent\").")
    var name: String?

    @Flag(help: "The latent is already in VAE space (skip NewBie's unscaling).")
    var raw = false

    @Option(name: [.short, .customLong("output"), .customLong("out")], help: "Output PNG (- for standard output).")
    var out: String

    @OptionGroup var pixels: PixelOptions

    func run() throws {
        try checkOutput(out)
        let rounding = try pixels.rounding()
        let file = try SafeTensorsFile(path: latent)
        let key = try name ?? (file.names.count == 1 ? file.names[0] : (file.names.contains("latent") ? "latent" : {
            throw PipelineError("--latent \(latent) holds \(file.names.count) tensors (\(file.names.prefix(8).joined(separator: ", "))); pick one with --name")
        }()))
        var x = try file.tensor(key)
        if x.rank == 3 { x = x.unsqueeze(0) }
        let model = try vae.load(.decoder)
        guard x.rank == 4, x.shape[0] == 1, x.shape[1] == model.config.latentChannels else {
            throw PipelineError("--latent \(latent): tensor \(key) has shape \(x.shape); expected [1, \(model.config.latentChannels), h, w]")
        }
        let t = try tiling.tiling()
        let start = Date()
        let img = raw ? model.decodeRaw(x, tiling: t) : model.decode(x, tiling: t)
        let seconds = Date().timeIntervalSince(start)
        let tiled = t.tiles(latentHeight: x.shape[2], latentWidth: x.shape[3])
        try PNG.write(RGBImage(tensor: img, rounding: rounding), to: out, text: [
            ("Software", "newbie vae-decode"),
            ("newbie:latent", "\(latent):\(key)"),
            ("newbie:vae", vae.path),
            ("newbie:dtype", vae.dtype),
            ("newbie:pixel_rounding", rounding.rawValue),
            ("newbie:tiled", tiled ? "tile \(t.tileLatent), overlap \(t.overlapLatent), blend \(t.blendLatent), \(t.globalNormStatistics ? "global" : "per-tile") statistics" : "no"),
        ])
        reportWrote(out, " (\(img.shape[3])x\(img.shape[2]), \(tiled ? "tiled" : "untiled"), \(String(format: "%.2f", seconds)) s, peak \(formatBytes(Backends.backend(for: .cpu).memoryStats.peakBytes)))")
    }
}

/// `newbie vae-encode`: a PNG -> NewBie latent ((mean - 0.1159) * 0.3611) as safetensors.
struct VAEEncodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae-encode", abstract: "Encode a PNG to a NewBie latent (.safetensors) with the FLUX VAE encoder.")

    @OptionGroup var vae: VAEOptions

    @Option(help: "Input PNG (any colour type; alpha is dropped). Width and height must be multiples of 8.")
    var image: String

    @Option(name: [.short, .customLong("output"), .customLong("out")], help: "Output .safetensors (- for standard output) with one tensor \"latent\" [1, 16, H/8, W/8] (fp32).")
    var out: String

    func run() throws {
        try checkOutput(out)
        let decoded = try PNG.read(image)
        let model = try vae.load(.encoder)
        let f = model.config.downscale
        guard decoded.image.width % f == 0, decoded.image.height % f == 0 else {
            throw PipelineError("--image \(image) is \(decoded.image.width)x\(decoded.image.height); width and height must be multiples of \(f)")
        }
        let latent = model.encode(decoded.image.tensor()).to(.f32)
        try SafeTensorsWriter.write([("latent", latent)], metadata: ["source": image, "vae": vae.path, "dtype": vae.dtype],
                                    toPath: out)
        reportWrote(out, ": latent \(latent.shape)")
    }
}

/// `newbie vae-tiling`: decodes one smooth latent untiled and tiled and reports the difference,
/// the peak memory of each and the time (docs/BENCHMARKS.md, "VAE").
struct VAETilingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vae-tiling", abstract: "Compare tiled with untiled VAE decoding: error, peak memory, time.")

    @OptionGroup var vae: VAEOptions
    @OptionGroup var tiling: TilingOptions

    @Option(help: "Latent side in cells (128 = 1024x1024 pixels).")
    var size = 128

    @Flag(help: "Also run the tiled decode with per-tile GroupNorm statistics.")
    var comparePerTile = false

    func run() throws {
        let model = try vae.load(.decoder)
        let c = model.config.latentChannels, n = size
        var v = [Float](repeating: 0, count: c * n * n)
        for ch in 0..<c {
            let phase = Float(ch) * 0.7, amp: Float = 0.5 + 0.05 * Float(ch % 5)
            for y in 0..<n {
                for x in 0..<n {
                    let fy = Float(y) / Float(n), fx = Float(x) / Float(n)
                    v[(ch * n + y) * n + x] = amp * sin(2.1 * fx + 1.3 * fy + phase) + 0.2 * cos(1.7 * fy - 0.9 * fx + phase)
                }
            }
        }
        let latent = Tensor(v, shape: [1, c, n, n])
        let backend = Backends.backend(for: .cpu)
        func measure(_ t: VAETiling) -> (Tensor, Int, Double) {
            let base = backend.memoryStats.currentBytes
            backend.resetPeakMemory()
            let start = Date()
            let out = model.decode(latent, tiling: t)
            return (out, backend.memoryStats.peakBytes - base, Date().timeIntervalSince(start))
        }
        print("VAE \(vae.path), \(vae.dtype), config \(model.config.blockOutChannels), latent \(c)x\(n)x\(n) -> \(n * model.config.downscale)x\(n * model.config.downscale)")
        let (ref, refPeak, refTime) = measure(.never)
        print(String(format: "untiled: peak %@ above the weights, %.2f s", formatBytes(refPeak), refTime))
        var t = try tiling.tiling()
        t.mode = .always
        var runs = [t]
        if comparePerTile { var p = t; p.globalNormStatistics = false; runs.append(p) }
        let refValues = ref.toFloats()
        for r in runs {
            let (out, peak, time) = measure(r)
            var num = 0.0, den = 0.0, maxAbs = 0.0
            let o = out.toFloats()
            var nan = false
            for i in 0..<o.count {
                if o[i].isNaN { nan = true }
                let d = Double(o[i]) - Double(refValues[i])
                num += d * d; den += Double(refValues[i]) * Double(refValues[i]); maxAbs = max(maxAbs, abs(d))
            }
            let rel = nan ? Double.infinity : (num / den).squareRoot()
            print(String(format: "tiled (tile %d, overlap %d, blend %d, %@ statistics): relative L2 %.3e, max abs %.3e, peak %@ (%.1f%% of untiled), %.2f s",
                         r.tileLatent, r.overlapLatent, r.blendLatent, r.globalNormStatistics ? "global" : "per-tile",
                         rel, maxAbs, formatBytes(peak), 100 * Double(peak) / Double(refPeak), time))
        }
    }
}
