import Foundation
import NewBieTensor
import NewBieWeights

// The FLUX.1-dev AutoencoderKL (spec section 6): decoder (latent -> image) and encoder
// (image -> latent mean). Internal tensor names are diffusers'; `VAENaming` maps other namings.
// Weights are cast once, at load, to the compute dtype and moved to the model's device; inputs
// move there on entry, activations stay in that dtype and every op rounds its result to it.

struct VAEGroupNorm {
    let weight: Tensor, bias: Tensor
    let groups: Int, eps: Float
    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        weight = try w.tensor("weight").to(dtype, device: device); bias = try w.tensor("bias").to(dtype, device: device)
        groups = c.normNumGroups; eps = c.normEps
    }
    func callAsFunction(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        if let h = hook { return h.normalize(x, self) }
        return x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps)
    }
}

/// Replaces GroupNorm's own statistics (tiled decoding uses statistics of the whole image).
protocol VAENormHook: AnyObject {
    func normalize(_ x: Tensor, _ norm: VAEGroupNorm) -> Tensor
    /// True once the hook has seen all it needs: the rest of the forward pass may be skipped.
    var finished: Bool { get }
}

struct VAEConv {
    let weight: Tensor, bias: Tensor
    let options: Conv2dOptions
    init(_ w: ScopedWeights, _ dtype: DType, _ device: Device, options: Conv2dOptions? = nil) throws {
        weight = try w.tensor("weight").to(dtype, device: device); bias = try w.tensor("bias").to(dtype, device: device)
        let k = weight.shape[2]
        self.options = options ?? Conv2dOptions(stride: 1, padding: k / 2)
    }
    func callAsFunction(_ x: Tensor) -> Tensor { x.conv2d(weight, bias: bias, options: options) }
}

/// GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input (through a 1x1 conv when the
/// channel count changes).
struct VAEResnet {
    let norm1: VAEGroupNorm, conv1: VAEConv, norm2: VAEGroupNorm, conv2: VAEConv
    let shortcut: VAEConv?
    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        norm1 = try VAEGroupNorm(w.scope("norm1"), c, dtype, device)
        conv1 = try VAEConv(w.scope("conv1"), dtype, device)
        norm2 = try VAEGroupNorm(w.scope("norm2"), c, dtype, device)
        conv2 = try VAEConv(w.scope("conv2"), dtype, device)
        shortcut = w.weights.specs[w.path + ".conv_shortcut.weight"] == nil ? nil : try VAEConv(w.scope("conv_shortcut"), dtype, device)
    }
    func callAsFunction(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        var h = norm1(x, hook).silu()
        if hook?.finished == true { return x }
        h = conv1(h)
        h = norm2(h, hook).silu()
        if hook?.finished == true { return x }
        h = conv2(h)
        return (shortcut.map { $0(x) } ?? x) + h
    }
}

/// Single-head self-attention over the H*W positions, GroupNorm first, residual added.
struct VAEAttention {
    let norm: VAEGroupNorm
    let q: (Tensor, Tensor), k: (Tensor, Tensor), v: (Tensor, Tensor), out: (Tensor, Tensor)
    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        norm = try VAEGroupNorm(w.scope("group_norm"), c, dtype, device)
        func lin(_ n: String) throws -> (Tensor, Tensor) {
            (try w.scope(n).tensor("weight").to(dtype, device: device), try w.scope(n).tensor("bias").to(dtype, device: device))
        }
        q = try lin("to_q"); k = try lin("to_k"); v = try lin("to_v"); out = try lin("to_out.0")
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        let (b, ch, hh, ww) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let l = hh * ww
        // [B, C, H, W] -> [B, HW, C]
        let tokens = norm(x).reshape([b, ch, l]).permute([0, 2, 1]).contiguous()
        let qs = tokens.linear(q.0, bias: q.1).reshape([b, l, 1, ch])
        let ks = tokens.linear(k.0, bias: k.1).reshape([b, l, 1, ch])
        let vs = tokens.linear(v.0, bias: v.1).reshape([b, l, 1, ch])
        let a = qs.attention(k: ks, v: vs).reshape([b, l, ch]).linear(out.0, bias: out.1)
        return a.permute([0, 2, 1]).reshape([b, ch, hh, ww]) + x
    }
}

