import ArgumentParser
import Foundation
import NewBieCUDA
import NewBiePipeline
import NewBieTensor
import NewBieText
import NewBieWeights

/// `newbie encode-text`: runs the text encoders alone and writes their outputs as safetensors.
/// `--gemma PATH`: the Gemma 3 text encoder (its second-to-last hidden state, what the DiT
/// reads), fed the system prompt (if any) + each prompt, tokenized like the official code (<bos>,
/// right padding to a multiple of 8, truncation at 512).
/// `--jina PATH`: the Jina CLIP v2 text tower (pooled (B, 1024) features), fed the raw prompts
/// (the official pipeline gives Jina no system prompt).
/// Both load through the same components as the text stage of `generate`.
struct EncodeTextCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode-text",
        abstract: "Encode prompts with the text encoders and write the conditioning tensors.")

    @Option(name: .customLong("gemma"), help: "Gemma 3 checkpoint: a Hugging Face folder (config.json + safetensors), a .safetensors file (e.g. ComfyUI gemma_3_4b_it_bf16.safetensors) or a .gguf file.")
    var gemmaPath: String?

    @Option(name: [.customLong("gemma-tokenizer"), .customLong("tokenizer")], help: "Gemma tokenizer.json, or a .gguf whose vocabulary to use (default: tokenizer.json beside the checkpoint or in ../tokenizer/, else the GGUF's own).")
    var gemmaTokenizer: String?

    @Option(name: .customLong("system-prompt"), help: "Prepended to every non-empty Gemma prompt: none, xml, text (the prefixes the model was trained with) or a literal string.")
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
        let paths = ModelPaths(gemma: gemmaPath, gemmaTokenizer: gemmaTokenizer, jina: jinaPath, jinaTokenizer: jinaTokenizer)
        // every missing file is named before the first (long) load
        if gemmaPath != nil { _ = try paths.gemmaTokenizerPath(gemma: try paths.require(.gemma)) }
        if jinaPath != nil { _ = try paths.jinaTokenizerPath(jina: try paths.require(.jina)) }
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
        if gemmaPath != nil {
            let (t, m) = try encodeGemma(paths, texts: texts, placement: try options.open(.gemma))
            tensors += t
            metadata.merge(m) { $1 }
        }
        if jinaPath != nil {
            let (t, m) = try encodeJina(paths, texts: texts, placement: try options.open(.jina))
            tensors += t
            metadata.merge(m) { $1 }
        }
        try SafeTensorsWriter.write(tensors, metadata: metadata, toPath: output)
        log("wrote \(output == "-" ? "standard output" : output): " + tensors.map { "\($0.0) \($0.1.shape)" }.joined(separator: ", "))
    }

    func encodeGemma(_ paths: ModelPaths, texts: [String], placement: ModelPlacement) throws -> ([(String, Tensor)], [String: String]) {
        guard gemmaMaxLength >= 1 else { throw ValidationError("--gemma-max-length must be at least 1") }
        let system: String
        switch systemPrompt {
        case "none", "": system = ""
        case "xml": system = SystemPrompt.xml
        case "text": system = SystemPrompt.text
        default: system = systemPrompt
        }
        let inputs = texts.map { $0.isEmpty ? "" : system + $0 }

        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        var t0 = clock()
        let gemma = try GemmaComponent.load(paths: paths, placement: placement)
        let tokenizer = gemma.tokenizer, encoder = gemma.encoder, tokPath = gemma.tokenizerPath
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

    func encodeJina(_ paths: ModelPaths, texts: [String], placement: ModelPlacement) throws -> ([(String, Tensor)], [String: String]) {
        let clock = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        let cpuClock = { () -> Double in
            var ts = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        var t0 = clock()
        let jina = try JinaComponent.load(paths: paths, placement: placement, headDim: jinaHeadDim)
        let tokenizer = jina.tokenizer, tower = jina.tower
        let c = tower.config
        log(String(format: "jina: %@ layout, %d layers, hidden %d, %d heads, vocab %d, LoRA rank %d x %d (merged), %@; loaded in %.2f s",
                   tower.layout.rawValue, c.layers, c.hidden, c.heads, c.vocabSize, c.loraRank, c.loraAdaptations,
                   placement.precision.description, clock() - t0))
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
