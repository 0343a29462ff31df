import ArgumentParser
import Foundation
import NewBieImage
import NewBiePipeline
import NewBieTensor
import NewBieWeights

/// `newbie inspect PATH`: what a checkpoint holds (format, counts, dtypes, tensor table) and which
/// of NewBie's models it is, in which naming, with which configuration.
/// Accepts a .safetensors file, a *.safetensors.index.json, or a folder holding either.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show the tensors a checkpoint holds (safetensors file, shard index, GGUF, or folder), the parts of a model folder, or the parameters stored in a PNG.")

    @Argument(help: "A .safetensors file, a *.safetensors.index.json, a .gguf, a .png made by newbie, a folder (e.g. transformer/), or a model folder in the official layout (transformer/, text_encoder/, clip_model/, vae/).")
    var path: String

    @Option(help: "Only list tensors whose name contains this text.")
    var filter: String?

    @Flag(help: "Print the summary as JSON.")
    var json = false

    func run() throws {
        if path.lowercased().hasSuffix(".png") { return try inspectPNG() }
        // a model root in the official layout: list its parts, each described as `inspect PART` does
        if let parts = try modelRootParts() {
            var report: [[String: Any]] = []
            var lines: [String] = ["\(path): a NewBie model folder (official layout) with \(parts.count) of 4 parts"]
            for (slot, p) in parts {
                var entry: [String: Any] = ["slot": slot.rawValue, "option": slot.option, "path": p]
                do {
                    let source = try openWeights(path: p)
                    let model = ModelDescription.describe(path: p, source: source)
                    let summary = WeightsSummary(path: p, source: source, filter: filter)
                    entry["description"] = model
                    entry["tensors"] = source.tensorNames.count
                    lines.append("")
                    lines.append("\(slot.folder)/ (\(slot.option)): \(source.tensorNames.count) tensors, \(formatBytes(summary.totalBytes))")
                    lines += model.map { "  " + $0 }
                } catch {
                    entry["error"] = "\(error)"
                    lines.append("")
                    lines.append("\(slot.folder)/ (\(slot.option)): cannot read it: \(error)")
                }
                report.append(entry)
            }
            for slot in ModelSlot.allCases where !parts.contains(where: { $0.0 == slot }) {
                lines.append("")
                lines.append("\(slot.folder)/ (\(slot.option)): missing")
            }
            if json {
                let data = try JSONSerialization.data(withJSONObject: ["path": path, "parts": report], options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(lines.joined(separator: "\n"))
                print("\ninspect a part (e.g. newbie inspect \(PathName.join(path, parts[0].0.folder))) for its tensor table")
            }
            return
        }
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

    /// The parts of a model root (a folder holding none of the weight files itself but some of the
    /// official sub-folders), or nil for anything else.
    func modelRootParts() throws -> [(ModelSlot, String)]? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else { return nil }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        if entries.contains(where: { $0.hasSuffix(".safetensors") || $0.hasSuffix(".gguf") || $0.hasSuffix(".index.json") }) { return nil }
        let parts = ModelSlot.allCases.compactMap { slot -> (ModelSlot, String)? in
            let p = PathName.join(path, slot.folder)
            return FileManager.default.fileExists(atPath: p) ? (slot, p) : nil
        }
        return parts.isEmpty ? nil : parts
    }

    /// A PNG's parameters (its text chunks), the prompts read back out of `newbie:command`.
    func inspectPNG() throws {
        let png = try PNG.read(path)   // its errors name the file
        let params = GenerationMetadata.parameters(png: png.text)
        if json {
            var o: [String: Any] = ["path": path, "width": png.image.width, "height": png.image.height]
            o["parameters"] = Dictionary(params.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
            let data = try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("\(path): PNG \(png.image.width)x\(png.image.height), \(params.isEmpty ? "no parameters" : "\(params.count) parameters")")
        for (k, v) in params where !(filter.map { !k.contains($0) } ?? false) { print("\(k): \(v)") }
    }
}