struct VAEMidBlock {
    let resnet0: VAEResnet, attention: VAEAttention?, resnet1: VAEResnet
    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        resnet0 = try VAEResnet(w.scope("resnets.0"), c, dtype, device)
        attention = c.midBlockAddAttention ? try VAEAttention(w.scope("attentions.0"), c, dtype, device) : nil
        resnet1 = try VAEResnet(w.scope("resnets.1"), c, dtype, device)
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        var h = resnet0(x)
        if let a = attention { h = a(h) }
        return resnet1(h)
    }
}

/// Latent [B, latent, h, w] -> image [B, out, h*2^(n-1), w*2^(n-1)] (roughly [-1, 1]).
public struct VAEDecoder {
    let convIn: VAEConv
    let mid: VAEMidBlock
    let up: [(resnets: [VAEResnet], upsample: VAEConv?)]
    let normOut: VAEGroupNorm
    let convOut: VAEConv
    public let dtype: DType
    public let device: Device

    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        self.dtype = dtype
        self.device = device
        convIn = try VAEConv(w.scope("conv_in"), dtype, device)
        mid = try VAEMidBlock(w.scope("mid_block"), c, dtype, device)
        up = try (0..<c.levels).map { j in
            let s = w.scope("up_blocks.\(j)")
            let resnets = try (0...c.layersPerBlock).map { try VAEResnet(s.scope("resnets.\($0)"), c, dtype, device) }
            let upsample = j < c.levels - 1 ? try VAEConv(s.scope("upsamplers.0.conv"), dtype, device) : nil
            return (resnets, upsample)
        }
        normOut = try VAEGroupNorm(w.scope("conv_norm_out"), c, dtype, device)
        convOut = try VAEConv(w.scope("conv_out"), dtype, device)
    }

    public func callAsFunction(_ z: Tensor) -> Tensor {
        upper(lower(z))
    }

    /// The same decoder, reporting each module's output to `hook` (for tracing).
    func callAsFunction(_ z: Tensor, hook: (_ path: String, _ output: Tensor) -> Void) -> Tensor {
        var h = convIn(z.to(dtype, device: device))
        hook("decoder.conv_in", h)
        h = mid(h)
        hook("decoder.mid_block", h)
        for (j, level) in up.enumerated() {
            for r in level.resnets { h = r(h, nil) }
            if let u = level.upsample { h = u(h.upsampleNearest2x()) }
            hook("decoder.up_blocks.\(j)", h)
        }
        h = normOut(h, nil).silu()
        hook("decoder.conv_norm_out", h)
        h = convOut(h)
        hook("decoder.conv_out", h)
        return h
    }

    /// conv_in and the mid block (with its global attention), at latent resolution.
    func lower(_ z: Tensor) -> Tensor {
        mid(convIn(z.to(dtype, device: device)))
    }

    /// The up levels, output norm and conv_out: everything at and above latent resolution
    /// outside the mid block. Purely local apart from GroupNorm statistics.
    func upper(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        var h = x
        for level in up {
            for r in level.resnets {
                h = r(h, hook)
                if hook?.finished == true { return h }
            }
            if let u = level.upsample { h = u(h.upsampleNearest2x()) }
        }
        h = normOut(h, hook).silu()
        if hook?.finished == true { return h }
        return convOut(h)
    }
}

/// Image [B, in, H, W] -> moments [B, 2*latent, ceil(H/2^(n-1)), ...] (mean | logvar).
public struct VAEEncoder {
    let convIn: VAEConv
    let down: [(resnets: [VAEResnet], downsample: VAEConv?)]
    let mid: VAEMidBlock
    let normOut: VAEGroupNorm
    let convOut: VAEConv
    public let dtype: DType
    public let device: Device

