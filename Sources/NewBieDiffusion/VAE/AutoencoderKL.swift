import Foundation
import NewBieTensor
import NewBieWeights

// The FLUX.1-dev AutoencoderKL: decoder (latent -> image) and encoder
// (image -> latent mean). Internal tensor names are diffusers'; `VAENaming` maps other namings.
// Weights are cast once, at load, to the compute dtype and moved to the model's device; inputs
// move there on entry, activations stay in that dtype and every op rounds its result to it.

struct VAEGroupNorm {
    let weight: Tensor, bias: Tensor
    let groups: Int, eps: Float
    let dtype: DType
    init(_ s: ModuleScope, _ c: VAEConfig, channels: Int) throws {
        weight = try s.tensor("weight", shape: [channels]); bias = try s.tensor("bias", shape: [channels])
        groups = c.normNumGroups; eps = c.normEps; dtype = s.dtype
    }
    func callAsFunction(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        computed(in: dtype, x) { x in
            if let h = hook { return h.normalize(x, self) }
            return x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps)
        }
    }
    /// GroupNorm then SiLU: one fused pass on backends that have it. The two ops run apart when a
    /// hook supplies the statistics (tiled decoding) or when the norm's dtype differs from its
    /// input's (SiLU then runs in the input's dtype, after the cast back).
    func silu(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        if hook != nil || x.dtype != dtype { return self(x, hook).silu() }
        return x.groupNormSiLU(groups: groups, weight: weight, bias: bias, eps: eps)
    }
}

/// Replaces GroupNorm's own statistics (tiled decoding uses statistics of the whole image).
protocol VAENormHook: AnyObject {
    func normalize(_ x: Tensor, _ norm: VAEGroupNorm) -> Tensor
    /// True once the hook has seen all it needs: the rest of the forward pass may be skipped.
    var finished: Bool { get }
}

/// GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input (through a 1x1 conv when the
/// channel count changes).
struct VAEResnet {
    let dtype: DType
    let norm1: VAEGroupNorm, conv1: Conv2d, norm2: VAEGroupNorm, conv2: Conv2d
    let shortcut: Conv2d?
    init(_ s: ModuleScope, _ c: VAEConfig, in i: Int, out o: Int) throws {
        dtype = s.dtype
        norm1 = try VAEGroupNorm(s.scope("norm1"), c, channels: i)
        conv1 = try s.conv2d("conv1", in: i, out: o, kernel: 3)
        norm2 = try VAEGroupNorm(s.scope("norm2"), c, channels: o)
        conv2 = try s.conv2d("conv2", in: o, out: o, kernel: 3)
        shortcut = i == o ? nil : try s.conv2d("conv_shortcut", in: i, out: o, kernel: 1)
    }
    func callAsFunction(_ input: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        computed(in: dtype, input) { x in
            var h = norm1.silu(x, hook)
            if hook?.finished == true { return x }
            h = conv1(h)
            h = norm2.silu(h, hook)
            if hook?.finished == true { return x }
            h = conv2(h)
            return (shortcut.map { $0(x) } ?? x) + h
        }
    }
}

/// Single-head self-attention over the H*W positions, GroupNorm first, residual added.
struct VAEAttention {
    let dtype: DType
    let norm: VAEGroupNorm
    let q: Linear, k: Linear, v: Linear, out: Linear
    init(_ s: ModuleScope, _ c: VAEConfig, channels ch: Int) throws {
        dtype = s.dtype
        norm = try VAEGroupNorm(s.scope("group_norm"), c, channels: ch)
        q = try s.linear("to_q", in: ch, out: ch, bias: true); k = try s.linear("to_k", in: ch, out: ch, bias: true)
        v = try s.linear("to_v", in: ch, out: ch, bias: true); out = try s.scope("to_out").linear("0", in: ch, out: ch, bias: true)
    }
    func callAsFunction(_ input: Tensor) -> Tensor {
        computed(in: dtype, input) { x in
            let (b, ch, hh, ww) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
            let l = hh * ww
            // [B, C, H, W] -> [B, HW, C]
            let tokens = norm(x).reshape([b, ch, l]).permute([0, 2, 1]).contiguous()
            let qs = q(tokens).reshape([b, l, 1, ch])
            let ks = k(tokens).reshape([b, l, 1, ch])
            let vs = v(tokens).reshape([b, l, 1, ch])
            let a = out(qs.attention(k: ks, v: vs).reshape([b, l, ch]))
            return a.permute([0, 2, 1]).reshape([b, ch, hh, ww]) + x
        }
    }
}

