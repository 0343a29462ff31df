import ArgumentParser
import Foundation
import NewBieTensor
import NewBieText
import NewBieWeights

/// `newbie encode-text`: runs the text encoders alone and writes their outputs as safetensors.
/// `--jina PATH`: the Jina CLIP v2 text tower (pooled (B, 1024) features, spec §5), fed the raw
/// prompts (no system prompt, spec §3.5).
struct EncodeTextCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode-text",
        abstract: "Encode prompts with the text encoders and write the conditioning tensors.")

    @Option(name: .customLong("jina"), help: "Jina CLIP v2 checkpoint: jina-clip-v2 .safetensors (or its folder), or ComfyUI jina_clip_v2_bf16.safetensors.")
    var jinaPath: String?

    @Option(name: .customLong("jina-tokenizer"), help: "XLM-R tokenizer.json (default: tokenizer.json next to the Jina checkpoint).")
    var jinaTokenizer: String?

    @Option(name: .customLong("jina-head-dim"), help: "Attention head size of the Jina tower (heads = hidden / this; jina-clip-v2: 64).")
    var jinaHeadDim = 64

    @Option(name: .customLong("prompt"), help: "A prompt (repeat for a batch; \"\" is the unconditional prompt).")
    var prompts: [String] = []

    @Option(help: "Read prompts from a file, one per line.")
    var promptFile: String?

    @Option(help: "Truncate each prompt to this many tokens including <s> and </s> (NewBie official: 2048).")
    var maxLength = 2048

    @Option(help: "Compute precision: fp32, bf16 or fp16.")
    var dtype = "fp32"

    @Option(name: .shortAndLong, help: "Output .safetensors (tensor jina_pooled [B, hidden] as fp32, plus jina_input_ids).")
    var output: String

    func run() throws {
        guard let jina = jinaPath else {
            throw ValidationError("nothing to encode: give --jina PATH")
        }
        guard let dt = DType(userName: dtype), dt != .f64 else { throw ValidationError("--dtype \(dtype): use fp32, bf16 or fp16") }
        var texts = prompts
        if let f = promptFile {
            guard let s = try? String(contentsOfFile: f, encoding: .utf8) else { throw ValidationError("cannot read --prompt-file \(f)") }
            texts += s.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
        }
        guard !texts.isEmpty else { throw ValidationError("no prompt: give --prompt TEXT (repeatable) or --prompt-file") }
        guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }

        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: jina, isDirectory: &isDir)
        let folder = isDir.boolValue ? jina : URL(fileURLWithPath: jina).deletingLastPathComponent().path
        let tokPath = jinaTokenizer ?? (folder as NSString).appendingPathComponent("tokenizer.json")
        guard exists else { throw ValidationError("--jina \(jina): no such file or folder") }
        guard FileManager.default.fileExists(atPath: tokPath) else {
            throw ValidationError("no XLM-R tokenizer at \(tokPath); give --jina-tokenizer PATH (jina-clip-v2's tokenizer.json)")
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
        let tower = try JinaTextTower(source: source, config: config, dtype: dt)
        let c = tower.config
        log(String(format: "jina: %@ layout, %d layers, hidden %d, %d heads, vocab %d, LoRA rank %d x %d (merged), %@; loaded in %.2f s",
                   tower.layout.rawValue, c.layers, c.hidden, c.heads, c.vocabSize, c.loraRank, c.loraAdaptations,
                   dt.description, clock() - t0))
        guard tokenizer.pieces.count <= c.vocabSize else {
            throw ValidationError("tokenizer has \(tokenizer.pieces.count) pieces but the checkpoint's vocabulary is \(c.vocabSize)")
        }
        t0 = clock()
        let batch = tokenizer.encodeBatch(texts, maxLength: maxLength)
        let tTok = clock() - t0
        t0 = clock()
        let c0 = cpuClock()
        let pooled = tower.pooled(ids: batch.ids)
        let tEnc = clock() - t0, cEnc = cpuClock() - c0
        log(String(format: "jina: %d prompt(s) x %d tokens: tokenize %.3f s, encode %.3f s (process CPU time %.3f s)",
                   texts.count, batch.ids[0].count, tTok, tEnc, cEnc))
        let ids = Tensor(ints: batch.ids.flatMap { $0.map(Int32.init) }, shape: [batch.ids.count, batch.ids[0].count])
        try SafeTensorsWriter.write([("jina_pooled", pooled.to(.f32)), ("jina_input_ids", ids)],
                                    metadata: ["prompts": String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self),
                                               "jina_layout": tower.layout.rawValue, "dtype": dt.description],
                                    to: URL(fileURLWithPath: output))
        log("wrote \(output): jina_pooled \(pooled.shape)")
    }

    func log(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
}
