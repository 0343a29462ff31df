import Foundation
import NewBieTensor
import NewBieDiffusion
import NewBieText
import NewBieWeights

/// An error of the pipeline's inputs (settings, model files, stage files), with a message meant
/// for the user: it names the option or slot and what was expected.
public struct PipelineError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// The four model parts of NewBie, each a "slot" the user fills with a path.
public enum ModelSlot: String, CaseIterable, Sendable {
    case dit, gemma, jina, vae

    /// The command-line option of the slot.
    public var option: String { "--\(rawValue)" }

    /// The sub-folder of the official Hugging Face layout (`NewBie-AI/NewBie-image-Exp0.1`).
    public var folder: String {
        switch self {
        case .dit: return "transformer"
        case .gemma: return "text_encoder"
        case .jina: return "clip_model"
        case .vae: return "vae"
        }
    }

    /// What the slot expects, in words.
    public var expected: String {
        switch self {
        case .dit: return "the NextDiT diffusion transformer (official, ComfyUI or diffusers naming)"
        case .gemma: return "the Gemma 3 text encoder (Hugging Face folder or .safetensors, or a .gguf)"
        case .jina: return "the Jina CLIP v2 text tower (jina-clip-v2 or ComfyUI naming)"
        case .vae: return "the FLUX VAE (diffusers or ae.safetensors naming)"
        }
    }

    /// What the tensors of a checkpoint are, judged by the anchor tensors of each model; nil when
    /// none matches. One loop over the formats (`CheckpointFormats.all`).
    public static func identify(_ source: WeightSource) -> ModelSlot? {
        CheckpointFormats.identify(source)?.slot
    }

    /// Opens `path` and checks that it holds this slot's model; the error names the slot, what it
    /// expected and what the file holds instead.
    public func check(_ path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw PipelineError("\(option) \(path): no such file or folder (expected \(expected))")
        }
        let source: WeightSource
        do {
            // the VAE loader also accepts a model root holding vae/
            if self == .vae, isDir.boolValue,
               FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("vae")) {
                source = try openWeights(path: (path as NSString).appendingPathComponent("vae"))
            } else {
                source = try openWeights(path: path)
            }
        } catch {
            throw PipelineError("\(option) \(path): cannot be read as a checkpoint (expected \(expected)): \(error)")
        }
        guard let found = ModelSlot.identify(source) else {
            throw PipelineError("\(option) \(path): holds none of NewBie's models (\(source.tensorNames.count) tensors, e.g. \(source.tensorNames.sorted().prefix(3).joined(separator: ", "))); expected \(expected)")
        }
        guard found == self else {
            throw PipelineError("\(option) \(path): this is \(found.expected), not \(expected); give it to \(found.option) instead")
        }
    }
}

/// Where each model part lives. Built from `--model DIR` (the official Hugging Face layout:
/// transformer/, text_encoder/, clip_model/, vae/) and/or one path per part, which wins.
public struct ModelPaths: Sendable, Equatable {
    public var dit: String?
    public var gemma: String?
    public var gemmaTokenizer: String?
    public var jina: String?
    public var jinaTokenizer: String?
    public var vae: String?

    public init(dit: String? = nil, gemma: String? = nil, gemmaTokenizer: String? = nil, jina: String? = nil,
                jinaTokenizer: String? = nil, vae: String? = nil) {
        self.dit = dit; self.gemma = gemma; self.gemmaTokenizer = gemmaTokenizer
        self.jina = jina; self.jinaTokenizer = jinaTokenizer; self.vae = vae
    }

    /// Per-part paths, with the parts not given taken from `root` in the official layout (only
    /// where that sub-folder exists, so a missing part is reported by `require`).
    public static func resolve(root: String?, dit: String? = nil, gemma: String? = nil, gemmaTokenizer: String? = nil,
                               jina: String? = nil, jinaTokenizer: String? = nil, vae: String? = nil) throws -> ModelPaths {
        var p = ModelPaths(dit: dit, gemma: gemma, gemmaTokenizer: gemmaTokenizer, jina: jina, jinaTokenizer: jinaTokenizer, vae: vae)
        guard let root = root else { return p }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDir), isDir.boolValue else {
            throw PipelineError("--model \(root): no such folder (expected the official layout: transformer/, text_encoder/, clip_model/, vae/)")
        }
        func sub(_ slot: ModelSlot) -> String? {
            let s = (root as NSString).appendingPathComponent(slot.folder)
            return FileManager.default.fileExists(atPath: s) ? s : nil
        }
        p.dit = p.dit ?? sub(.dit)
        p.gemma = p.gemma ?? sub(.gemma)
        p.jina = p.jina ?? sub(.jina)
        p.vae = p.vae ?? sub(.vae)
        if p.gemmaTokenizer == nil {
            let t = (root as NSString).appendingPathComponent("tokenizer/tokenizer.json")
            if FileManager.default.fileExists(atPath: t) { p.gemmaTokenizer = t }
        }
        p.root = root
        return p
    }

    /// The `--model` folder these paths came from, if any (for messages).
    public var root: String?

    public func path(_ slot: ModelSlot) -> String? {
        switch slot {
        case .dit: return dit
        case .gemma: return gemma
        case .jina: return jina
        case .vae: return vae
        }
    }

    /// The path of a part the run needs, checked to hold that part.
    public func require(_ slot: ModelSlot) throws -> String {
        guard let p = path(slot) else {
            let where_ = root.map { "\(($0 as NSString).appendingPathComponent(slot.folder)) does not exist; " } ?? ""
            throw PipelineError("missing model part: \(slot.expected) (slot \(slot.option)): \(where_)give \(slot.option) PATH or --model DIR with \(slot.folder)/ inside")
        }
        try slot.check(p)
        return p
    }

    /// Gemma's tokenizer: the explicit one, else tokenizer.json in the Gemma folder / beside the
    /// file / in ../tokenizer/, else the GGUF's own vocabulary.
    public func gemmaTokenizerPath(gemma: String) throws -> String {
        if let t = gemmaTokenizer {
            guard FileManager.default.fileExists(atPath: t) else { throw PipelineError("--gemma-tokenizer \(t): no such file") }
            return t
        }
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: gemma, isDirectory: &isDir)
        let folder = isDir.boolValue ? gemma : PathName.parent(gemma)
        let candidates = gemma.hasSuffix(".gguf") ? [gemma] : [
            (folder as NSString).appendingPathComponent("tokenizer.json"),
            (PathName.parent(folder) as NSString).appendingPathComponent("tokenizer/tokenizer.json"),
        ]
        guard let t = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw PipelineError("no Gemma tokenizer found (looked for \(candidates.joined(separator: ", "))); give --gemma-tokenizer PATH (tokenizer.json or a Gemma .gguf)")
        }
        return t
    }

    /// Jina's XLM-R tokenizer: the explicit one, else tokenizer.json beside the checkpoint.
    public func jinaTokenizerPath(jina: String) throws -> String {
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: jina, isDirectory: &isDir)
        let folder = isDir.boolValue ? jina : PathName.parent(jina)
        let t = jinaTokenizer ?? (folder as NSString).appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: t) else {
            throw PipelineError("no XLM-R tokenizer at \(t); give --jina-tokenizer PATH (jina-clip-v2's tokenizer.json)")
        }
        return t
    }
}
