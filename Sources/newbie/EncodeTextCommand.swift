import ArgumentParser
import Foundation
import NewBieCUDA
import NewBiePipeline
import NewBieTensor
import NewBieText
import NewBieWeights

/// `newbie encode-text`: runs the text encoders alone and writes their outputs as safetensors.
/// `--gemma PATH`: the Gemma 3 text encoder (hidden_states[-2]), fed the system prompt
/// (if any) + each prompt, tokenized like the official code (<bos>, right padding to a multiple
/// of 8, truncation at 512).
/// `--jina PATH`: the Jina CLIP v2 text tower (pooled (B, 1024) features), fed the raw
/// prompts (no system prompt).
struct EncodeTextCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode-text",
        abstract: "Encode prompts with the text encoders and write the conditioning tensors.")

    @Option(name: .customLong("gemma"), help: "Gemma 3 checkpoint: a Hugging Face folder (config.json + safetensors), a .safetensors file (e.g. ComfyUI gemma_3_4b_it_bf16.safetensors) or a .gguf file.")
    var gemmaPath: String?

    @Option(name: [.customLong("gemma-tokenizer"), .customLong("tokenizer")], help: "Gemma tokenizer.json, or a .gguf whose vocabulary to use (default: tokenizer.json beside the checkpoint or in ../tokenizer/, else the GGUF's own).")
    var gemmaTokenizer: String?

    @Option(name: .customLong("system-prompt"), help: "Prepended to every non-empty Gemma prompt: none, xml, text (the official training prefixes for XML and for tag/text prompts) or a literal string.")
    var systemPrompt = "none"

    @Option(name: .customLong("gemma-max-length"), help: "Gemma: truncate to this many tokens including <bos> (official: 512).")
    var gemmaMaxLength = 512

    @Option(name: .customLong("jina"), help: "Jina CLIP v2 checkpoint: jina-clip-v2 .safetensors (or its folder), or ComfyUI jina_clip_v2_bf16.safetensors.")
    var jinaPath: String?

    @Option(name: .customLong("jina-tokenizer"), help: "XLM-R tokenizer.json (default: tokenizer.json next to the Jina checkpoint).")
    var jinaTokenizer: String?

    @Option(name: .customLong("jina-head-dim"), help: "Attention head size of the Jina tower (heads = hidden / this; jina-clip-v2: 64).")
    var jinaHeadDim = 64

    @Option(name: .customLong("jina-runs"), help: "Run the Jina forward this many times and report the median (timing; the first run on a GPU compiles kernels).")
    var jinaRuns = 1

    @Option(name: .customLong("prompt"), help: "A prompt (repeat for a batch; \"\" is the unconditional prompt).")
    var prompts: [String] = []

    @Option(help: "Read prompts from a file, one per line.")
    var promptFile: String?

    @Option(help: "Truncate each prompt to this many tokens including <s> and </s> (NewBie official: 2048).")
    var maxLength = 2048

    @OptionGroup var deviceOptions: DeviceOptions

    @Option(name: [.short, .long, .customLong("out")], help: "Output .safetensors: gemma_hidden [B, L, hidden] (fp32), gemma_input_ids and gemma_mask [B, L] (i32); jina_pooled [B, hidden] (fp32) and jina_input_ids.")
    var output: String

    func run() throws {
        guard gemmaPath != nil || jinaPath != nil else {
            throw ValidationError("nothing to encode: give --gemma PATH and/or --jina PATH")
        }
        try checkOutput(output)
        let options = try deviceOptions.stageOptions()
        let gemmaPlacement = try options.open(.gemma), jinaPlacement = try options.open(.jina)
        var texts = prompts
        if let f = promptFile {
            let s = try readTextFile(f, option: "--prompt-file")
            texts += s.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
        }
        guard !texts.isEmpty else { throw ValidationError("no prompt: give --prompt TEXT (repeatable) or --prompt-file") }
        guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }

        var tensors: [(String, Tensor)] = []
        var metadata = ["prompts": String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self),
                        "precision": options.placement.precisionSpec]
        if let gemma = gemmaPath {
            let (t, m) = try encodeGemma(gemma, texts: texts, placement: gemmaPlacement)
            tensors += t
            metadata.merge(m) { $1 }
        }
        if let jina = jinaPath {
            let (t, m) = try encodeJina(jina, texts: texts, placement: jinaPlacement)
            tensors += t
            metadata.merge(m) { $1 }
        }
        try SafeTensorsWriter.write(tensors, metadata: metadata, toPath: output)
        log("wrote \(output == "-" ? "standard output" : output): " + tensors.map { "\($0.0) \($0.1.shape)" }.joined(separator: ", "))
    }

    static let systemPrompts = [
        "xml": "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> ",
        "text": "You are an assistant designed to generate high-quality anime images with the highest degree of image-text alignment based on textual prompts. <Prompt Start> ",
    ]

    func encodeGemma(_ path: String, texts: [String], placement: ModelPlacement) throws -> ([(String, Tensor)], [String: String]) {
        guard gemmaMaxLength >= 1 else { throw ValidationError("--gemma-max-length must be at least 1") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw PipelineError("--gemma \(path): no such file or folder") }
        let folder = isDir.boolValue ? path : URL(fileURLWithPath: path).deletingLastPathComponent().path
        // a GGUF carries its own vocabulary; otherwise look beside the checkpoint
        let candidates = path.hasSuffix(".gguf") ? [path] : [
            (folder as NSString).appendingPathComponent("tokenizer.json"),
            (PathName.parent(folder) as NSString).appendingPathComponent("tokenizer/tokenizer.json"),
        ]
        guard let tokPath = gemmaTokenizer ?? candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw PipelineError("no Gemma tokenizer found (looked for \(candidates.joined(separator: ", "))); give --gemma-tokenizer PATH (tokenizer.json or a Gemma .gguf)")
        }
        let system: String
        switch systemPrompt {
        case "none", "": system = ""
        default: system = EncodeTextCommand.systemPrompts[systemPrompt] ?? systemPrompt
        }
        let inputs = texts.map { $0.isEmpty ? "" : system + $0 }

        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        var t0 = clock()
        let tokenizer = try SentencePieceBPETokenizer.load(tokPath)
        let encoder = try GemmaTextEncoder.load(path: path, placement: placement)
        let c = encoder.config
        log(String(format: "gemma: %d layers (running %d), hidden %d, %d/%d heads, vocab %d, %@; loaded in %.2f s (tokenizer %@)",
                   c.numHiddenLayers, encoder.hiddenStateIndex, c.hiddenSize, c.numAttentionHeads, c.numKeyValueHeads,
                   c.vocabSize, placement.precision.description, clock() - t0, tokPath))
        t0 = clock()
        let batch = tokenizer.encodeBatch(inputs, maxLength: gemmaMaxLength, padToMultipleOf: 8)
        let tTok = clock() - t0
        if let bad = batch.ids.joined().first(where: { $0 >= c.vocabSize }) {
            throw PipelineError("token id \(bad) is outside the checkpoint's vocabulary (\(c.vocabSize)): tokenizer and checkpoint do not match")
        }
        let cpuClock = { () -> Double in
            var ts = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        t0 = clock()
        let c0 = cpuClock()
        let hidden = try encoder.encode(batch)
        let tEnc = clock() - t0, cEnc = cpuClock() - c0
        let real = batch.mask.joined().reduce(0, +)
        // FLOP of the layers run: projections and MLP (2 per weight per token) plus attention
        // scores and weighted sums over all L x L pairs (causal masking not subtracted)
        let perLayerWeights = c.hiddenSize * c.headDim * (2 * c.numAttentionHeads + 2 * c.numKeyValueHeads) + 3 * c.hiddenSize * c.intermediateSize
        let tokens = Double(batch.batch * batch.length)
        let flop = Double(encoder.layersRun) * (2 * Double(perLayerWeights) * tokens
            + 4 * Double(batch.batch) * Double(batch.length * batch.length) * Double(c.numAttentionHeads * c.headDim))
        log(String(format: "gemma: %d prompt(s) x %d tokens (%d real): tokenize %.3f s, encode %.3f s (process CPU time %.3f s), %.1f tokens/s, %.1f GFLOP/s (%.1f GFLOP)",
                   inputs.count, batch.length, real, tTok, tEnc, cEnc, tokens / Swift.max(tEnc, 1e-9), flop / Swift.max(tEnc, 1e-9) / 1e9, flop / 1e9))
        return ([("gemma_hidden", hidden.to(.f32)), ("gemma_input_ids", batch.idsTensor()), ("gemma_mask", batch.maskTensor())],
                ["gemma_system_prompt": system, "gemma_hidden_state": "\(encoder.hiddenStateIndex - c.numHiddenLayers - 1)"])
    }

    func encodeJina(_ jina: String, texts: [String], placement: ModelPlacement) throws -> ([(String, Tensor)], [String: String]) {
        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: jina, isDirectory: &isDir)
        let folder = isDir.boolValue ? jina : URL(fileURLWithPath: jina).deletingLastPathComponent().path
        let tokPath = jinaTokenizer ?? (folder as NSString).appendingPathComponent("tokenizer.json")
        guard exists else { throw PipelineError("--jina \(jina): no such file or folder") }
        guard FileManager.default.fileExists(atPath: tokPath) else {
            throw PipelineError("no XLM-R tokenizer at \(tokPath); give --jina-tokenizer PATH (jina-clip-v2's tokenizer.json)")
        }

        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let cpuClock = { () -> Double in
            var ts = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        var t0 = clock()
        let tokenizer = try UnigramTokenizer(path: tokPath)
        let source = try openWeights(path: jina)
        let config = try JinaLayout.detect(source).inferConfig(source, headDim: jinaHeadDim)
        let tower = try JinaTextTower(source: source, config: config, placement: placement)
        let c = tower.config
        log(String(format: "jina: %@ layout, %d layers, hidden %d, %d heads, vocab %d, LoRA rank %d x %d (merged), %@; loaded in %.2f s",
                   tower.layout.rawValue, c.layers, c.hidden, c.heads, c.vocabSize, c.loraRank, c.loraAdaptations,
                   placement.precision.description, clock() - t0))
        guard tokenizer.pieces.count <= c.vocabSize else {
            throw PipelineError("tokenizer has \(tokenizer.pieces.count) pieces but the checkpoint's vocabulary is \(c.vocabSize)")
        }
        t0 = clock()
        let batch = tokenizer.encodeBatch(texts, maxLength: maxLength)
        let tTok = clock() - t0
        // the result is brought to the host inside the timed region, so a GPU run is complete
        var runs: [(wall: Double, cpu: Double)] = []
        var pooled = Tensor.zeros([1])
        for _ in 0..<max(1, jinaRuns) {
            t0 = clock()
            let c0 = cpuClock()
            pooled = tower.pooled(ids: batch.ids).to(device: .cpu)
            runs.append((clock() - t0, cpuClock() - c0))
        }
        let median = runs.sorted { $0.wall < $1.wall }[runs.count / 2]
        let tEnc = median.wall, cEnc = median.cpu
        if runs.count > 1 { log("jina: forward times " + runs.map { String(format: "%.4f", $0.wall) }.joined(separator: " ") + " s") }
        log(String(format: "jina: %d prompt(s) x %d tokens: tokenize %.3f s, encode %.3f s (process CPU time %.3f s)",
                   texts.count, batch.ids[0].count, tTok, tEnc, cEnc))
        let ids = Tensor(ints: batch.ids.flatMap { $0.map(Int32.init) }, shape: [batch.ids.count, batch.ids[0].count])
        return ([("jina_pooled", pooled.to(.f32)), ("jina_input_ids", ids)], ["jina_layout": tower.layout.rawValue])
    }

    func log(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
}
