import Foundation
import NewBieTensor
import NewBieDiffusion
import NewBieText
import NewBieWeights

/// What `newbie inspect` says about a checkpoint beyond its tensors: which of NewBie's models it
/// holds, in which published naming, and the configuration the loaders would use (config.json
/// beside it where there is one, otherwise inferred from the tensor shapes).
public enum ModelDescription {
    public static func describe(path: String, source: WeightSource) -> [String] {
        guard let slot = ModelSlot.identify(source) else {
            return ["model: none of NewBie's models (DiT, Gemma 3, Jina CLIP v2, FLUX VAE) recognised"]
        }
        var lines = ["model: \(slot.expected) (for \(slot.option))"]
        do {
            switch slot {
            case .dit:
                guard let (naming, prefix) = NextDiTNaming.detect(source) else { break }
                let config = try NextDiTConfig.resolve(source: source, naming: naming.naming, prefix: prefix, json: configJSON(beside: path))
                lines.append("naming: \(naming.rawValue)" + (prefix.isEmpty ? "" : ", prefix \"\(prefix)\""))
                lines.append("config: \(config)")
                lines.append("parameters used by the model: \(config.parameterCount)")
            case .vae:
                let layout = try VAENaming.detect(source)
                lines.append("naming: \(layout.format)" + (layout.prefix.isEmpty ? "" : ", prefix \"\(layout.prefix)\"")
                             + ", encoder \(layout.hasEncoder ? "yes" : "no"), decoder \(layout.hasDecoder ? "yes" : "no")")
                if let cfg = configPath(beside: path) {
                    lines.append("config (\(cfg)): \(try VAEConfig(configJSON: URL(fileURLWithPath: cfg)))")
                } else {
                    lines.append("config (from shapes): \(try VAENaming.inferConfig(source, layout: layout))")
                }
            case .jina:
                let layout = try JinaLayout.detect(source)
                lines.append("naming: \(layout)" + (layout.hasLoRA ? " (LoRA adapters merged at load)" : ""))
                lines.append("config (from shapes): \(try layout.inferConfig(source))")
            case .gemma:
                let config: Gemma3TextConfig
                if let gguf = source as? GGUFFile {
                    config = try Gemma3TextConfig(gguf: gguf)
                    lines.append("naming: GGUF (llama.cpp)")
                } else if let cfg = configPath(beside: path) {
                    config = try Gemma3TextConfig(configPath: cfg)
                    lines.append("naming: Hugging Face / ComfyUI, config from \(cfg)")
                } else {
                    let prefix = (GemmaNaming.huggingFacePrefixes + [""]).first { source.tensorInfo($0 + "embed_tokens.weight") != nil } ?? ""
                    config = try Gemma3TextConfig(inferringFrom: source, prefix: prefix)
                    lines.append("naming: Hugging Face / ComfyUI" + (prefix.isEmpty ? "" : ", prefix \"\(prefix)\"") + ", config from shapes")
                }
                lines.append("config: \(config)")
            }
        } catch {
            lines.append("config: cannot be worked out: \(error)")
        }
        return lines
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
