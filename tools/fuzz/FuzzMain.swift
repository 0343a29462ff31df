// libFuzzer entry point for NewBie's parsers (built by tools/fuzz/run.sh with
// swiftc -sanitize=fuzzer,address). The target is picked by NEWBIE_FUZZ_TARGET:
//   safetensors  SafeTensorsFile on the bytes as a file, then every small tensor read
//   gguf         GGUFFile on the bytes as a file, then every small tensor read (dequantised)
//   bpe          SentencePieceBPETokenizer from tokenizer.json bytes, then an encoding
//   unigram      UnigramTokenizer from tokenizer.json bytes, then an encoding
//   xml          PromptDocument (the XML prompt parser and validator) and PromptFormatter
//   promptfile   PromptList.parse (the --prompt-file parser)
//   build        PromptBuilder from JSON and from YAML
//   png          PNG.read on the bytes as a file
// Errors thrown by the parsers are the expected outcome for bad input; only a crash, a hang or
// a memory error is a finding.
import Foundation
import NewBieImage
import NewBiePipeline
import NewBieTensor
import NewBieText
import NewBieWeights

let target = ProcessInfo.processInfo.environment["NEWBIE_FUZZ_TARGET"] ?? "safetensors"
let scratch = (ProcessInfo.processInfo.environment["NEWBIE_FUZZ_DIR"] ?? "/tmp") + "/newbie-fuzz-\(getpid())-\(target)"

func asFile(_ data: UnsafeRawBufferPointer) -> String {
    let fd = open(scratch, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    precondition(fd >= 0, "cannot write \(scratch)")
    var off = 0
    while off < data.count {
        let n = write(fd, data.baseAddress! + off, data.count - off)
        precondition(n > 0)
        off += n
    }
    close(fd)
    return scratch
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: count > 0 ? start : nil, count: count)
    let data = Data(bytes)
    switch target {
    case "safetensors":
        if let f = try? SafeTensorsFile(path: asFile(bytes)) {
            for n in f.names where (f.infos[n]?.byteCount ?? 0) <= 1 << 20 { _ = try? f.tensor(n).toFloats() }
            _ = f.metadata.count
        }
    case "gguf":
        if let f = try? GGUFFile(path: asFile(bytes)) {
            for n in f.tensorOrder where (f.tensors[n]?.count ?? 0) <= 1 << 18 { _ = try? f.tensor(n).toFloats() }
            _ = try? SentencePieceBPETokenizer(gguf: f)
        }
    case "bpe":
        if let t = try? SentencePieceBPETokenizer(tokenizerJSON: data, source: "fuzz") {
            _ = t.encode("1girl, <character_1> red eyes 名前 ünï\u{7}")
            _ = t.encodeBatch(["a b c", ""], maxLength: 16, padToMultipleOf: 8)
        }
    case "unigram":
        if let t = try? UnigramTokenizer(json: data, source: "fuzz") {
            _ = t.encode("1girl, red eyes 名前 ünï", maxLength: 32)
        }
    case "xml":
        let text = String(decoding: bytes, as: UTF8.self)
        let d = PromptDocument(parsing: text)
        _ = d.issues.map(\.description)
        _ = try? PromptFormatter.format(text)
    case "promptfile":
        _ = try? PromptList.parse(String(decoding: bytes, as: UTF8.self), source: "fuzz", negativePrompt: "")
    case "build":
        _ = try? PromptBuilder.build(json: data)
        _ = try? PromptBuilder.build(yaml: String(decoding: bytes, as: UTF8.self))
    case "png":
        _ = try? PNG.read(asFile(bytes))
    default:
        fatalError("unknown NEWBIE_FUZZ_TARGET \(target)")
    }
    return 0
}