struct VAEMidBlock {
    let dtype: DType
    let resnet0: VAEResnet, attention: VAEAttention?, resnet1: VAEResnet
    init(_ s: ModuleScope, _ c: VAEConfig, channels ch: Int) throws {
        dtype = s.dtype
        resnet0 = try VAEResnet(s.scope("resnets.0"), c, in: ch, out: ch)
        attention = c.midBlockAddAttention ? try VAEAttention(s.scope("attentions.0"), c, channels: ch) : nil
        resnet1 = try VAEResnet(s.scope("resnets.1"), c, in: ch, out: ch)
    }
    func callAsFunction(_ x: Tensor) -> Tensor {
        computed(in: dtype, x) { x in
            var h = resnet0(x)
            if let a = attention { h = a(h) }
            return resnet1(h)
        }
    }
}

/// One up level of the decoder: ResNets, then (all but the last level) nearest x2 and a conv.
struct VAEUpBlock {
    let dtype: DType
    let resnets: [VAEResnet]
    let upsample: Conv2d?
}

/// Latent [B, latent, h, w] -> image [B, out, h*2^(n-1), w*2^(n-1)] (roughly [-1, 1]).
public struct VAEDecoder {
    let convIn: Conv2d
    let mid: VAEMidBlock
    let up: [VAEUpBlock]
    let normOut: VAEGroupNorm
    let convOut: Conv2d
    /// The decoder's dtype (what its input is cast to, what it returns).
    public let dtype: DType
    public let device: Device

    init(_ s: ModuleScope, _ c: VAEConfig) throws {
        dtype = s.dtype
        device = s.device
        let ch = c.blockOutChannels, n = ch.count
        let rev = Array(ch.reversed())
        convIn = try s.conv2d("conv_in", in: c.latentChannels, out: rev[0], kernel: 3)
        mid = try VAEMidBlock(s.scope("mid_block"), c, channels: rev[0])
        var prev = rev[0]
        up = try (0..<n).map { j in
            let b = s.scope("up_blocks.\(j)")
            let resnets = try (0...c.layersPerBlock).map { r -> VAEResnet in
                let block = try VAEResnet(b.scope("resnets.\(r)"), c, in: r == 0 ? prev : rev[j], out: rev[j])
                return block
            }
            prev = rev[j]
            let upsample = j < n - 1 ? try b.scope("upsamplers.0").conv2d("conv", in: rev[j], out: rev[j], kernel: 3) : nil
            return VAEUpBlock(dtype: b.dtype, resnets: resnets, upsample: upsample)
        }
        normOut = try VAEGroupNorm(s.scope("conv_norm_out"), c, channels: ch[0])
        convOut = try s.conv2d("conv_out", in: ch[0], out: c.outChannels, kernel: 3)
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
            h = computed(in: level.dtype, h) { x in
                var h = x
                for r in level.resnets { h = r(h, nil) }
                if let u = level.upsample { h = u(h.upsampleNearest2x()) }
                return h
            }
            hook("decoder.up_blocks.\(j)", h)
        }
        h = normOut.silu(h, nil)
        hook("decoder.conv_norm_out", h)
        h = convOut(h)
        hook("decoder.conv_out", h)
        return h
    }

    /// conv_in and the mid block (with its global attention), at latent resolution.
    /// GroupNorms in `upper` (two per resnet, plus the output norm).
    var upperGroupNorms: Int { up.reduce(0) { $0 + 2 * $1.resnets.count } + 1 }

    func lower(_ z: Tensor) -> Tensor {
        mid(convIn(z.to(dtype, device: device)))
    }

    /// The up levels, output norm and conv_out: everything at and above latent resolution
    /// outside the mid block. Purely local apart from GroupNorm statistics.
    func upper(_ x: Tensor, _ hook: VAENormHook? = nil) -> Tensor {
        var h = x
        for level in up {
            var done = false
            h = computed(in: level.dtype, h) { x in
                var h = x
                for r in level.resnets {
                    h = r(h, hook)
                    if hook?.finished == true { done = true; return h }
                }
                if let u = level.upsample { h = u(h.upsampleNearest2x()) }
                return h
            }
            if done { return h }
        }
        h = normOut.silu(h, hook)
        if hook?.finished == true { return h }
        return convOut(h)
    }
}

