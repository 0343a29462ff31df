import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieWeights

/// `newbie inspect PATH`: what a checkpoint holds (format, counts, dtypes, tensor table) and which
/// of NewBie's models it is, in which naming, with which configuration.
/// Accepts a .safetensors file, a *.safetensors.index.json, or a folder holding either.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show the tensors a checkpoint holds (safetensors file, shard index, or folder).")

    @Argument(help: "A .safetensors file, a *.safetensors.index.json, or a folder (e.g. transformer/).")
    var path: String

    @Option(help: "Only list tensors whose name contains this text.")
    var filter: String?

    @Flag(help: "Print the summary as JSON.")
    var json = false

    func run() throws {
        // Errors (WeightsError) name the file and tensor at fault; ArgumentParser prints them.
        let source = try openWeights(path: path)
        let summary = WeightsSummary(path: path, source: source, filter: filter)
        let model = ModelDescription.describe(path: path, source: source)
        if json {
            print(try summary.json())
        } else {
            print(model.joined(separator: "\n"))
            print(summary.text(), terminator: "")
        }
    }
}
