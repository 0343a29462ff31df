import Foundation
import NewBieTensor
import NewBieWeights

/// Which half of the autoencoder to load.
public struct VAEParts: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let decoder = VAEParts(rawValue: 1)
    public static let encoder = VAEParts(rawValue: 2)
    public static let all: VAEParts = [.decoder, .encoder]
}

/// The published namings of the FLUX VAE.
public enum VAECheckpointFormat: String, Sendable {
    /// diffusers `AutoencoderKL` (`vae/diffusion_pytorch_model.safetensors`); also our internal naming.
    case diffusers
    /// Black Forest Labs' `ae.safetensors` (what ComfyUI users have).
    case ae
}

/// What a weight file holds: its naming, the file-level prefix and which halves are present.
public struct VAECheckpointLayout: Sendable, Equatable {
    public var format: VAECheckpointFormat
    public var prefix: String
    public var hasEncoder: Bool
    public var hasDecoder: Bool
    /// Highest level index + 1 seen in the names (0 when none).
    public var levels: Int
    /// ResNets in encoder level 0 (or decoder level 0 minus one); 0 when unknown.
    public var layersPerBlock: Int
}

public enum VAENaming {
    /// File-level prefixes under which single-file checkpoints keep the VAE.
    public static let prefixes = ["", "vae.", "first_stage_model."]

    /// Every tensor the model expects for `parts`, under internal (diffusers) names: what its
    /// modules ask for when planned.
    public static func expectedTensors(_ c: VAEConfig, parts: VAEParts) throws -> [TensorSpec] {
        try AutoencoderKL.plan(c, parts: parts).requested
    }

    /// The `ae.safetensors` naming as a table of (internal prefix, published prefix) pairs, longest
    /// match wins; `conv_shortcut` is `nin_shortcut` everywhere. Decoder levels are reversed:
    /// diffusers `up_blocks.j` is BFL `up.(levels-1-j)`.
    public static func aeTable(levels: Int, layersPerBlock: Int) -> [(String, String)] {
        var t: [(String, String)] = []
        for part in ["encoder", "decoder"] {
            t += [
                ("\(part).conv_in.", "\(part).conv_in."),
                ("\(part).conv_out.", "\(part).conv_out."),
                ("\(part).conv_norm_out.", "\(part).norm_out."),
                ("\(part).mid_block.resnets.0.", "\(part).mid.block_1."),
                ("\(part).mid_block.resnets.1.", "\(part).mid.block_2."),
                ("\(part).mid_block.attentions.0.group_norm.", "\(part).mid.attn_1.norm."),
                ("\(part).mid_block.attentions.0.to_q.", "\(part).mid.attn_1.q."),
                ("\(part).mid_block.attentions.0.to_k.", "\(part).mid.attn_1.k."),
                ("\(part).mid_block.attentions.0.to_v.", "\(part).mid.attn_1.v."),
                ("\(part).mid_block.attentions.0.to_out.0.", "\(part).mid.attn_1.proj_out."),
            ]
        }
        for i in 0..<levels {
            for j in 0..<layersPerBlock {
                t.append(("encoder.down_blocks.\(i).resnets.\(j).", "encoder.down.\(i).block.\(j)."))
            }
            t.append(("encoder.down_blocks.\(i).downsamplers.0.conv.", "encoder.down.\(i).downsample.conv."))
            let k = levels - 1 - i
            for r in 0...layersPerBlock {
                t.append(("decoder.up_blocks.\(i).resnets.\(r).", "decoder.up.\(k).block.\(r)."))
            }
            t.append(("decoder.up_blocks.\(i).upsamplers.0.conv.", "decoder.up.\(k).upsample.conv."))
        }
        return t
    }

    /// The published name of an internal name under `format` (`table` from `aeTable` for `.ae`).
    static func publishedName(_ internalName: String, format: VAECheckpointFormat, table: [(String, String)]) -> String {
        guard format == .ae else { return internalName }
        var best: (String, String)?
        for entry in table where internalName.hasPrefix(entry.0) {
            if best == nil || entry.0.count > best!.0.count { best = entry }
        }
        guard let (from, to) = best else { return internalName }
        var name = to + internalName.dropFirst(from.count)
        name = name.replacingOccurrences(of: "conv_shortcut.", with: "nin_shortcut.")
        return name
    }

    /// The naming (recipes over published names) for a configuration, loading `parts`.
    public static func naming(_ format: VAECheckpointFormat, config c: VAEConfig, parts: VAEParts) -> Naming {
        let specs = (try? expectedTensors(c, parts: parts)) ?? []
        let table = aeTable(levels: c.levels, layersPerBlock: c.layersPerBlock)
        var recipes: [String: WeightRecipe] = [:]
        for s in specs {
            let published = publishedName(s.name, format: format, table: table)
            // BFL keeps the attention projections as 1x1 convolutions [C, C, 1, 1].
            if format == .ae && s.shape.count == 2 && s.name.contains(".attentions.0.") {
                recipes[s.name] = .reshaped(published, s.shape)
            } else {
                recipes[s.name] = .tensor(published)
            }
        }
        let frozen = recipes
        let skipEncoder = !parts.contains(.encoder), skipDecoder = !parts.contains(.decoder)
        return Naming(
            name: format == .ae ? "FLUX ae.safetensors" : "diffusers AutoencoderKL",
            recipe: { frozen[$0] ?? .tensor($0) },
            ignored: { n in (skipEncoder && n.hasPrefix("encoder.")) || (skipDecoder && n.hasPrefix("decoder.")) })
    }

