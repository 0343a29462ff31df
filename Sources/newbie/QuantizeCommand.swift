import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieTensor
import NewBieWeights

/// `newbie quantize INPUT --to TYPE -o OUTPUT`: a copy of a checkpoint with its linear weights
/// quantized ahead of time, which every loader then reads without `--quantize`
/// (docs/QUANTIZATION.md, "Quantized files").
struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a checkpoint with its linear weights quantized (int8/fp8 safetensors, or a Q8_0/Q5_0/Q4_0 GGUF of the DiT).",
        discussion: "Embedders, adaLN modulation, the final layer and norms stay as stored, as with --quantize; --keep adds module path patterns to that list. The output is written to a temporary file renamed into place, and an existing file is replaced only with --force.")

    @Argument(help: "A checkpoint: .safetensors file, shard index, .gguf or folder.")
    var input: String

    @Option(help: "int8 (scale per output row), int8-g128 (scale per 128 inputs), fp8 (e4m3, scale per tensor, ComfyUI layout), q8_0, q6_k, q5_k, q5_0, q4_k or q4_0 (GGUF, DiT only; the K-quants need rows of whole 256-value blocks, others are stored F16).")
    var to: String

    @Option(name: [.short, .long], help: "The file to write (.safetensors for int8/fp8, .gguf for q*).")
    var output: String

    @Option(help: "Comma-separated module path patterns to keep unquantized (e.g. 'layers.0,*.feed_forward.w2').")
    var keep: String?

    @Flag(help: "Replace OUTPUT if it exists.")
    var force = false

    func run() throws {
        let target = try QuantizedFileTarget(parsing: to)
        let wantExt = target.isGGUF ? ".gguf" : ".safetensors"
        guard output.lowercased().hasSuffix(wantExt) else {
            throw ValidationError("-o \(output): --to \(target.rawValue) writes a \(wantExt) file; name the output *\(wantExt)")
        }
        if FileManager.default.fileExists(atPath: output) && !force {
            throw ValidationError("-o \(output): the file exists; give --force to replace it (nothing was written)")
        }
        try OutputFile.check(output, allowStandardOutput: false)
        let source = try openWeights(path: input)
        let format = CheckpointFormats.identify(source)
        if target.isGGUF && format?.slot != .dit {
            throw ValidationError("\(input): GGUF output is written for the DiT only (as city96's lumina2 files); this checkpoint is \(format.map { $0.slot.expected } ?? "none of NewBie's models"). Use --to int8, int8-g128 or fp8, or GGUF blocks made at load (--quantize \(format?.slot.rawValue ?? "MODEL")=\(target.rawValue) when running it)")
        }
        let patterns = (keep ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let writer = QuantizedFileWriter(target: target, keep: patterns, architecture: "lumina2")
        let unmatched = writer.unusedKeepPatterns(source)
        if !unmatched.isEmpty {
            throw ValidationError("--keep \(unmatched.joined(separator: ",")): names no quantizable weight of \(input)")
        }
        let report = try writer.write(source, to: output)
        print("\(output): \(report.quantized.count) weights quantized to \(target.rawValue), \(report.kept.count) tensors kept as stored, \(report.bytesWritten) bytes")
    }
}