    init(_ w: ScopedWeights, _ c: VAEConfig, _ dtype: DType, _ device: Device) throws {
        self.dtype = dtype
        self.device = device
        convIn = try VAEConv(w.scope("conv_in"), dtype, device)
        down = try (0..<c.levels).map { i in
            let s = w.scope("down_blocks.\(i)")
            let resnets = try (0..<c.layersPerBlock).map { try VAEResnet(s.scope("resnets.\($0)"), c, dtype, device) }
            let downsample = i < c.levels - 1
                ? try VAEConv(s.scope("downsamplers.0.conv"), dtype, device, options: .downsampleAsymmetric) : nil
            return (resnets, downsample)
        }
        mid = try VAEMidBlock(w.scope("mid_block"), c, dtype, device)
        normOut = try VAEGroupNorm(w.scope("conv_norm_out"), c, dtype, device)
        convOut = try VAEConv(w.scope("conv_out"), dtype, device)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = convIn(x.to(dtype, device: device))
        for level in down {
            for r in level.resnets { h = r(h) }
            if let d = level.downsample { h = d(h) }
        }
        h = mid(h)
        h = normOut(h).silu()
        return convOut(h)
    }
}

/// The FLUX VAE with NewBie's latent scaling.
public final class AutoencoderKL {
    /// Called with each decoder module's output during an untiled decode ("decoder.conv_in",
    /// "decoder.mid_block", "decoder.up_blocks.N", "decoder.conv_norm_out", "decoder.conv_out"),
    /// for tracing; tiled decoding reports nothing here. Nil costs nothing.
    public var moduleHook: ((_ path: String, _ output: Tensor) -> Void)?
    public let config: VAEConfig
    public let dtype: DType
    /// Where the weights live and every decode and encode runs; inputs may come from any device.
    public let device: Device
    public let decoder: VAEDecoder?
    public let encoder: VAEEncoder?

    /// Builds from validated weights (`ModelWeights` over `VAENaming.expectedTensors(config, parts:)`),
    /// cast to `dtype` and moved to `device` once.
    public init(weights: ModelWeights, config: VAEConfig, dtype: DType = .f32, device: Device = .cpu, parts: VAEParts = .all) throws {
        guard dtype.isFloatingPoint, dtype != .f64 else { throw WeightsError("VAE compute dtype must be f32, bf16 or f16, not \(dtype)") }
        self.config = config
        self.dtype = dtype
        self.device = device
        let root = weights.scope("")
        decoder = parts.contains(.decoder) ? try VAEDecoder(root.scope("decoder"), config, dtype, device) : nil
        encoder = parts.contains(.encoder) ? try VAEEncoder(root.scope("encoder"), config, dtype, device) : nil
    }

    /// Loads a VAE from a safetensors file (diffusers or `ae.safetensors` naming, detected) or a
    /// diffusers folder (`vae/` or the model root). The configuration comes from `config`, else
    /// a `config.json` beside the weights, else the tensor shapes (with `normGroups` groups).
    /// Every expected tensor is checked for presence and shape before anything is built. The
    /// weights are cast to `dtype` and moved to `device` once; decode and encode run there.
    public static func load(path: String, config: VAEConfig? = nil, dtype: DType = .f32, device: Device = .cpu,
                            parts: VAEParts = .all, normGroups: Int = 32) throws -> AutoencoderKL {
        let weightsPath = try resolveWeightsPath(path)
        let file = try SafeTensorsFile(path: weightsPath)
        var cfg = config
        if cfg == nil {
            let json = URL(fileURLWithPath: weightsPath).deletingLastPathComponent().appendingPathComponent("config.json")
            if try VAENaming.detect(file).format == .diffusers, FileManager.default.fileExists(atPath: json.path) {
                cfg = try VAEConfig(configJSON: json)
            }
        }
        return try load(source: file, config: cfg, dtype: dtype, device: device, parts: parts, normGroups: normGroups)
    }

