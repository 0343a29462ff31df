import Foundation
import NewBieTensor
import NewBieWeights

/// Configuration of a FLUX-style `AutoencoderKL`: the fields of diffusers'
/// `vae/config.json` that change the computation. Defaults are FLUX.1-dev's.
public struct VAEConfig: Sendable, Equatable {
    public var inChannels = 3
    public var outChannels = 3
    public var latentChannels = 16
    /// Channels of encoder levels 0...n-1 (the decoder visits them in reverse).
    public var blockOutChannels = [128, 256, 512, 512]
    /// ResNets per encoder level; decoder levels have one more.
    public var layersPerBlock = 2
    public var normNumGroups = 32
    public var normEps: Float = 1e-6
    public var midBlockAddAttention = true
    /// FLUX uses neither; other VAEs (SD 1.x/XL) do, and are refused with a clear error.
    public var useQuantConv = false
    public var usePostQuantConv = false
    /// NewBie's latent scaling: decode `x / scaling + shift`, encode `(mean - shift) * scaling`.
    public var scalingFactor: Float = 0.3611
    public var shiftFactor: Float = 0.1159

    public init() {}

    public static let flux1Dev = VAEConfig()

    public var levels: Int { blockOutChannels.count }
    /// Pixels per latent cell along each axis (2^(levels-1); 8 for FLUX).
    public var downscale: Int { 1 << (levels - 1) }

    /// From a diffusers `config.json` (unknown keys are ignored; missing keys keep the defaults).
    public init(configJSON url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw WeightsError("\(url.path): cannot read VAE config: \(error.localizedDescription)")
        }
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw WeightsError("\(url.path): not a JSON object")
        }
        func int(_ k: String) throws -> Int? {
            guard let v = obj[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, let i = Int(exactly: n.doubleValue) else {
                throw WeightsError("\(url.path): \"\(k)\" should be an integer, found \(v)")
            }
            return i
        }
        func float(_ k: String) throws -> Float? {
            guard let v = obj[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !JSONNumber.isBoolean(v) else { throw WeightsError("\(url.path): \"\(k)\" should be a number, found \(v)") }
            return n.floatValue
        }
        func bool(_ k: String) throws -> Bool? {
            guard let v = obj[k], !(v is NSNull) else { return nil }
            guard let b = v as? Bool else { throw WeightsError("\(url.path): \"\(k)\" should be true or false, found \(v)") }
            return b
        }
        var c = VAEConfig()
        if let v = try int("in_channels") { c.inChannels = v }
        if let v = try int("out_channels") { c.outChannels = v }
        if let v = try int("latent_channels") { c.latentChannels = v }
        if let v = obj["block_out_channels"] {
            guard let a = v as? [NSNumber] else { throw WeightsError("\(url.path): \"block_out_channels\" should be a list of integers") }
            c.blockOutChannels = a.map { $0.intValue }
        }
        if let v = try int("layers_per_block") { c.layersPerBlock = v }
        if let v = try int("norm_num_groups") { c.normNumGroups = v }
        if let v = try bool("mid_block_add_attention") { c.midBlockAddAttention = v }
        if let v = try bool("use_quant_conv") { c.useQuantConv = v }
        if let v = try bool("use_post_quant_conv") { c.usePostQuantConv = v }
        if let v = try float("scaling_factor") { c.scalingFactor = v }
        if let v = try float("shift_factor") { c.shiftFactor = v }
        if let act = obj["act_fn"] as? String, act != "silu" {
            throw WeightsError("\(url.path): act_fn \"\(act)\" is not supported (the FLUX VAE uses silu)")
        }
        for key in ["down_block_types", "up_block_types"] {
            if let types = obj[key] as? [String] {
                let want = key == "down_block_types" ? "DownEncoderBlock2D" : "UpDecoderBlock2D"
                if let bad = types.first(where: { $0 != want }) {
                    throw WeightsError("\(url.path): \(key) contains \"\(bad)\"; only \(want) is supported")
                }
                if types.count != c.blockOutChannels.count {
                    throw WeightsError("\(url.path): \(key) has \(types.count) entries but block_out_channels has \(c.blockOutChannels.count)")
                }
            }
        }
        try c.validate(source: url.path)
        self = c
    }

    /// diffusers' `config.json` for this configuration (what `init(configJSON:)` reads back).
    public func diffusersConfigJSON(extra: [String: Any] = [:]) -> [String: Any] {
        ["_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": blockOutChannels,
         "down_block_types": Array(repeating: "DownEncoderBlock2D", count: levels),
         "up_block_types": Array(repeating: "UpDecoderBlock2D", count: levels),
         "in_channels": inChannels, "out_channels": outChannels, "latent_channels": latentChannels,
         "layers_per_block": layersPerBlock, "norm_num_groups": normNumGroups,
         "mid_block_add_attention": midBlockAddAttention, "scaling_factor": JSONNumber.decimal(scalingFactor),
         "shift_factor": JSONNumber.decimal(shiftFactor), "use_quant_conv": useQuantConv,
         "use_post_quant_conv": usePostQuantConv].merging(extra) { $1 }
    }

    /// Checks the configuration can be built (group counts divide channels, no quant convs ...).
    public func validate(source: String = "VAE config") throws {
        var problems: [String] = []
        if blockOutChannels.isEmpty { problems.append("block_out_channels is empty") }
        if blockOutChannels.contains(where: { $0 <= 0 }) { problems.append("block_out_channels \(blockOutChannels) has a non-positive entry") }
        if layersPerBlock < 1 { problems.append("layers_per_block \(layersPerBlock) < 1") }
        if normNumGroups < 1 || blockOutChannels.contains(where: { $0 % Swift.max(normNumGroups, 1) != 0 }) {
            problems.append("norm_num_groups \(normNumGroups) does not divide every entry of block_out_channels \(blockOutChannels)")
        }
        if inChannels < 1 || outChannels < 1 || latentChannels < 1 { problems.append("channel counts must be positive") }
        if useQuantConv || usePostQuantConv {
            problems.append("use_quant_conv / use_post_quant_conv are not supported (the FLUX VAE has neither)")
        }
        if scalingFactor == 0 || !scalingFactor.isFinite { problems.append("scaling_factor \(scalingFactor) is not usable") }
        if !problems.isEmpty {
            throw WeightsError("\(source): unsupported VAE configuration:\n  " + problems.joined(separator: "\n  "))
        }
    }
}
