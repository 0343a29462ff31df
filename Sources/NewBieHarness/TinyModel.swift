import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor
import NewBieText
import NewBieWeights

/// A tiny NewBie with random weights in the official Hugging Face layout (transformer/,
/// text_encoder/, clip_model/, vae/, model_index.json), so the whole pipeline runs on a fresh
/// machine without downloads. The architecture is NewBie's at toy sizes; the weights are random
/// (seeded), so the picture it makes means nothing. The tokenizers are the small ones the tests
/// commit (Tests/Fixtures/gemma/small_tokenizer.json, Tests/Fixtures/jina/tokenizer.json).
public enum TinyModel {
    /// Toy sizes of each part.
    public static let gemmaHidden = 32, gemmaLayers = 3
    public static let jinaHidden = 64, jinaLayers = 2
    /// The vocabularies of the committed small tokenizers (the random model's configs use them).
    public static let gemmaVocab = 576, jinaVocab = 306
    public static var ditConfig: NextDiTConfig {
        var c = NextDiTConfig()
        c.dim = 48; c.nHeads = 4; c.nKVHeads = 2; c.ffnHidden = 128
        c.nLayers = 2; c.nNoiseRefiner = 1; c.nContextRefiner = 1
        c.capFeatDim = gemmaHidden; c.clipTextDim = jinaHidden; c.adaLNDim = 48
        c.axesDims = [4, 4, 4]; c.axesLens = [1024, 512, 512]
        return c
    }
    public static var vaeConfig: VAEConfig {
        var c = VAEConfig()
        c.blockOutChannels = [8, 8, 16, 16]; c.layersPerBlock = 1; c.normNumGroups = 4
        return c
    }

    /// The tokenizer files the repository commits, found from this source file's location or the
    /// working directory (the repository root).
    public static func defaultTokenizers() -> (gemma: String, jina: String)? {
        let fromSource = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/Fixtures").path
        let fromCwd = FileManager.default.currentDirectoryPath + "/Tests/Fixtures"
        for root in [fromSource, fromCwd] {
            let g = root + "/gemma/small_tokenizer.json", j = root + "/jina/tokenizer.json"
            if FileManager.default.fileExists(atPath: g) && FileManager.default.fileExists(atPath: j) { return (g, j) }
        }
        return nil
    }

    /// A tiny model written once per process into `parent` (the system's temporary directory by
    /// default; the tests pass their scratch folder), in a folder named after `name`, with the
    /// committed small tokenizers: what the tests run.
    public static func writeTemporary(_ name: String, seed: UInt64, in parent: String = NSTemporaryDirectory()) throws -> String {
        guard let toks = defaultTokenizers() else {
            throw PipelineError("cannot find Tests/Fixtures (the committed small tokenizers); run from the repository root")
        }
        let d = (parent as NSString).appendingPathComponent("newbie-\(name)-\(getpid())")
        try? FileManager.default.removeItem(atPath: d)
        try write(to: d, seed: seed, gemmaTokenizer: toks.gemma, jinaTokenizer: toks.jina)
        return d
    }

    /// Writes the tiny model to `dir` (created; existing files of the layout are replaced).
    public static func write(to dir: String, seed: UInt64 = 0, gemmaTokenizer: String, jinaTokenizer: String) throws {
        let fm = FileManager.default
        for t in [gemmaTokenizer, jinaTokenizer] where !fm.fileExists(atPath: t) {
            throw PipelineError("tokenizer \(t): no such file")
        }
        try checkDestination(dir)
        do { try writeModel(to: dir, seed: seed, gemmaTokenizer: gemmaTokenizer, jinaTokenizer: jinaTokenizer) } catch let e as PipelineError {
            throw e
        } catch let e as WeightsError {
            throw PipelineError("\(dir): the tiny model was not written: \(e.message)")
        } catch {
            throw PipelineError("\(dir): the tiny model was not written: \(fileErrorText(error))")
        }
    }