    /// Loads from any weight source; `config` nil infers it from the shapes.
    public static func load(source: WeightSource, config: VAEConfig? = nil, dtype: DType = .f32, device: Device = .cpu,
                            parts: VAEParts = .all, normGroups: Int = 32) throws -> AutoencoderKL {
        let layout = try VAENaming.detect(source)
        var missingParts: [String] = []
        if parts.contains(.decoder) && !layout.hasDecoder { missingParts.append("decoder") }
        if parts.contains(.encoder) && !layout.hasEncoder { missingParts.append("encoder") }
        if !missingParts.isEmpty {
            throw WeightsError("\(source.sourceDescription): this VAE checkpoint has no \(missingParts.joined(separator: " or ")) (needed here)")
        }
        let cfg = try config ?? VAENaming.inferConfig(source, layout: layout, normGroups: normGroups)
        try cfg.validate(source: source.sourceDescription)
        let weights = try ModelWeights(source: source, expected: VAENaming.expectedTensors(cfg, parts: parts),
                                       naming: VAENaming.naming(layout.format, config: cfg, parts: parts),
                                       prefixes: [layout.prefix].filter { !$0.isEmpty },
                                       anchor: parts.contains(.decoder) ? "decoder.conv_in.weight" : "encoder.conv_in.weight")
        return try AutoencoderKL(weights: weights, config: cfg, dtype: dtype, device: device, parts: parts)
    }

    static func resolveWeightsPath(_ path: String) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw WeightsError("\(path): no such file or folder")
        }
        guard isDir.boolValue else { return path }
        let candidates = ["diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "ae.safetensors"]
        for c in candidates {
            let p = (path as NSString).appendingPathComponent(c)
            if FileManager.default.fileExists(atPath: p) { return p }
        }
        throw WeightsError("\(path): folder holds none of \(candidates.joined(separator: ", "))")
    }

    func requireDecoder() -> VAEDecoder {
        guard let d = decoder else { preconditionFailure("this AutoencoderKL was loaded without its decoder") }
        return d
    }

    func requireEncoder() -> VAEEncoder {
        guard let e = encoder else { preconditionFailure("this AutoencoderKL was loaded without its encoder") }
        return e
    }

    func checkLatent(_ z: Tensor) {
        precondition(z.rank == 4 && z.shape[1] == config.latentChannels,
                     "VAE decode: latent must be [B, \(config.latentChannels), h, w], got \(z.shape)")
    }

    /// VAE latent (already unscaled, any device) -> image in about [-1, 1], in the compute dtype,
    /// on the model's device.
    public func decodeRaw(_ z: Tensor) -> Tensor {
        checkLatent(z)
        if let hook = moduleHook { return requireDecoder()(z, hook: hook) }
        return requireDecoder()(z)
    }

    /// NewBie latent (any device) -> image in about [-1, 1] on the model's device: decoder(x / scaling + shift).
    public func decode(_ x: Tensor) -> Tensor {
        decodeRaw(unscale(x))
    }

    /// NewBie latent -> VAE latent, in the compute dtype on the model's device: `x / scaling`,
    /// rounded, then `+ shift`, rounded (the reference's two operations, so reduced-precision runs
    /// round where it does).
    public func unscale(_ x: Tensor) -> Tensor {
        let s = Tensor([config.scalingFactor], shape: [1], device: device)
        return x.to(dtype, device: device).binary(.div, s) + config.shiftFactor
    }

    /// Image [B, 3, H, W] in [-1, 1] (any device) -> encoder moments [B, 2*latent, ...] (mean | logvar)
    /// on the model's device.
    public func encodeMoments(_ image: Tensor) -> Tensor {
        precondition(image.rank == 4 && image.shape[1] == config.inChannels,
                     "VAE encode: image must be [B, \(config.inChannels), H, W], got \(image.shape)")
        return requireEncoder()(image)
    }

    /// Image in [-1, 1] -> NewBie latent (mean - shift) * scaling (the posterior's mode), as two
    /// rounded operations in the compute dtype like the reference.
    public func encode(_ image: Tensor) -> Tensor {
        let mean = encodeMoments(image).narrow(1, start: 0, length: config.latentChannels)
        return (mean.contiguous() + (-config.shiftFactor)) * config.scalingFactor
    }
}