/// Image [B, in, H, W] -> moments [B, 2*latent, ceil(H/2^(n-1)), ...] (mean | logvar).
public struct VAEEncoder {
    let convIn: Conv2d
    let down: [(dtype: DType, resnets: [VAEResnet], downsample: Conv2d?)]
    let mid: VAEMidBlock
    let normOut: VAEGroupNorm
    let convOut: Conv2d
    public let dtype: DType
    public let device: Device

    init(_ s: ModuleScope, _ c: VAEConfig) throws {
        dtype = s.dtype
        device = s.device
        let ch = c.blockOutChannels, n = ch.count
        convIn = try s.conv2d("conv_in", in: c.inChannels, out: ch[0], kernel: 3)
        var prev = ch[0]
        down = try (0..<n).map { i in
            let b = s.scope("down_blocks.\(i)")
            let resnets = try (0..<c.layersPerBlock).map { j in
                try VAEResnet(b.scope("resnets.\(j)"), c, in: j == 0 ? prev : ch[i], out: ch[i])
            }
            prev = ch[i]
            let downsample = i < n - 1
                ? try b.scope("downsamplers.0").conv2d("conv", in: ch[i], out: ch[i], kernel: 3, options: .downsampleAsymmetric) : nil
            return (b.dtype, resnets, downsample)
        }
        mid = try VAEMidBlock(s.scope("mid_block"), c, channels: ch[n - 1])
        normOut = try VAEGroupNorm(s.scope("conv_norm_out"), c, channels: ch[n - 1])
        convOut = try s.conv2d("conv_out", in: ch[n - 1], out: 2 * c.latentChannels, kernel: 3)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = convIn(x.to(dtype, device: device))
        for level in down {
            h = computed(in: level.dtype, h) { x in
                var h = x
                for r in level.resnets { h = r(h) }
                if let d = level.downsample { h = d(h) }
                return h
            }
        }
        h = mid(h)
        h = normOut.silu(h)
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

    /// Every module path with its compute dtype.
    public let moduleDTypes: [String: DType]

    /// Builds the modules from `root` (internal diffusers names); the same code plans and loads.
    init(root: ModuleScope, config: VAEConfig, parts: VAEParts) throws {
        guard [.f32, .bf16, .f16].contains(root.dtype) else { throw WeightsError("VAE compute dtype must be fp32, bf16 or fp16, not \(root.dtype)") }
        self.config = config
        self.dtype = root.dtype
        self.device = root.device
        decoder = parts.contains(.decoder) ? try VAEDecoder(root.scope("decoder"), config) : nil
        encoder = parts.contains(.encoder) ? try VAEEncoder(root.scope("encoder"), config) : nil
        moduleDTypes = root.loader.modules
    }

    /// The tensors (internal names, shapes) and module paths of `parts`, from the modules themselves.
    public static func plan(_ config: VAEConfig, parts: VAEParts, precision: ModulePrecision = .uniform(.f32)) throws -> WeightLoader {
        let loader = WeightLoader(planning: precision)
        _ = try AutoencoderKL(root: loader.root, config: config, parts: parts)
        return loader
    }

    /// Builds from validated weights, each module in its dtype (precision rules that name no
    /// module are an error listing them), moved to the placement's device once.
    public convenience init(weights: ModelWeights, config: VAEConfig, placement: ModelPlacement, parts: VAEParts = .all) throws {
        // rules may name encoder or decoder modules whichever part this run loads
        try AutoencoderKL.plan(config, parts: .all, precision: placement.precision).checkRules(model: placement.name)
        let loader = try WeightLoader(weights: weights, precision: placement.precision, device: placement.device)
        try self.init(root: loader.root, config: config, parts: parts)
    }

    public convenience init(weights: ModelWeights, config: VAEConfig, dtype: DType = .f32, device: Device = .cpu, parts: VAEParts = .all) throws {
        try self.init(weights: weights, config: config, placement: ModelPlacement(name: "vae", device: device, precision: .uniform(dtype)), parts: parts)
    }

    /// Loads a VAE from a safetensors file (diffusers or `ae.safetensors` naming, detected) or a
    /// diffusers folder (`vae/` or the model root). The configuration comes from `config`, else
    /// a `config.json` beside the weights, else the tensor shapes (with `normGroups` groups).
    /// Every expected tensor is checked for presence and shape before anything is built. The
    /// weights are cast to `dtype` and moved to `device` once; decode and encode run there.
    public static func load(path: String, config: VAEConfig? = nil, dtype: DType = .f32, device: Device = .cpu,
                            parts: VAEParts = .all, normGroups: Int = 32) throws -> AutoencoderKL {
        try load(path: path, config: config, placement: ModelPlacement(name: "vae", device: device, precision: .uniform(dtype)),
                 parts: parts, normGroups: normGroups)
    }

    public static func load(path: String, config: VAEConfig? = nil, placement: ModelPlacement,
                            parts: VAEParts = .all, normGroups: Int = 32) throws -> AutoencoderKL {
        let (file, cfg) = try open(path: path, config: config)
        return try load(source: file, config: cfg, placement: placement, parts: parts, normGroups: normGroups)
    }

    /// The weights file of a VAE path and its config.json configuration, if any.
    static func open(path: String, config: VAEConfig?) throws -> (SafeTensorsFile, VAEConfig?) {
        let weightsPath = try resolveWeightsPath(path)
        let file = try SafeTensorsFile(path: weightsPath)
        var cfg = config
        if cfg == nil {
            let json = URL(fileURLWithPath: weightsPath).deletingLastPathComponent().appendingPathComponent("config.json")
            if try VAENaming.detect(file).format == .diffusers, FileManager.default.fileExists(atPath: json.path) {
                cfg = try VAEConfig(configJSON: json)
            }
        }
        return (file, cfg)
    }

    /// The configuration of the VAE at `path` (config.json, else the tensor shapes), without
    /// reading any weight.
    public static func readConfig(path: String, normGroups: Int = 32) throws -> VAEConfig {
        let (file, cfg) = try open(path: path, config: nil)
        if let c = cfg { return c }
        return try VAENaming.inferConfig(file, layout: try VAENaming.detect(file), normGroups: normGroups)
    }

    /// Loads from any weight source; `config` nil infers it from the shapes.
    public static func load(source: WeightSource, config: VAEConfig? = nil, dtype: DType = .f32, device: Device = .cpu,
                            parts: VAEParts = .all, normGroups: Int = 32) throws -> AutoencoderKL {
        try load(source: source, config: config, placement: ModelPlacement(name: "vae", device: device, precision: .uniform(dtype)),
                 parts: parts, normGroups: normGroups)
    }

    public static func load(source: WeightSource, config: VAEConfig? = nil, placement: ModelPlacement,
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
        let weights = try ModelWeights(source: source, expected: try VAENaming.expectedTensors(cfg, parts: parts),
                                       naming: VAENaming.naming(layout.format, config: cfg, parts: parts),
                                       prefixes: [layout.prefix].filter { !$0.isEmpty },
                                       anchor: parts.contains(.decoder) ? "decoder.conv_in.weight" : "encoder.conv_in.weight")
        return try AutoencoderKL(weights: weights, config: cfg, placement: placement, parts: parts)
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