    /// The folder must be new, empty, or an earlier tiny model (which is rewritten); anything else
    /// is refused so that no file of the user's is replaced.
    static func checkDestination(_ dir: String) throws {
        var st = stat()
        guard lstat(dir, &st) == 0 else {
            // a new folder: its nearest existing parent must be a folder
            var up = PathName.parent(dir)
            while !up.isEmpty && up != "/" && !FileManager.default.fileExists(atPath: up) { up = PathName.parent(up) }
            var isDir: ObjCBool = false
            if !up.isEmpty && FileManager.default.fileExists(atPath: up, isDirectory: &isDir) && !isDir.boolValue {
                throw PipelineError("\(dir): cannot create the folder: \(up) is a file, not a folder")
            }
            return
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw PipelineError("\(dir): exists and is not a folder; give a new or empty folder")
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        guard !entries.isEmpty else { return }
        let index = PathName.join(dir, "model_index.json")
        if let d = FileManager.default.contents(atPath: index), String(decoding: d, as: UTF8.self).contains("NewBie tiny random model") { return }
        throw PipelineError("\(dir): the folder is not empty and is not a tiny model written earlier; give a new or empty folder (nothing was written)")
    }

    static func fileErrorText(_ error: Error) -> String {
        let ns = error as NSError
        let path = ns.userInfo[NSFilePathErrorKey] as? String
        var reason = ns.localizedDescription
        if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain { reason = String(cString: strerror(Int32(u.code))) }
        else if ns.domain == NSPOSIXErrorDomain { reason = String(cString: strerror(Int32(ns.code))) }
        return path.map { "\($0): \(reason)" } ?? reason
    }

    static func writeModel(to dir: String, seed: UInt64, gemmaTokenizer: String, jinaTokenizer: String) throws {
        let fm = FileManager.default
        let root = URL(fileURLWithPath: dir)
        for slot in ModelSlot.allCases {
            try fm.createDirectory(at: root.appendingPathComponent(slot.folder), withIntermediateDirectories: true)
        }
        /// Random tensor for a parameter, by its role: matrices ~ N(0, 1/fan_in), biases and LoRA
        /// factors small, norm weights around 1 (Gemma's (1 + w) norms around 0). Each tensor has
        /// its own generator, seeded from the model seed and the tensor's slot and name, so the
        /// weights do not depend on the order in which the modules list their tensors.
        func random(_ slot: ModelSlot, _ name: String, _ shape: [Int], oneCentredNorms: Bool) -> Tensor {
            let n = shape.reduce(1, *)
            var rng = TorchGenerator(seed: tensorSeed(seed, slot.folder + "/" + name))
            var v = rng.randn(count: n)
            if name.contains("lora_") {
                for i in 0..<n { v[i] *= 0.02 }
            } else if shape.count >= 2 {
                let s = 1 / Float(shape.dropFirst().reduce(1, *)).squareRoot()
                for i in 0..<n { v[i] *= s }
            } else if name.hasSuffix(".bias") {
                for i in 0..<n { v[i] *= 0.02 }
            } else {
                for i in 0..<n { v[i] = (oneCentredNorms ? 1 : 0) + 0.05 * v[i] }
            }
            return Tensor(v, shape: shape)
        }
        func writeJSON(_ obj: Any, _ relative: String) throws {
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: root.appendingPathComponent(relative))
        }
        let note = "NewBie tiny random model (newbie make-tiny-model, seed \(seed)): random weights, the images mean nothing"

        // transformer/: official names, no prefix
        let dc = ditConfig
        let dit = try dc.expectedTensors().map { ($0.name, random(.dit, $0.name, $0.shape, oneCentredNorms: true)) }
        try SafeTensorsWriter.write(dit, metadata: ["note": note],
                                    to: root.appendingPathComponent("transformer/diffusion_pytorch_model.safetensors"))
        try writeJSON(dc.officialConfigJSON(extra: ["_note": note]), "transformer/config.json")

        // text_encoder/: Gemma 3 as Gemma3ForConditionalGeneration saves it (language_model.model.*)
        var gc = Gemma3TextConfig()
        // the vocabularies are the tokenizers' (576 and 306 for the committed small ones)
        gc.vocabSize = try SentencePieceBPETokenizer.load(gemmaTokenizer).vocabSize; gc.hiddenSize = gemmaHidden; gc.intermediateSize = 64
        gc.numHiddenLayers = gemmaLayers; gc.numAttentionHeads = 2; gc.numKeyValueHeads = 1; gc.headDim = 16
        gc.layerTypes = Gemma3TextConfig.layerTypes(count: gemmaLayers, pattern: 2)
        gc.queryPreAttnScalar = 16; gc.slidingWindow = 4; gc.ropeScalingGlobal = 8
        let gemma = try GemmaNaming.expected(gc, layers: gemmaLayers, finalNorm: true).map {
            ("language_model.model." + $0.name, random(.gemma, $0.name, $0.shape, oneCentredNorms: false))
        }
        try SafeTensorsWriter.write(gemma, metadata: ["note": note], to: root.appendingPathComponent("text_encoder/model.safetensors"))
        try writeJSON(gc.huggingFaceConfigJSON(extra: ["_note": note]), "text_encoder/config.json")
        try copyReplacing(gemmaTokenizer, root.appendingPathComponent("text_encoder/tokenizer.json"))

        // clip_model/: jina-clip-v2 text tower with its retrieval.query LoRA (official naming)
        let jc = JinaConfig(vocabSize: try UnigramTokenizer(path: jinaTokenizer).pieces.count, hidden: jinaHidden, layers: jinaLayers, heads: jinaHidden / 64, intermediate: 128)
        let jina = try JinaLayout.official.expected(jc).map {
            (JinaLayout.publishedName($0.name, layout: .official), random(.jina, $0.name, $0.shape, oneCentredNorms: true))
        }
        try SafeTensorsWriter.write(jina, metadata: ["note": note], to: root.appendingPathComponent("clip_model/model.safetensors"))
        try writeJSON(jc.huggingFaceConfigJSON(extra: ["_note": note]), "clip_model/config.json")
        try copyReplacing(jinaTokenizer, root.appendingPathComponent("clip_model/tokenizer.json"))

        // vae/: diffusers AutoencoderKL
        let vc = vaeConfig
        let vae = try VAENaming.expectedTensors(vc, parts: .all).map { ($0.name, random(.vae, $0.name, $0.shape, oneCentredNorms: true)) }
        try SafeTensorsWriter.write(vae, metadata: ["note": note], to: root.appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        try writeJSON(vc.diffusersConfigJSON(extra: ["_note": note]), "vae/config.json")

        try writeJSON(["_class_name": "NewbiePipeline", "_note": note,
                       "transformer": ["transformer", "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP"],
                       "text_encoder": ["text_encoder", "Gemma3ForConditionalGeneration"],
                       "tokenizer": ["text_encoder", "AutoTokenizer"],
                       "clip_model": ["clip_model", "JinaCLIPModel"], "clip_tokenizer": ["clip_model", "AutoTokenizer"],
                       "vae": ["vae", "AutoencoderKL"]] as [String: Any], "model_index.json")
    }

    static func copyReplacing(_ from: String, _ to: URL) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: to.path) { try fm.removeItem(at: to) }
        try fm.copyItem(atPath: from, toPath: to.path)
    }

    /// FNV-1a of `key` mixed into `seed` (stable across runs and platforms).
    static func tensorSeed(_ seed: UInt64, _ key: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return (seed &* 0x9e37_79b9_7f4a_7c15) ^ h
    }
}
