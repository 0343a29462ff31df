import Foundation
import NewBieDiffusion
import NewBieTensor
import NewBieText
import NewBieWeights

/// How one of NewBie's models recognises its checkpoints (by anchor tensors, headers only) and
/// describes them for `newbie inspect` (naming, configuration). Slot checks, `inspect` and error
/// messages all go through the list `CheckpointFormats.all`, so a new format is one more type.
public protocol CheckpointFormat {
    static var slot: ModelSlot { get }
    static func recognises(_ source: WeightSource) -> Bool
    /// The naming and the configuration the loader would use (config.json beside `path` where
    /// there is one, otherwise inferred from the tensor shapes).
    static func describe(path: String, source: WeightSource) throws -> [String]
}

public enum CheckpointFormats {
    /// In the order they are tried; the DiT first (its anchors are the most specific).
    public static let all: [any CheckpointFormat.Type] = [DiTCheckpoint.self, VAECheckpoint.self, JinaCheckpoint.self, GemmaCheckpoint.self]

    public static func identify(_ source: WeightSource) -> (any CheckpointFormat.Type)? {
        all.first { $0.recognises(source) }
    }

    /// `config.json` in the folder `path` names, or beside the file it names.
    static func configPath(beside path: String) -> String? {
        var isDir: ObjCBool = false
        FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        let dir = isDir.boolValue ? path : PathName.parent(path)
        let cfg = (dir as NSString).appendingPathComponent("config.json")
        return FileManager.default.fileExists(atPath: cfg) ? cfg : nil
    }

    static func configJSON(beside path: String) -> [String: Any]? {
        guard let p = configPath(beside: path), let data = FileManager.default.contents(atPath: p) else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }
}

/// NextDiT in the official, ComfyUI or diffusers naming (optionally under a prefix).
public enum DiTCheckpoint: CheckpointFormat {
    public static let slot = ModelSlot.dit
    public static func recognises(_ source: WeightSource) -> Bool { NextDiTNaming.detect(source) != nil }
    public static func describe(path: String, source: WeightSource) throws -> [String] {
        guard let (naming, prefix) = NextDiTNaming.detect(source) else { return [] }
        let config = try NextDiTConfig.resolve(source: source, naming: naming.naming, prefix: prefix,
                                               json: CheckpointFormats.configJSON(beside: path))
        return ["naming: \(naming.rawValue)" + (prefix.isEmpty ? "" : ", prefix \"\(prefix)\""),
                "config: \(config)",
                "parameters used by the model: \(config.parameterCount)"]
    }
}

/// The FLUX VAE in diffusers or `ae.safetensors` naming, encoder and/or decoder.
public enum VAECheckpoint: CheckpointFormat {
    public static let slot = ModelSlot.vae
    public static func recognises(_ source: WeightSource) -> Bool { (try? VAENaming.detect(source)) != nil }
    public static func describe(path: String, source: WeightSource) throws -> [String] {
        let layout = try VAENaming.detect(source)
        var lines = ["naming: \(layout.format)" + (layout.prefix.isEmpty ? "" : ", prefix \"\(layout.prefix)\"")
                     + ", encoder \(layout.hasEncoder ? "yes" : "no"), decoder \(layout.hasDecoder ? "yes" : "no")"]
        if let cfg = CheckpointFormats.configPath(beside: path) {
            lines.append("config (\(cfg)): \(try VAEConfig(configJSON: URL(fileURLWithPath: cfg)))")
        } else {
            lines.append("config (from shapes): \(try VAENaming.inferConfig(source, layout: layout))")
        }
        return lines
    }
}

/// The Jina CLIP v2 text tower, as jina-clip-v2 ships it or as ComfyUI repacks it.
public enum JinaCheckpoint: CheckpointFormat {
    public static let slot = ModelSlot.jina
    public static func recognises(_ source: WeightSource) -> Bool { (try? JinaLayout.detect(source)) != nil }
    public static func describe(path: String, source: WeightSource) throws -> [String] {
        let layout = try JinaLayout.detect(source)
        return ["naming: \(layout)" + (layout.hasLoRA ? " (LoRA adapters merged at load)" : ""),
                "config (from shapes): \(try layout.inferConfig(source))"]
    }
}

/// Gemma 3: a GGUF (llama.cpp naming), or safetensors in Hugging Face / ComfyUI naming.
public enum GemmaCheckpoint: CheckpointFormat {
    public static let slot = ModelSlot.gemma
    public static func recognises(_ source: WeightSource) -> Bool {
        if source is GGUFFile { return source.tensorInfo("token_embd.weight") != nil }
        return huggingFacePrefix(source) != nil
    }

    /// The prefix under which a Hugging Face / ComfyUI Gemma 3 keeps its layers (q_norm marks Gemma 3).
    static func huggingFacePrefix(_ source: WeightSource) -> String? {
        (GemmaNaming.huggingFacePrefixes + [""]).first {
            source.tensorInfo($0 + "embed_tokens.weight") != nil && source.tensorInfo($0 + "layers.0.self_attn.q_norm.weight") != nil
        }
    }

    public static func describe(path: String, source: WeightSource) throws -> [String] {
        let config: Gemma3TextConfig
        var lines: [String] = []
        if let gguf = source as? GGUFFile {
            config = try Gemma3TextConfig(gguf: gguf)
            lines.append("naming: GGUF (llama.cpp)")
        } else if let cfg = CheckpointFormats.configPath(beside: path) {
            config = try Gemma3TextConfig(configPath: cfg)
            lines.append("naming: Hugging Face / ComfyUI, config from \(cfg)")
        } else {
            let prefix = huggingFacePrefix(source) ?? ""
            config = try Gemma3TextConfig(inferringFrom: source, prefix: prefix)
            lines.append("naming: Hugging Face / ComfyUI" + (prefix.isEmpty ? "" : ", prefix \"\(prefix)\"") + ", config from shapes")
        }
        lines.append("config: \(config)")
        return lines
    }
}

/// What `newbie inspect` says about a checkpoint beyond its tensors: which of NewBie's models it
/// holds, in which published naming, and the configuration the loaders would use.
public enum ModelDescription {
    public static func describe(path: String, source: WeightSource) -> [String] {
        guard let format = CheckpointFormats.identify(source) else {
            return ["model: none of NewBie's models (DiT, Gemma 3, Jina CLIP v2, FLUX VAE) recognised"]
        }
        var lines = ["model: \(format.slot.expected) (for \(format.slot.option))"]
        do { lines += try format.describe(path: path, source: source) } catch {
            lines.append("config: cannot be worked out: \(error)")
        }
        return lines
    }
}