    /// Finds the naming, prefix and halves present in a weight file.
    public static func detect(_ source: WeightSource) throws -> VAECheckpointLayout {
        let names = source.tensorNames
        let set = Set(names)
        for p in prefixes {
            let enc = set.contains(p + "encoder.conv_in.weight"), dec = set.contains(p + "decoder.conv_in.weight")
            guard enc || dec else { continue }
            let isAE = names.contains { $0.hasPrefix(p + "decoder.mid.") || $0.hasPrefix(p + "encoder.mid.") }
            let isDiffusers = names.contains { $0.hasPrefix(p + "decoder.mid_block.") || $0.hasPrefix(p + "encoder.mid_block.") }
            guard isAE != isDiffusers else {
                throw WeightsError("\(source.sourceDescription): cannot tell the VAE naming: expected either diffusers names (decoder.mid_block.*) or FLUX ae.safetensors names (decoder.mid.*)" + (p.isEmpty ? "" : " under prefix \"\(p)\""))
            }
            let format: VAECheckpointFormat = isAE ? .ae : .diffusers
            // Level and ResNet counts, from the names alone.
            let (encLevel, decLevel) = isAE ? ("encoder.down.", "decoder.up.") : ("encoder.down_blocks.", "decoder.up_blocks.")
            let block = isAE ? ".block." : ".resnets."
            var levels = 0
            var encResnets = Set<Int>(), decResnets = Set<Int>()
            for n in names where n.hasPrefix(p) {
                let local = n.dropFirst(p.count)
                for (lp, isEnc) in [(encLevel, true), (decLevel, false)] where local.hasPrefix(lp) {
                    let rest = local.dropFirst(lp.count)
                    guard let level = Int(rest.prefix { $0.isNumber }) else { continue }
                    levels = Swift.max(levels, level + 1)
                    let afterLevel = rest.drop { $0.isNumber }
                    // every level has the same ResNet count; level 0 is present in both namings
                    if afterLevel.hasPrefix(block), let r = Int(afterLevel.dropFirst(block.count).prefix { $0.isNumber }) {
                        if isEnc && level == 0 { encResnets.insert(r) }
                        if !isEnc && level == 0 { decResnets.insert(r) }
                    }
                }
            }
            let layers = !encResnets.isEmpty ? encResnets.count : Swift.max(decResnets.count - 1, 0)
            return VAECheckpointLayout(format: format, prefix: p, hasEncoder: enc, hasDecoder: dec, levels: levels, layersPerBlock: layers)
        }
        throw WeightsError("\(source.sourceDescription): no VAE found: none of encoder.conv_in.weight / decoder.conv_in.weight exists" +
                           " (prefixes tried: \(prefixes.map { "\"\($0)\"" }.joined(separator: ", ")))")
    }

    /// The configuration implied by the tensor shapes. Group count and scaling are not stored in
    /// the weights: they come from `normGroups` (FLUX: 32) and `template`.
    public static func inferConfig(_ source: WeightSource, layout: VAECheckpointLayout, normGroups: Int = 32,
                                   template: VAEConfig = .flux1Dev) throws -> VAEConfig {
        guard layout.levels > 0, layout.layersPerBlock > 0 else {
            throw WeightsError("\(source.sourceDescription): cannot infer the VAE structure (no down/up levels found)")
        }
        let table = aeTable(levels: layout.levels, layersPerBlock: layout.layersPerBlock)
        func shape(_ internalName: String) -> [Int]? {
            source.tensorInfo(layout.prefix + publishedName(internalName, format: layout.format, table: table))?.shape
        }
        func need(_ internalName: String, rank: Int) throws -> [Int] {
            guard let s = shape(internalName), s.count == rank else {
                let published = layout.prefix + publishedName(internalName, format: layout.format, table: table)
                throw WeightsError("\(source.sourceDescription): cannot infer the VAE configuration: \(published) is missing or not of rank \(rank)")
            }
            return s
        }
        var c = template
        c.normNumGroups = normGroups
        c.layersPerBlock = layout.layersPerBlock
        c.useQuantConv = false
        c.usePostQuantConv = false
        let n = layout.levels
        if layout.hasDecoder {
            c.latentChannels = try need("decoder.conv_in.weight", rank: 4)[1]
            c.outChannels = try need("decoder.conv_out.weight", rank: 4)[0]
            c.blockOutChannels = try (0..<n).map { j in try need("decoder.up_blocks.\(j).resnets.0.conv1.weight", rank: 4)[0] }.reversed()
            c.midBlockAddAttention = shape("decoder.mid_block.attentions.0.to_q.weight") != nil
        }
        if layout.hasEncoder {
            c.inChannels = try need("encoder.conv_in.weight", rank: 4)[1]
            let outs = try (0..<n).map { i in try need("encoder.down_blocks.\(i).resnets.0.conv1.weight", rank: 4)[0] }
            let latent = try need("encoder.conv_out.weight", rank: 4)[0] / 2
            if layout.hasDecoder && (outs != c.blockOutChannels || latent != c.latentChannels) {
                throw WeightsError("\(source.sourceDescription): encoder (channels \(outs), latent \(latent)) and decoder (channels \(c.blockOutChannels), latent \(c.latentChannels)) do not match")
            }
            c.blockOutChannels = outs
            c.latentChannels = latent
            c.midBlockAddAttention = shape("encoder.mid_block.attentions.0.to_q.weight") != nil
        }
        try c.validate(source: source.sourceDescription)
        return c
    }
}
